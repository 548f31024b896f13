"""Layer-wise learning-rate decay: one rule for the pretraining fine-tunes, Detectron2 and MMSeg.

Rule (DESIGN.md): the layer id of a parameter comes from its name, wherever the ViT sits in the
model (``blocks.3.attn.qkv.weight`` and ``backbone.net.blocks.3.attn.qkv.weight`` are the same):

- ``cls_token``, ``pos_embed``, ``mask_token``, ``patch_embed.*``   -> 0
- ``blocks.{i}.*``                                                  -> i + 1
- everything else (final norm, pyramids, necks, heads)              -> L + 1

lr scale = ``layer_decay ** (L + 1 - layer_id)``. No weight decay on 1-D parameters (norms,
biases), ``pos_embed``, ``cls_token``, ``mask_token`` and relative-position tables.
"""
from __future__ import annotations

import re
from typing import Dict, Iterable, List, Optional, Tuple

import torch.nn as nn

_BLOCK = re.compile(r"(?:^|\.)blocks\.(\d+)\.")
_EMBED_NAMES = {"cls_token", "pos_embed", "mask_token"}
_NO_DECAY_NAMES = _EMBED_NAMES | {"rel_pos_h", "rel_pos_w"}


def layer_id(name: str, num_layers: int) -> int:
    """Layer id of parameter ``name`` in a model whose ViT has ``num_layers`` blocks."""
    parts = name.split(".")
    if parts[-1] in _EMBED_NAMES or "patch_embed" in parts:
        return 0
    m = _BLOCK.search(name)
    if m:
        return int(m.group(1)) + 1
    return num_layers + 1


def uses_weight_decay(name: str, param: nn.Parameter) -> bool:
    """False for 1-D parameters (norms, biases), tokens, position embeddings and rel-pos tables."""
    return param.ndim > 1 and name.split(".")[-1] not in _NO_DECAY_NAMES


def count_vit_blocks(model: nn.Module) -> int:
    """Number of ViT blocks, read off the parameter names (``...blocks.{i}...``)."""
    ids = [int(m.group(1)) for n, _ in model.named_parameters() if (m := _BLOCK.search(n))]
    if not ids:
        raise ValueError("no '.blocks.{i}.' parameters found: pass num_layers explicitly")
    return max(ids) + 1


def param_groups(model: nn.Module, weight_decay: float = 0.05, layer_decay: float = 0.75,
                 num_layers: Optional[int] = None, lr: Optional[float] = None,
                 no_weight_decay: Iterable[str] = ()) -> List[Dict]:
    """Optimizer parameter groups with layer-wise lr decay; one group per (layer id, decay?) pair.

    Each group carries ``params``, ``weight_decay``, ``lr_scale``, ``layer_id`` and
    ``param_names``; with ``lr`` given, also ``lr = lr * lr_scale`` (what Detectron2 and MMEngine
    schedulers scale from). Extra names in ``no_weight_decay`` (exact parameter names) are exempt
    from weight decay too. Frozen parameters are left out.
    """
    num_layers = count_vit_blocks(model) if num_layers is None else num_layers
    extra_no_decay = set(no_weight_decay)
    groups: Dict[Tuple[int, bool], Dict] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        lid = layer_id(name, num_layers)
        decay = uses_weight_decay(name, param) and name not in extra_no_decay
        group = groups.get((lid, decay))
        if group is None:
            scale = layer_decay ** (num_layers + 1 - lid)
            group = {"params": [], "param_names": [], "layer_id": lid, "lr_scale": scale,
                     "weight_decay": weight_decay if decay else 0.0}
            if lr is not None:
                group["lr"] = lr * scale
            groups[(lid, decay)] = group
        group["params"].append(param)
        group["param_names"].append(name)
    return [groups[k] for k in sorted(groups)]
