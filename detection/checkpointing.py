"""Detector checkpoints: atomic training checkpoints, and initial weights in any format.

Two different things are called "checkpoint" in a detection run:

- training checkpoints (model + optimizer + scheduler + iteration) for ``--resume``: Detectron2's
  ``DetectionCheckpointer``, made atomic here (fvcore writes the final file in place, so a crash
  or a full disk mid-write leaves a truncated ``model_final.pth`` behind), and refused for
  non-finite weights (``tools.divergence``: a diverged run keeps its last good checkpoint);
- initial weights (``train.init_checkpoint``): a pretrained ViT in any format that
  ``backbones.load_pretrained`` reads (MAE, timm, ours, Detectron2 or MMSeg exports), loaded into
  ``model.backbone.net``; or a whole detector (a ``model_*.pth`` of an earlier run, e.g. for
  ``--eval-only``), recognised by its head keys and loaded into the whole model.

Everything written is plain tensors and numbers, loadable with ``weights_only=True``.
"""
from __future__ import annotations

import logging
import os
from typing import List, Optional

import torch

from detectron2.checkpoint import DetectionCheckpointer

from mae_transfer.backbones.loading import LoadReport, check_coverage, load_state
from mae_transfer.tools.atomic import atomic_write
from mae_transfer.tools.checkpoints import CheckpointError, read_checkpoint, strip_ddp_prefix
from mae_transfer.tools.divergence import diverged, first_non_finite

logger = logging.getLogger("mae_transfer.detection")

#: Key prefixes that only a whole detector has (after stripping a DDP ``module.`` prefix).
DETECTOR_KEY_PREFIXES = ("proposal_generator.", "roi_heads.", "backbone.pyramid.")


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
        atomic_write(path, lambda tmp: torch.save(data, tmp))
        self.tag_last_checkpoint(basename)

    def tag_last_checkpoint(self, last_filename_basename: str) -> None:
        def write(tmp: str) -> None:
            with open(tmp, "w") as f:
                f.write(last_filename_basename)

        atomic_write(os.path.join(self.save_dir, "last_checkpoint"), write)


def is_detector_state(keys) -> bool:
    """True when the keys are those of a whole detector rather than of a (prefixed) ViT."""
    return any(k.removeprefix("module.").startswith(DETECTOR_KEY_PREFIXES) for k in keys)


def load_detector_weights(model: torch.nn.Module, path: str,
                          raw: Optional[dict] = None) -> List[str]:
    """Load a whole-detector state dict; returns the missing keys (logged, like unexpected ones).

    ``raw``: the file's tensors when the caller has read them already (read once: a ViT-H
    detector file is several GB). A detector whose backbone is not this ViT (e.g. a Detectron2
    ResNet R-CNN) is refused as ``backbones.load_pretrained`` refuses a file that fills too
    little of the encoder.
    """
    if raw is None:
        raw, _ = read_checkpoint(path)
    state = strip_ddp_prefix(raw)
    prefix = "backbone.net."
    check_coverage({k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)},
                   model.backbone.net.state_dict(), raw.keys(), path)
    own = model.state_dict()
    bad = [f"{k}: {tuple(v.shape)} vs model {tuple(own[k].shape)}"
           for k, v in state.items() if k in own and v.shape != own[k].shape]
    if bad:
        raise CheckpointError(f"{path} does not fit this detector: {len(bad)} tensors differ in "
                              f"shape (e.g. {'; '.join(bad[:2])})")
    result = model.load_state_dict(state, strict=False)
    logger.info("loaded detector weights from %s (%d tensors)", path, len(state))
    if result.missing_keys:
        logger.warning("missing keys (left at their init): %s", ", ".join(result.missing_keys))
    if result.unexpected_keys:
        logger.warning("unexpected keys (ignored): %s", ", ".join(result.unexpected_keys))
    return list(result.missing_keys)


def load_init_checkpoint(model: torch.nn.Module, path: Optional[str]) -> Optional[LoadReport]:
    """Initialise ``model`` from ``path`` (see the module docstring); no-op for an empty path.

    Returns the backbone ``LoadReport`` for a ViT checkpoint, None otherwise. The log lists the
    missing and unexpected backbone keys by their names in the detector (``backbone.net.*``).
    """
    if not path:
        logger.info("no train.init_checkpoint: the whole detector starts from random init")
        return None
    state, meta = read_checkpoint(path)  # once: both branches use these tensors
    if is_detector_state(state):
        load_detector_weights(model, path, raw=state)
        return None
    report = load_state(model.backbone.net, state, meta, source=str(path))
    missing = [f"backbone.net.{k}" for k in report.missing_pretrained]
    logger.info("init_checkpoint %s -> model.backbone.net: %d missing keys %s, %d unexpected "
                "keys %s, %d dropped non-encoder keys; %d relative-position tables the checkpoint "
                "lacks start at zero (no bias: the pretrained attention, as in ViTDet)", path,
                len(missing), missing, len(report.unexpected_keys), report.unexpected_keys,
                len(report.dropped_keys), len(report.new_in_fine_tuning))
    return report
