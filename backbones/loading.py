"""``load_pretrained``: put any supported checkpoint into a ``VisionTransformer``.

Adapts what legitimately differs between pretraining and fine-tuning (the position-embedding grid,
a missing cls slot, the relative-position table length, the patch size), refuses everything else
with one clear line, and reports missing / unexpected / dropped keys by name, because a silent key
mismatch is the usual reason a "pretrained" model behaves like a random one.
"""
from __future__ import annotations

import contextlib
import logging
import os
from dataclasses import dataclass, field
from typing import Iterable, Iterator, List

import torch

from tools.checkpoints import (CheckpointError, StateDict, describe_architecture,
                               read_checkpoint, split_encoder)
from backbones.pos_embed import infer_grid, resize_patch_kernel, resize_pos_embed, resize_rel_pos

logger = logging.getLogger("mae_transfer.load")


@dataclass
class LoadReport:
    """What happened to each key; ``missing_keys`` and ``unexpected_keys`` as in ``load_state_dict``."""

    missing_keys: List[str] = field(default_factory=list)
    unexpected_keys: List[str] = field(default_factory=list)
    dropped_keys: List[str] = field(default_factory=list)
    resized_keys: List[str] = field(default_factory=list)


def _fit_pos_embed(pos: torch.Tensor, model, meta: dict) -> torch.Tensor:
    target = model.pos_embed
    hint = None
    if meta.get("img_size") and meta.get("patch_size"):
        hint = tuple(int(s) // int(p) for s, p in zip(meta["img_size"], meta["patch_size"]))
    prefix, grid = infer_grid(pos.shape[1], hint=hint or model.pretrain_grid)
    if prefix == 0:  # e.g. a ViTDet export without a cls slot: add a zero one
        pos = torch.cat([pos.new_zeros(1, 1, pos.shape[-1]), pos], dim=1)
    return resize_pos_embed(pos, model.pretrain_grid, grid, num_prefix=1).to(target.dtype)


def adapt_state_dict(state: StateDict, model, meta: dict | None = None, source: str = "checkpoint"
                     ) -> tuple[StateDict, List[str]]:
    """Resize pos_embed / rel-pos tables to ``model``; raise on any other shape mismatch."""
    meta = meta or {}
    own = model.state_dict()
    resized: List[str] = []
    state = dict(state)
    pos = state.get("pos_embed")
    if pos is not None and pos.ndim == 3 and pos.shape != own["pos_embed"].shape \
            and pos.shape[-1] == own["pos_embed"].shape[-1]:
        state["pos_embed"] = _fit_pos_embed(pos, model, meta)
        resized.append("pos_embed")
    for k, v in list(state.items()):
        if k.endswith(("rel_pos_h", "rel_pos_w")) and k in own and v.shape != own[k].shape \
                and v.shape[1:] == own[k].shape[1:]:
            state[k] = resize_rel_pos(v, own[k].shape[0])
            resized.append(k)
    kernel, own_kernel = state.get("patch_embed.proj.weight"), own.get("patch_embed.proj.weight")
    if kernel is not None and own_kernel is not None and kernel.ndim == 4 \
            and kernel.shape[:2] == own_kernel.shape[:2] and kernel.shape != own_kernel.shape:
        # e.g. MAE ViT-H's 14x14 patches in a detector that needs stride 16 (as ViTDet does)
        state["patch_embed.proj.weight"] = resize_patch_kernel(kernel, own_kernel.shape[2:])
        resized.append("patch_embed.proj.weight")
    bad = [k for k, v in state.items() if k in own and v.shape != own[k].shape]
    if bad:
        examples = "; ".join(f"{k}: {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
                             for k in bad[:2])
        raise CheckpointError(
            f"{source} does not fit this model: {len(bad)} tensors differ in shape ({examples}); "
            f"the checkpoint is a ViT with {describe_architecture(state)}, the model has "
            f"{describe_architecture(own)}")
    return state, resized


@contextlib.contextmanager
def without(model, names: Iterable[str]) -> Iterator:
    """Hide ``model``'s direct submodules / parameters called ``names`` for the ``with`` body.

    So that loading an encoder file into a model that holds more than the ViT (an MAE's decoder,
    a segmentation adapter) reports exactly the ViT's missing keys instead of drowning them in
    keys no encoder file ever has.
    """
    hidden = []
    for name in names:
        for store in (model._modules, model._parameters, model._buffers):
            if name in store:
                hidden.append((store, name, store.pop(name)))
    try:
        yield model
    finally:
        for store, name, value in hidden:
            store[name] = value


def load_pretrained(model, path: str | os.PathLike, strict: bool = False) -> LoadReport:
    """Load ``path`` (any format of ``tools.checkpoints``) into ``model``; return a ``LoadReport``.

    Missing and unexpected keys are logged by name (warning level); ``strict=True`` turns them
    into a ``CheckpointError``. Shape mismatches other than the position grid always raise.
    """
    state, meta = read_checkpoint(path)
    return load_state(model, state, meta, source=str(path), strict=strict)


def load_state(model, state: StateDict, meta: dict | None = None, source: str = "checkpoint",
               strict: bool = False) -> LoadReport:
    """``load_pretrained`` for a state dict already in memory (as ``read_checkpoint`` returns it).

    For callers that need the file's other tensors too (a detector's heads, an MAE decoder): the
    file is read once, not once per use (a ViT-H file is 2.5 GB).
    """
    path = source
    meta = meta or {}
    state, dropped = split_encoder(state)
    own_keys = set(model.state_dict())
    if not own_keys & set(state):
        raise CheckpointError(f"{path} has none of this ViT's parameters "
                              f"(first keys: {sorted(state)[:5]})")
    state, resized = adapt_state_dict(state, model, meta, source=str(path))
    result = model.load_state_dict(state, strict=False)
    report = LoadReport(list(result.missing_keys), list(result.unexpected_keys), dropped, resized)
    logger.info("loaded %s: %d tensors; resized %s; dropped %d non-encoder keys",
                path, len(state) - len(report.unexpected_keys), resized or "nothing", len(dropped))
    if report.missing_keys:
        logger.warning("missing keys (left at their init): %s", ", ".join(report.missing_keys))
    if report.unexpected_keys:
        logger.warning("unexpected keys (ignored): %s", ", ".join(report.unexpected_keys))
    if strict and (report.missing_keys or report.unexpected_keys):
        raise CheckpointError(f"{path}: strict load failed: missing {report.missing_keys}, "
                              f"unexpected {report.unexpected_keys}")
    return report
