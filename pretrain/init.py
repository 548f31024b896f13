"""``--init CKPT``: start a new pretraining run from existing weights (e.g. continue MAE
pretraining from released weights on your own images: domain-adaptive pretraining).

What is read (once, with ``weights_only=True``):

- any layout the one reader reads (``backbones.checkpoint_reader``, docs/checkpoints.md): the
  encoder is loaded through the same adaptation and report (layouts, prefixes, patch-kernel
  resize, missing / unexpected keys by name) and the decoder keeps its fresh init;
- a full MAE checkpoint with its decoder (ours, an official ``main_pretrain.py`` training
  checkpoint, whose ``args`` is a pickled ``argparse.Namespace``, the only Python object allowed,
  or a released visualisation checkpoint): encoder and decoder are both loaded. A decoder of
  another size than this run's is an error naming the flags that would match it.

MAE's position embeddings (encoder and decoder) are fixed 2-D sin-cos tables, not learned: they are
never copied from the file. The model's own tables, computed for this run's ``--input_size``, are
kept; at the file's grid they are the same numbers, at another grid they are recomputed rather
than interpolated, and the log says so. Optimizer, lr schedule and epoch count start fresh (to
continue an interrupted run use ``--resume``).
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Optional

import torch

from mae_transfer.backbones.checkpoint_reader import CheckpointReport, Weights, read_weights
from mae_transfer.backbones.pos_embed import infer_grid, sincos_2d
from mae_transfer.pretrain.model import MaskedAutoencoderViT
from mae_transfer.tools.checkpoints import CheckpointError

logger = logging.getLogger("mae_transfer.pretrain")

#: The model's parts that no encoder file holds (excluded while the encoder is read).
DECODER_PARTS = ("decoder_embed", "decoder_blocks", "decoder_norm", "decoder_pred", "mask_token",
                 "decoder_pos_embed", "encoder_mask_token")
#: Fixed sin-cos tables: recomputed for the run's grid, never copied.
SINCOS = ("pos_embed", "decoder_pos_embed")


@dataclass
class InitReport:
    """What ``init_from_checkpoint`` loaded: the reader's reports of the encoder and decoder."""

    encoder: CheckpointReport
    decoder: Optional[CheckpointReport] = None  # None: no decoder in the file (MAE's init kept)
    file_grid: tuple | None = None
    run_grid: tuple | None = None

    @property
    def with_decoder(self) -> bool:
        return self.decoder is not None


def _decoder_hint(decoder: dict) -> str:
    d = decoder.get("decoder_embed.weight")
    if d is None:
        return ""
    depth = len({k.split(".")[1] for k in decoder if k.startswith("decoder_blocks.")})
    return (f"; the file's decoder is {d.shape[0]}-d with {depth} blocks: pass "
            f"--decoder_embed_dim {d.shape[0]} --decoder_depth {depth}")


def _load_decoder(model: MaskedAutoencoderViT, weights: Weights) -> Optional[CheckpointReport]:
    """The file's decoder, all of it and only what this MAE has, or an error (None: no decoder)."""
    try:
        decoder = read_weights(weights, model, part="decoder", exclude=SINCOS)
    except CheckpointError as exc:
        raw_decoder = read_weights(weights, part="decoder").state
        raise CheckpointError(f"{exc}{_decoder_hint(raw_decoder)}") from exc
    if not decoder.state:
        return None
    report = decoder.report
    if report.unexpected_keys:
        raise CheckpointError(f"{report.source}: decoder keys this MAE does not have: "
                              f"{sorted(report.unexpected_keys)[:5]}")
    if report.missing_keys:
        raise CheckpointError(f"{report.source} holds part of a decoder only (missing "
                              f"{sorted(report.missing_keys)[:5]})")
    return decoder.load_into(model)


def _check_sincos(model: MaskedAutoencoderViT, pos: torch.Tensor | None, path: str) -> tuple:
    """Log what happens to the file's position embeddings; returns the file's grid (or None)."""
    if pos is None or pos.ndim != 3:
        return None
    _, grid = infer_grid(pos.shape[1], hint=model.pretrain_grid)
    run_grid = tuple(model.pretrain_grid)
    if tuple(grid) != run_grid:
        logger.info("%s: position embeddings for a %dx%d grid; MAE's are fixed sin-cos tables, "
                    "so they are recomputed for this run's %dx%d grid (not interpolated)", path,
                    grid[0], grid[1], run_grid[0], run_grid[1])
    elif pos.shape == model.pos_embed.shape and not torch.allclose(
            pos.float(), sincos_2d(pos.shape[-1], run_grid, num_prefix=1), atol=1e-4):
        logger.warning("%s: its pos_embed is not MAE's fixed sin-cos table (a fine-tuned model?); "
                       "pretraining keeps its own fixed sin-cos table", path)
    return tuple(grid)


def init_from_checkpoint(model: MaskedAutoencoderViT, path: str | os.PathLike) -> InitReport:
    """Load ``path``'s weights into a fresh ``model`` (see the module docstring)."""
    weights = read_weights(path)  # read once; fitted below to the encoder, then the decoder
    file_grid = _check_sincos(model, weights.raw.get("pos_embed"), str(path))
    encoder = read_weights(weights, model, exclude=DECODER_PARTS + SINCOS,
                           target="the MAE's encoder")
    encoder.load_into(model)
    decoder = _load_decoder(model, weights)
    result = InitReport(encoder.report, decoder, file_grid, tuple(model.pretrain_grid))
    logger.info("--init %s; decoder %s", encoder.report.summary(),
                decoder.summary() if decoder else "not in the file: it starts from MAE's init")
    return result
