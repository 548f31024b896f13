"""Make Detectron2 (v0.6 from the registry, or a current official build) import on this stack.

Import this module before any ``detectron2`` submodule; every fix is a no-op where not needed:

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

import numpy as np
from PIL import Image

from mae_transfer.tools.stand_in import install_stand_in

for _alias, _builtin in (("int", int), ("float", float), ("object", object), ("str", str),
                         ("bool", bool)):
    if _alias not in np.__dict__:
        setattr(np, _alias, _builtin)
if not hasattr(Image, "LINEAR"):
    Image.LINEAR = Image.BILINEAR

#: True when this process runs Detectron2 without its compiled extension.
HAS_STAND_IN_EXTENSION = install_stand_in("detectron2._C")
if HAS_STAND_IN_EXTENSION:
    _stand_in = sys.modules["detectron2._C"]
    _stand_in.get_compiler_version = lambda: "not compiled (pure-Python install)"
    _stand_in.get_cuda_version = lambda: "not compiled (pure-Python install)"
    _stand_in.has_cuda = lambda: False
