"""The MMSeg ``MAE`` / ``BEiT`` backbone layout of a ViT state dict, to and from ours.

MMSeg's ``MAE`` (the backbone that reproduces MAE's 48.1 ADE20K mIoU) and ``BEiT`` hold the same
tensors as our ViT built with ``rel_pos_type="beit"`` and ``layer_scale_init``, under other names:

====================================  =====================================
ours (= official MAE / BEiT / timm)   MMSeg ``MAE`` / ``BEiT`` (and MMPretrain)
====================================  =====================================
``patch_embed.proj.*``                ``patch_embed.projection.*``
``blocks.{i}.norm1.*`` / ``norm2.*``  ``layers.{i}.ln1.*`` / ``ln2.*``
``blocks.{i}.attn.qkv.*``             ``layers.{i}.attn.qkv.*`` (BEiT: weight only, plus
                                      ``attn.q_bias`` / ``attn.v_bias``; k has no bias)
``blocks.{i}.attn.proj.*``            ``layers.{i}.attn.proj.*``
``blocks.{i}.attn.relative_position_bias_table``  the same under ``layers.{i}``, plus the
                                      derived buffer ``attn.relative_position_index``
``blocks.{i}.gamma_1`` / ``gamma_2``  ``layers.{i}.gamma_1`` / ``gamma_2``
``blocks.{i}.mlp.fc1.*`` / ``fc2.*``  ``layers.{i}.ffn.layers.0.0.*`` / ``ffn.layers.1.*``
``norm.*`` (final norm)               ``ln1.*`` (``final_norm=True`` only)
``cls_token``, ``pos_embed``          the same
====================================  =====================================

Reading folds ``q_bias`` / ``v_bias`` into one ``qkv.bias`` (zeros for k: the same function) and
drops ``relative_position_index`` (recomputed from the grid), in both namings: unilm's BEiT
checkpoints use our ``blocks.{i}`` names with those two quirks. Writing adds the index buffers,
because MMSeg's modules keep them in their state dicts.
"""
from __future__ import annotations

import re
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import torch

from mae_transfer.backbones.pos_embed import beit_rel_pos_index, beit_table_rows

StateDict = Dict[str, torch.Tensor]

#: Per-block sub-names: (MMSeg, ours).
_BLOCK_NAMES = (("ln1.", "norm1."), ("ln2.", "norm2."), ("ffn.layers.0.0.", "mlp.fc1."),
                ("ffn.layers.1.", "mlp.fc2."), ("attn.", "attn."), ("gamma_1", "gamma_1"),
                ("gamma_2", "gamma_2"))
#: Top-level names: (MMSeg, ours).
_TOP_NAMES = (("patch_embed.projection.", "patch_embed.proj."), ("ln1.", "norm."),
              ("cls_token", "cls_token"), ("pos_embed", "pos_embed"))
_MMSEG_BLOCK = re.compile(r"^layers\.(\d+)\.(.*)$")
_OURS_BLOCK = re.compile(r"^blocks\.(\d+)\.(.*)$")
#: Names only the MMSeg layout has (what ``is_mmseg_beit`` looks for).
_MMSEG_MARKERS = re.compile(r"^(layers\.\d+\.(ln1|ln2|ffn\.layers)\.|patch_embed\.projection\.)")


def is_mmseg_beit(keys: Iterable[str]) -> bool:
    """True when the (prefix-free) keys are in the MMSeg ``MAE`` / ``BEiT`` naming."""
    return any(_MMSEG_MARKERS.match(k) for k in keys)


def _rename(name: str, block_re, top_names, block_names, block_prefix: str) -> Optional[str]:
    m = block_re.match(name)
    if m:
        for src, dst in block_names:
            if m.group(2).startswith(src):
                return f"{block_prefix}.{m.group(1)}.{dst}{m.group(2)[len(src):]}"
        return None
    for src, dst in top_names:
        if name.startswith(src):
            return dst + name[len(src):]
    return None


def normalize_beit_quirks(state: StateDict) -> Tuple[StateDict, List[str]]:
    """Fold ``attn.q_bias`` / ``attn.v_bias`` into ``attn.qkv.bias``; drop the index buffers."""
    state = dict(state)
    dropped = [k for k in state if k.endswith("attn.relative_position_index")]
    for k in dropped:
        del state[k]
    for q_key in [k for k in state if k.endswith("attn.q_bias")]:
        base = q_key[:-len("q_bias")]
        q, v = state.pop(q_key), state.pop(base + "v_bias")
        state[base + "qkv.bias"] = torch.cat([q, torch.zeros_like(q), v])
    return state, dropped


def from_mmseg_beit(state: StateDict) -> Tuple[StateDict, List[str]]:
    """MMSeg ``MAE`` / ``BEiT`` names -> ours: ``(state, dropped keys)``; unknown names kept."""
    out: StateDict = {}
    for k, v in state.items():
        out[_rename(k, _MMSEG_BLOCK, _TOP_NAMES, _BLOCK_NAMES, "blocks") or k] = v
    return normalize_beit_quirks(out)


def to_mmseg_beit(state: StateDict, grid: Optional[Sequence[int]] = None) -> StateDict:
    """Our names -> MMSeg ``MAE`` names, with the ``relative_position_index`` buffers added.

    ``grid``: the patch grid the BEiT tables are for (default: square, read from the row count).
    A model with ViTDet's decomposed tables has no MMSeg ``MAE`` counterpart: that is an error,
    not a silent drop of its tables.
    """
    decomposed = [k for k in state if k.endswith(("rel_pos_h", "rel_pos_w"))]
    if decomposed:
        raise ValueError(
            f"the checkpoint uses ViTDet's decomposed relative position bias ({decomposed[0]}, "
            f"...): MMSeg's MAE/BEiT has one BEiT table per block, a different function; there "
            f"is no conversion between them (train with rel_pos_type='beit' for MMSeg's layout)")
    swapped_top = tuple((dst, src) for src, dst in _TOP_NAMES)
    swapped_block = tuple((dst, src) for src, dst in _BLOCK_NAMES)
    out: StateDict = {}
    for k, v in state.items():
        new = _rename(k, _OURS_BLOCK, swapped_top, swapped_block, "layers")
        if new is None:
            raise ValueError(f"{k} has no counterpart in MMSeg's MAE backbone")
        out[new] = v
        if k.endswith("attn.relative_position_bias_table"):
            table_grid = _table_grid(v.shape[0], grid)
            out[new.replace("relative_position_bias_table", "relative_position_index")] = \
                beit_rel_pos_index(table_grid, table_grid, num_prefix=1)
    return out


def _table_grid(rows: int, grid: Optional[Sequence[int]]) -> Tuple[int, int]:
    """The grid a table of ``rows`` rows was built for: ``grid`` if it fits, else square."""
    if grid is not None and beit_table_rows(grid) == rows:
        return int(grid[0]), int(grid[1])
    side = (int(round((rows - 3) ** 0.5)) + 1) // 2
    if beit_table_rows((side, side)) != rows:
        raise ValueError(f"a BEiT table of {rows} rows is not (2S-1)^2 + 3 for a square grid S "
                         f"and the checkpoint records no grid it fits")
    return side, side
