"""MMSegmentation side of mae-transfer: UperNet on the shared ViT.

Importing this package (configs do it through ``custom_imports``) first applies
``segmentation.compat`` (mmcv-lite, torch >= 2.6 checkpoint loading), then registers, in MMSeg's
and MMEngine's registries: the ``MAEViT`` backbone, the ``ADELayoutDataset``, the
``PerClassIoUMetric``, the ``SegResultsJSONHook``, the ``FiniteLossHook``, the
``ViTLayerDecayOptimizerConstructor`` and the checked loaders of ``data_checks``.
"""
from mae_transfer.segmentation import compat  # noqa: F401  (must run before any mmseg / mmcv import)
from mae_transfer.segmentation.backbone import MAEViT, default_out_indices
from mae_transfer.segmentation.data_checks import CheckedLoadAnnotations, CheckedLoadImageFromFile
from mae_transfer.segmentation.datasets import ADELayoutDataset, read_class_names
from mae_transfer.segmentation.hooks import FiniteLossHook, SegResultsJSONHook
from mae_transfer.segmentation.metrics import PerClassIoUMetric
from mae_transfer.segmentation.optim_constructor import ViTLayerDecayOptimizerConstructor

__all__ = ["MAEViT", "default_out_indices", "ADELayoutDataset", "read_class_names",
           "SegResultsJSONHook", "FiniteLossHook", "PerClassIoUMetric",
           "ViTLayerDecayOptimizerConstructor", "CheckedLoadAnnotations",
           "CheckedLoadImageFromFile"]
