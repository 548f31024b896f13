"""Register this package's components in MMSeg's and MMEngine's registries (import = register).

Configs name this module in ``custom_imports``, so ``Config.fromfile`` registers everything they
refer to: the ``MAEViT`` backbone, the ``ADELayoutDataset``, the ``PerClassIoUMetric``, the
``SegResultsJSONHook``, the ``FiniteLossHook``, the ``StopOnSignalHook``, the checked image /
label loaders of ``data_checks``, the ``ViTLayerDecayOptimizerConstructor``, the
``FullCheckpointRunner``, the ``atomic_local`` file backend, and the test-time augmentation's
``ResizeToRatio`` transform and ``AveragedSegTTAModel``.
"""
from mae_transfer.segmentation import compat

# mmseg.datasets imports mmcv.ops at import time, which needs mmcv._ext: on mmcv-lite only the
# stand-in that setup() installs lets the modules below import.
compat.setup()

from mae_transfer.segmentation.backbone import MAEViT  # noqa: E402
from mae_transfer.segmentation.data_checks import (  # noqa: E402
    CheckedLoadAnnotations, CheckedLoadImageFromFile)
from mae_transfer.segmentation.datasets import ADELayoutDataset  # noqa: E402
from mae_transfer.segmentation.file_backend import AtomicLocalBackend  # noqa: E402
from mae_transfer.segmentation.hooks import FiniteLossHook, SegResultsJSONHook  # noqa: E402
from mae_transfer.segmentation.metrics import PerClassIoUMetric  # noqa: E402
from mae_transfer.segmentation.optim_constructor import (  # noqa: E402
    ViTLayerDecayOptimizerConstructor)
from mae_transfer.segmentation.runner import FullCheckpointRunner  # noqa: E402
from mae_transfer.segmentation.stop_hook import StopOnSignalHook  # noqa: E402
from mae_transfer.segmentation.tta import AveragedSegTTAModel, ResizeToRatio  # noqa: E402

__all__ = ["MAEViT", "ADELayoutDataset", "AtomicLocalBackend", "SegResultsJSONHook",
           "FiniteLossHook", "CheckedLoadAnnotations", "CheckedLoadImageFromFile",
           "PerClassIoUMetric", "ViTLayerDecayOptimizerConstructor", "FullCheckpointRunner",
           "StopOnSignalHook", "AveragedSegTTAModel", "ResizeToRatio"]
