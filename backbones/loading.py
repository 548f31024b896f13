"""Fitting a checkpoint's encoder tensors to a ``VisionTransformer``, and the report of a load.

Adapts what legitimately differs between pretraining and fine-tuning (the position-embedding grid,
a missing cls slot, the relative-position table size, the patch size) and refuses everything else
with one clear line: other shape mismatches, relative-position tables of the other kind, and files
that fill none or only a small part of the encoder (``check_coverage``), naming the layout they
look like and the converter to use, instead of training on from random init. The one checkpoint
reader (``backbones.checkpoint_reader``, where ``load_pretrained`` lives) runs these checks for
every caller and fills a ``CheckpointReport``; missing / unexpected keys are reported by name,
because a silent key mismatch is the usual reason a "pretrained" model behaves like a random one.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import List

import torch
from timm.layers import resample_abs_pos_embed, resample_patch_embed

from mae_transfer.backbones.checkpoint_files import (CheckpointError, StateDict, describe_architecture,
                                        describe_layout, meta_grid)
from mae_transfer.backbones.pos_embed import (PATCH_KERNEL_RESAMPLING, POS_EMBED_RESAMPLING,
                                              infer_grid, resize_beit_table, resize_rel_pos)

#: Block tensors that fine-tuning adds to a pretrained ViT (relative-position tables, layer scale):
#: a checkpoint legitimately lacks them, and they start at zero / ``layer_scale_init``.
FINE_TUNING_ADDITIONS = ("rel_pos_h", "rel_pos_w", "relative_position_bias_table",
                         "gamma_1", "gamma_2")
#: Below this fraction of the encoder's block tensors filled, a load is refused.
MIN_BLOCK_COVERAGE = 0.5
CONVERT_HINT = ("python tools/convert_checkpoint.py SRC DST --to ours (it reads official MAE, "
                "timm, ours, Detectron2, MMSeg MAEViT, MMSeg MAE/BEiT files and Hugging Face "
                "ViT/ViTMAE folders)")


@dataclass
class CheckpointReport:
    """What a read did with each key; ``missing_keys`` / ``unexpected_keys`` as ``load_state_dict``
    would list them for the model (less the names the caller excluded)."""

    source: str
    layout: str  # the layout the reader recognised (docs/checkpoints.md)
    part: str = "encoder"
    target: str = ""
    tensors: int = 0
    missing_keys: List[str] = field(default_factory=list)
    unexpected_keys: List[str] = field(default_factory=list)
    dropped_keys: List[str] = field(default_factory=list)
    resized_keys: List[str] = field(default_factory=list)
    notes: List[str] = field(default_factory=list)  # what else differs (e.g. LayerNorm epsilon)

    @property
    def new_in_fine_tuning(self) -> List[str]:
        """Missing keys that fine-tuning adds (``FINE_TUNING_ADDITIONS``): expected, at their init."""
        return [k for k in self.missing_keys if k.endswith(FINE_TUNING_ADDITIONS)]

    @property
    def missing_pretrained(self) -> List[str]:
        """Missing keys a pretrained file should have had: the ones worth a warning."""
        return [k for k in self.missing_keys if not k.endswith(FINE_TUNING_ADDITIONS)]

    @property
    def clean(self) -> bool:
        """Nothing a pretrained file should have had is missing, nothing is left unused."""
        return not (self.missing_pretrained or self.unexpected_keys)

    def summary(self) -> str:
        """The one line every caller logs (tests read it)."""
        missing, new = self.missing_pretrained, self.new_in_fine_tuning
        return (f"{self.source} ({self.layout}) -> {self.target or 'model'}: "
                f"{self.tensors} tensors loaded; {len(missing)} missing keys {missing}; "
                f"{len(new)} new in fine-tuning (left at their init); "
                f"{len(self.unexpected_keys)} unexpected keys {self.unexpected_keys}; "
                f"dropped {len(self.dropped_keys)} non-{self.part} keys; "
                f"resized {self.resized_keys or 'nothing'}"
                + "".join(f"; note: {n}" for n in self.notes))


def _fit_pos_embed(pos: torch.Tensor, model, meta: dict) -> torch.Tensor:
    target = model.pos_embed
    prefix, grid = infer_grid(pos.shape[1], hint=meta_grid(meta) or model.pretrain_grid)
    if prefix == 0:  # e.g. a ViTDet export without a cls slot: add a zero one
        pos = torch.cat([pos.new_zeros(1, 1, pos.shape[-1]), pos], dim=1)
    return resample_abs_pos_embed(pos, model.pretrain_grid, grid, num_prefix_tokens=1,
                                  **POS_EMBED_RESAMPLING).to(target.dtype)


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
        elif k.endswith("relative_position_bias_table") and k in own \
                and v.shape != own[k].shape and v.shape[1:] == own[k].shape[1:]:
            attn = model.get_submodule(k.rsplit(".", 1)[0])
            try:
                state[k] = resize_beit_table(v, attn.table_grid).to(own[k].dtype)
            except ValueError as exc:
                raise CheckpointError(f"{source}: {k}: {exc}") from exc
            resized.append(k)
    kernel, own_kernel = state.get("patch_embed.proj.weight"), own.get("patch_embed.proj.weight")
    if kernel is not None and own_kernel is not None and kernel.ndim == 4 \
            and kernel.shape[:2] == own_kernel.shape[:2] and kernel.shape != own_kernel.shape:
        # e.g. MAE ViT-H's 14x14 patches in a detector that needs stride 16 (as ViTDet does)
        state["patch_embed.proj.weight"] = resample_patch_embed(
            kernel, list(own_kernel.shape[2:]), **PATCH_KERNEL_RESAMPLING)
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


#: The relative-position kinds (``rel_pos_type``) by the names of their tables.
_REL_POS_KINDS = (("decomposed", ("rel_pos_h", "rel_pos_w")),
                  ("beit", ("relative_position_bias_table",)))


def _rel_pos_kind(keys) -> str | None:
    for kind, ends in _REL_POS_KINDS:
        if any(k.endswith(ends) for k in keys):
            return kind
    return None


def check_rel_pos_kind(state: StateDict, own: StateDict, source: str) -> None:
    """Refuse BEiT tables into a decomposed-rel-pos model and vice versa (different functions).

    Loading one kind into the other would leave the model's tables at zero and list the file's as
    "unexpected": the trained position bias silently lost. A file without tables is fine (the
    model's start at zero, as in fine-tuning from MAE pretraining).
    """
    theirs, ours = _rel_pos_kind(state), _rel_pos_kind(own)
    if theirs and ours and theirs != ours:
        raise CheckpointError(
            f"{source} has rel_pos_type='{theirs}' relative position tables, the model "
            f"rel_pos_type='{ours}' ones: different functions (BEiT: one table of offsets per "
            f"block; ViTDet: per-axis tables times the query) that cannot be converted into each "
            f"other; build the model with rel_pos_type='{theirs}'")


def check_coverage(state: StateDict, own: StateDict, raw_keys, source: str) -> None:
    """Refuse a checkpoint that fills none, or only a small part, of the encoder's blocks.

    "Small part": fewer than ``MIN_BLOCK_COVERAGE`` (half) of the model's block tensors
    (``blocks.{i}.*``, less ``FINE_TUNING_ADDITIONS``, which pretraining never has) get a value
    from the file. Blocks are counted because they are what pretraining learns: a file that
    fills only ``cls_token`` / ``pos_embed`` / the patch embedding, or a foreign layout whose names
    merely overlap, would otherwise "load" with two warning lines and train from random init.
    Half, not all, so that a shallower pretrained model may still initialise a deeper one's
    first blocks (a 12-block file fills exactly half of a 24-block ViT).
    """
    blocks = [k for k in own if k.startswith("blocks.") and not k.endswith(FINE_TUNING_ADDITIONS)]
    filled = [k for k in blocks if k in state]
    overlap = set(own) & set(state)
    if overlap and len(filled) >= MIN_BLOCK_COVERAGE * len(blocks):
        return
    what = ("has none of this ViT's parameters" if not overlap else
            f"fills only {len(filled)} of this ViT's {len(blocks)} block tensors")
    raise CheckpointError(f"{source} {what}: it looks like {describe_layout(raw_keys)}; convert a "
                          f"ViT checkpoint with {CONVERT_HINT} and load DST")
