"""``--init CKPT``: start a new pretraining run from existing weights (e.g. continue MAE
pretraining from released weights on your own images: domain-adaptive pretraining).

What is read (once, with ``weights_only=True``):

- any file ``backbones.load_pretrained`` reads: the encoder is loaded through the same adaptation
  and report (formats, prefixes, patch-kernel resize, missing / unexpected keys by name) and the
  decoder keeps its fresh init;
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
from dataclasses import dataclass, field
from typing import List

import torch

from mae_transfer.backbones.loading import LoadReport, load_state, without
from mae_transfer.backbones.pos_embed import infer_grid, sincos_2d
from mae_transfer.pretrain.model import MaskedAutoencoderViT
from mae_transfer.tools.checkpoints import DECODER_KEY, CheckpointError, read_checkpoint, strip_ddp_prefix

logger = logging.getLogger("mae_transfer.pretrain")

#: The model's parts that no encoder file holds (hidden while the encoder is loaded).
DECODER_PARTS = ("decoder_embed", "decoder_blocks", "decoder_norm", "decoder_pred", "mask_token",
                 "decoder_pos_embed", "encoder_mask_token")
#: Fixed sin-cos tables: recomputed for the run's grid, never copied.
SINCOS = ("pos_embed", "decoder_pos_embed")


@dataclass
class InitReport:
    """What ``init_from_checkpoint`` loaded; ``encoder`` is the usual ``LoadReport``."""

    encoder: LoadReport
    decoder_loaded: List[str] = field(default_factory=list)
    file_grid: tuple | None = None
    run_grid: tuple | None = None

    @property
    def with_decoder(self) -> bool:
        return bool(self.decoder_loaded)


def _load_decoder(model: MaskedAutoencoderViT, decoder: dict, path: str) -> List[str]:
    """Copy the file's decoder tensors into ``model`` (shapes must match); names loaded."""
    own = model.state_dict()
    bad = [k for k, v in decoder.items() if k in own and own[k].shape != v.shape]
    if bad:
        d = decoder.get("decoder_embed.weight")
        hint = (f"; the file's decoder is {d.shape[0]}-d with "
                f"{len({k.split('.')[1] for k in decoder if k.startswith('decoder_blocks.')})} "
                f"blocks: pass --decoder_embed_dim {d.shape[0]} --decoder_depth ..."
                if d is not None else "")
        raise CheckpointError(f"{path}: the decoder does not fit this run's ({bad[0]}: "
                              f"{tuple(decoder[bad[0]].shape)} vs {tuple(own[bad[0]].shape)}){hint}")
    unknown = sorted(k for k in decoder if k not in own)
    if unknown:
        raise CheckpointError(f"{path}: decoder keys this MAE does not have: {unknown[:5]}")
    missing = sorted(k for k in own if DECODER_KEY.match(k) and k not in decoder
                     and k not in SINCOS)
    if missing:
        raise CheckpointError(f"{path} holds part of a decoder only (missing {missing[:5]})")
    model.load_state_dict(decoder, strict=False)
    return sorted(decoder)


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
    path = str(path)
    state, meta = read_checkpoint(path)
    state = strip_ddp_prefix(state)
    decoder = {k: v for k, v in state.items() if DECODER_KEY.match(k) and k not in SINCOS}
    file_grid = _check_sincos(model, state.get("pos_embed"), path)
    encoder_state = {k: v for k, v in state.items()
                     if not DECODER_KEY.match(k) and k not in SINCOS}
    with without(model, DECODER_PARTS + ("pos_embed",)):
        report = load_state(model, encoder_state, meta, source=path)
    loaded = _load_decoder(model, decoder, path) if decoder else []
    result = InitReport(report, loaded, file_grid, tuple(model.pretrain_grid))
    logger.info("--init %s: encoder %d tensors loaded (missing %s, unexpected %s); decoder %s",
                path, len(encoder_state) - len(report.unexpected_keys),
                report.missing_keys or "none", report.unexpected_keys or "none",
                f"{len(loaded)} tensors loaded" if loaded
                else "not in the file: it starts from MAE's init")
    return result
