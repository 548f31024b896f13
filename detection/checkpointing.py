"""Detector checkpoints: atomic training checkpoints, and initial weights in any format.

Two different things are called "checkpoint" in a detection run:

- training checkpoints (model + optimizer + scheduler + iteration) for ``--resume``: Detectron2's
  ``DetectionCheckpointer``, made atomic here (fvcore writes the final file in place, so a crash
  or a full disk mid-write leaves a truncated ``model_final.pth`` behind; a full disk is an
  ``OSError`` naming the file, ``tools/train_det.py`` reports it in one line), and refused for
  non-finite weights (``tools.divergence``: a diverged run keeps its last good checkpoint);
- initial weights (``train.init_checkpoint``): a pretrained ViT in any layout the one reader
  (``backbones.checkpoint_reader``, docs/checkpoints.md) reads (MAE, timm, ours, Detectron2 or
  MMSeg exports, our MMEngine segmentation ``iter_N.pth``), loaded into ``model.backbone.net``;
  or a whole detector (a ``model_*.pth`` of an earlier run, e.g. for ``--eval-only``),
  recognised by its head keys and loaded into the whole model.

Everything written is plain tensors and numbers, loadable with ``weights_only=True``.
"""
from __future__ import annotations

import logging
import os
from typing import Optional, Union

import torch

from detectron2.checkpoint import DetectionCheckpointer

from mae_transfer.backbones.loading import check_coverage
from mae_transfer.backbones.checkpoint_reader import CheckpointReport, Weights, read_weights
from mae_transfer.tools.atomic import atomic_torch_save, atomic_write
from mae_transfer.tools.divergence import diverged, first_non_finite

logger = logging.getLogger("mae_transfer.detection")


class AtomicCheckpointer(DetectionCheckpointer):
    """``DetectionCheckpointer`` whose files appear complete or not at all (temp file + rename),
    and never hold non-finite weights (``TrainingDiverged`` instead)."""

    def save(self, name: str, **kwargs) -> None:
        if not self.save_dir or not self.save_to_disk:
            return
        model_state = self.model.state_dict()
        bad = first_non_finite(model_state)
        if bad is not None:  # never a NaN checkpoint, never last_checkpoint pointing at one
            raise diverged(f"iteration {kwargs.get('iteration', '?')}",
                           f"weight {bad} is not finite", self.save_dir)
        data = {"model": model_state,
                **{key: obj.state_dict() for key, obj in self.checkpointables.items()},
                **kwargs}
        basename = f"{name}.pth"
        path = os.path.join(self.save_dir, basename)
        self.logger.info("Saving checkpoint to %s", path)
        atomic_torch_save(data, path)  # a full disk: OSError(ENOSPC), not torch's RuntimeError
        self.tag_last_checkpoint(basename)

    def tag_last_checkpoint(self, last_filename_basename: str) -> None:
        def write(tmp: str) -> None:
            with open(tmp, "w") as f:
                f.write(last_filename_basename)

        atomic_write(os.path.join(self.save_dir, "last_checkpoint"), write)


def _log(report: CheckpointReport) -> None:
    logger.log(logging.INFO if report.clean else logging.WARNING, "init_checkpoint %s%s",
               report.summary(), "" if report.part != "encoder" else
               " (relative-position tables the checkpoint lacks start at zero: no bias, the "
               "pretrained attention, as in ViTDet)")


def load_detector_weights(model: torch.nn.Module, source: Union[str, Weights]) -> CheckpointReport:
    """Load a whole-detector file (or its ``Weights``, read once) into every module of ``model``.

    A detector whose backbone is not this ViT (e.g. a Detectron2 ResNet R-CNN) is refused as a
    ViT file that fills too little of the encoder is (``check_coverage``).
    """
    weights = source if isinstance(source, Weights) else read_weights(source)
    prefix = "backbone.net."
    check_coverage({k[len(prefix):]: v for k, v in weights.raw.items() if k.startswith(prefix)},
                   model.backbone.net.state_dict(), weights.raw.keys(), weights.report.source)
    weights = read_weights(weights, model, part="all", target="model")
    report = weights.load_into(model)
    _log(report)
    return report


def load_init_checkpoint(model: torch.nn.Module, path: Optional[str]) -> Optional[CheckpointReport]:
    """Initialise ``model`` from ``path`` (see the module docstring); no-op for an empty path.

    The file is read once (a ViT-H detector file is several GB) and fitted either to the whole
    detector (a whole-detector file) or to ``model.backbone.net``. Returns the report (its
    ``part`` says which: ``all`` or ``encoder``), None without a path.
    """
    if not path:
        logger.info("no train.init_checkpoint: the whole detector starts from random init")
        return None
    weights = read_weights(path)
    if weights.whole_detector:
        return load_detector_weights(model, weights)
    report = read_weights(weights, model.backbone.net, target="model.backbone.net").load_into(
        model.backbone.net)
    _log(report)
    return report
