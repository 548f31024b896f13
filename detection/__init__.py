"""Detectron2 side of mae-transfer: ViTDet Mask R-CNN on the shared ViT.

Importing this package changes nothing outside it. ``setup()`` applies the framework fixes that
Detectron2 v0.6 needs on current numpy / Pillow without its compiled extension
(``detection/compat.py``); the entry points call it before importing Detectron2, and so do the
modules here that import Detectron2 at import time.
"""
from mae_transfer.detection.compat import setup, uses_stand_in_extension

__all__ = ["setup", "uses_stand_in_extension"]
