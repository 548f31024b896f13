"""MMSegmentation side of mae-transfer: UperNet on the shared ViT.

Importing this package changes nothing outside it. ``setup()`` applies the process-wide framework
fixes (``segmentation/compat.py``: mmcv-lite, a setuptools warning); the entry points call it
before importing MMSeg. ``mae_transfer.segmentation.registration`` (what configs name in
``custom_imports``) registers the ``MAEViT`` backbone, the ``ADELayoutDataset``, the
``PerClassIoUMetric``, the ``SegResultsJSONHook``, the ``FiniteLossHook``, the
``StopOnSignalHook``, the checked image / label loaders of ``data_checks``, the
``ViTLayerDecayOptimizerConstructor``, the ``FullCheckpointRunner`` and the ``atomic_local`` file
backend in MMSeg's and MMEngine's registries.
"""
from mae_transfer.segmentation.compat import setup, uses_stand_in_extension

__all__ = ["setup", "uses_stand_in_extension"]
