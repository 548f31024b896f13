"""Make MMSegmentation 1.2.2 import and run on mmcv-lite and setuptools 77-81.

Nothing here acts on import: ``setup()`` (also ``mae_transfer.segmentation.setup``) applies the
process-wide fixes, once, and each is a no-op where not needed. The entry points call it first;
``segmentation.registration`` and ``segmentation.datasets`` call it at their top, because they
import ``mmseg.datasets``, which cannot be imported on mmcv-lite without it
(``docs/development.md`` lists every fix, the upstream change it works around and its test):

- mmcv-lite has no ``mmcv._ext``, yet ``mmseg.models``/``.datasets``/``.apis`` import
  ``mmcv.ops`` at import time -> ``ModuleNotFoundError: No module named 'mmcv._ext'``. A stand-in
  (with a loader-less ``__spec__``, so mmengine's is-mmcv-full probe reads "lite" and does not
  crash) lets everything import; UperNet, FCN, PSP and ASPP call no compiled op. A compiled mmcv
  is detected and used as is.
- setuptools 77-81 warns "pkg_resources is deprecated" each time MMEngine imports it (to resolve
  ``mmseg::`` base configs), four times per run; the warning says nothing a user can act on
  (setuptools < 82 is pinned because MMEngine needs it), so only that message is filtered.

Two more fixes are not process-wide and need no ``setup()``; they are chosen by our configs:
atomic checkpoint writes (``segmentation.file_backend``) and reading MMEngine's own checkpoints
on torch >= 2.6 (``segmentation.runner``).
"""
from __future__ import annotations

import warnings

from mae_transfer.tools.stand_in import install_stand_in, is_stand_in

EXTENSION = "mmcv._ext"
PKG_RESOURCES_WARNING = "pkg_resources is deprecated"

_done = False


def setup() -> None:
    """Apply the fixes above (idempotent); call before ``mmseg.models`` / ``.datasets`` import."""
    global _done
    if _done:
        return
    warnings.filterwarnings("ignore", message=PKG_RESOURCES_WARNING, category=UserWarning)
    install_stand_in(EXTENSION)
    _done = True


def uses_stand_in_extension() -> bool:
    """True when this process runs mmcv without its compiled ops (after ``setup``)."""
    return is_stand_in(EXTENSION)
