"""Make Detectron2 (v0.6 from the registry, or a current official build) run on this stack.

Nothing here acts on import: ``setup()`` (also ``mae_transfer.detection.setup``) applies the fixes,
once per process, and every fix is a no-op where not needed. The entry points call it first; the
modules of this package that import Detectron2 at import time call it at their top, because
Detectron2 v0.6 itself cannot be imported on this stack without it (``docs/development.md`` lists
every fix, the upstream change it works around and its test):

- ``detectron2._C`` missing (pure-Python install): deformable conv, rotated ROIAlign, rotated boxes
  and the fast COCO evaluator import it at module level -> ``ImportError: cannot import name '_C'``.
  A stand-in lets them import and raises only if such an op is called (Mask R-CNN uses none).
- numpy >= 1.24 removed ``np.int``/``np.float``/``np.object``/``np.str``/``np.bool`` aliases that
  v0.6 uses -> ``AttributeError: module 'numpy' has no attribute 'int'`` in evaluators and masks.
- Pillow >= 10 removed ``Image.LINEAR``, a default argument in ``detectron2.data.transforms``
  -> ``AttributeError`` at import time.
- ``collect_env_info()`` (logged by ``detectron2.engine.default_setup``) asks the extension for its
  compiler and CUDA versions -> the stand-in's ``RuntimeError``. Without the extension those
  questions get a plain answer ("not compiled") instead.
"""
from __future__ import annotations

import sys

from mae_transfer.tools.stand_in import install_stand_in, is_stand_in

EXTENSION = "detectron2._C"
#: the numpy aliases Detectron2 v0.6 uses, removed in numpy 1.24
NUMPY_ALIASES = (("int", int), ("float", float), ("object", object), ("str", str), ("bool", bool))
NOT_COMPILED = "not compiled (pure-Python install)"

_done = False


def _restore_numpy_aliases() -> None:
    import numpy as np

    for alias, builtin in NUMPY_ALIASES:
        if alias not in np.__dict__:
            setattr(np, alias, builtin)


def _restore_pil_linear() -> None:
    from PIL import Image

    if not hasattr(Image, "LINEAR"):
        Image.LINEAR = Image.BILINEAR


def _install_extension_stand_in() -> None:
    if install_stand_in(EXTENSION):
        stand_in = sys.modules[EXTENSION]
        stand_in.get_compiler_version = lambda: NOT_COMPILED
        stand_in.get_cuda_version = lambda: NOT_COMPILED
        stand_in.has_cuda = lambda: False


def setup() -> None:
    """Apply the fixes above (idempotent); call before importing any ``detectron2`` submodule."""
    global _done
    if _done:
        return
    _restore_numpy_aliases()
    _restore_pil_linear()
    _install_extension_stand_in()
    _done = True


def uses_stand_in_extension() -> bool:
    """True when this process runs Detectron2 without its compiled extension (after ``setup``)."""
    return is_stand_in(EXTENSION)
