"""Layer-wise learning-rate decay: one rule for the pretraining fine-tunes, Detectron2 and MMSeg.

Rule (also in docs/backbone.md, "Layer-wise lr decay"): the layer id of a parameter comes from its name, wherever the ViT sits in the
model (``blocks.3.attn.qkv.weight`` and ``backbone.net.blocks.3.attn.qkv.weight`` are the same):

- ``cls_token``, ``pos_embed``, ``mask_token``, ``patch_embed.*``   -> 0
- ``blocks.{i}.*``                                                  -> i + 1
- everything else (final norm, pyramids, necks, heads)              -> L + 1

lr scale = ``layer_decay ** (L + 1 - layer_id)``.

Which parameters skip weight decay is the recipe's, not ours: each reference code base has its own
rule, and reproducing a paper means using that rule. They are the named ``wd_policy`` options of
``param_groups`` (``WD_POLICIES``), never a second copy of this function:

- ``"mae_finetune"`` (default): MAE / BEiT fine-tuning: 1-D parameters (norms, biases, layer-scale
  gammas), ``pos_embed``, ``cls_token``, ``mask_token`` and relative-position tables
  (``rel_pos_h/w``, ``relative_position_bias_table``).
- ``"vitdet"``: ViTDet B/L (Detectron2's ``get_default_optimizer_params(weight_decay_norm=0)``
  plus ``overrides={"pos_embed": {"weight_decay": 0}}``): only parameters of torch norm modules
  (``nn.LayerNorm``, BatchNorm, GroupNorm, ...) and ``pos_embed``. Biases, rel-pos tables and the
  channel LayerNorms of the pyramid and heads (``backbones.layers.LayerNorm2d``, Detectron2's
  ``"LN"``, not an ``nn.LayerNorm``) are decayed.
- ``"vitdet_h"``: ViTDet H (``overrides={}``, ``weight_decay_norm=None``): nothing is exempt.
- ``"mmseg_mae"``: MMSeg's ``LayerDecayOptimizerConstructor`` for ``MAE``/``BEiT``: 1-D parameters
  and ``*.bias``. Its name test for ``pos_embed``/``cls_token`` compares against the bare names
  while the model's are ``backbone.pos_embed``, so tokens, ``pos_embed`` and the rel-pos tables
  are decayed there, and here.
- ``"mae_pretrain"``: official MAE pretraining (timm ``add_weight_decay`` with no skip list):
  1-D parameters and ``*.bias``; ``cls_token`` and ``mask_token`` are decayed (the frozen
  sin-cos ``pos_embed`` has no gradient and is left out as every frozen parameter is).
"""
from __future__ import annotations

import re
from typing import Callable, Dict, Iterable, List, Optional, Set, Tuple

import torch.nn as nn

_BLOCK = re.compile(r"(?:^|\.)blocks\.(\d+)\.")
_EMBED_NAMES = {"cls_token", "pos_embed", "mask_token"}
_REL_POS_NAMES = {"rel_pos_h", "rel_pos_w", "relative_position_bias_table"}

#: Detectron2's ``norm_module_types`` (``detectron2.solver.build``): the modules whose parameters
#: ``weight_decay_norm`` applies to, matched with ``isinstance`` as there.
TORCH_NORM_TYPES = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm,
                    nn.GroupNorm, nn.InstanceNorm1d, nn.InstanceNorm2d, nn.InstanceNorm3d,
                    nn.LayerNorm, nn.LocalResponseNorm)


def layer_id(name: str, num_layers: int) -> int:
    """Layer id of parameter ``name`` in a model whose ViT has ``num_layers`` blocks."""
    parts = name.split(".")
    if parts[-1] in _EMBED_NAMES or "patch_embed" in parts:
        return 0
    m = _BLOCK.search(name)
    if m:
        return int(m.group(1)) + 1
    return num_layers + 1


# ---------------------------------------------------------------------- weight-decay policies
def _norm_module_params(model: nn.Module) -> Set[str]:
    """Names of the parameters held directly by torch norm modules (``TORCH_NORM_TYPES``)."""
    names = set()
    for mod_name, module in model.named_modules():
        if isinstance(module, TORCH_NORM_TYPES):
            names.update(f"{mod_name}.{p}" if mod_name else p
                         for p, _ in module.named_parameters(recurse=False))
    return names


def _mae_finetune(model: nn.Module) -> Set[str]:
    return {n for n, p in model.named_parameters()
            if p.ndim <= 1 or n.split(".")[-1] in _EMBED_NAMES | _REL_POS_NAMES}


def _vitdet(model: nn.Module) -> Set[str]:
    return _norm_module_params(model) | {n for n, _ in model.named_parameters()
                                         if n.split(".")[-1] == "pos_embed"}


def _vitdet_h(model: nn.Module) -> Set[str]:
    return set()


def _one_dim_and_biases(model: nn.Module) -> Set[str]:
    return {n for n, p in model.named_parameters() if p.ndim <= 1 or n.endswith(".bias")}


#: Policy name -> function giving the names of the parameters that skip weight decay.
WD_POLICIES: Dict[str, Callable[[nn.Module], Set[str]]] = {
    "mae_finetune": _mae_finetune,
    "vitdet": _vitdet,
    "vitdet_h": _vitdet_h,
    "mmseg_mae": _one_dim_and_biases,
    "mae_pretrain": _one_dim_and_biases,
}


def check_wd_policy(wd_policy: str) -> str:
    """``wd_policy`` itself if it names a ``WD_POLICIES`` entry, else a one-line ``ValueError``
    (for config readers that want to fail before a model exists)."""
    if wd_policy not in WD_POLICIES:
        raise ValueError(f"unknown wd_policy {wd_policy!r}; choose one of {sorted(WD_POLICIES)}")
    return wd_policy


def no_weight_decay_names(model: nn.Module, wd_policy: str = "mae_finetune") -> Set[str]:
    """Names of ``model``'s parameters that ``wd_policy`` exempts from weight decay."""
    return WD_POLICIES[check_wd_policy(wd_policy)](model)


def count_vit_blocks(model: nn.Module) -> int:
    """Number of ViT blocks, read off the parameter names (``...blocks.{i}...``)."""
    ids = [int(m.group(1)) for n, _ in model.named_parameters() if (m := _BLOCK.search(n))]
    if not ids:
        raise ValueError("no '.blocks.{i}.' parameters found: pass num_layers explicitly")
    return max(ids) + 1


def param_groups(model: nn.Module, weight_decay: float = 0.05, layer_decay: float = 0.75,
                 num_layers: Optional[int] = None, lr: Optional[float] = None,
                 no_weight_decay: Iterable[str] = (), wd_policy: str = "mae_finetune"
                 ) -> List[Dict]:
    """Optimizer parameter groups with layer-wise lr decay; one group per (layer id, decay?) pair.

    Each group carries ``params``, ``weight_decay``, ``lr_scale``, ``layer_id`` and
    ``param_names``; with ``lr`` given, also ``lr = lr * lr_scale`` (what Detectron2 and MMEngine
    schedulers scale from). ``wd_policy`` names the reference rule for which parameters skip
    weight decay (see the module docstring); extra names in ``no_weight_decay`` (exact parameter
    names) are exempt too. Frozen parameters are left out.
    """
    num_layers = count_vit_blocks(model) if num_layers is None else num_layers
    exempt = no_weight_decay_names(model, wd_policy) | set(no_weight_decay)
    groups: Dict[Tuple[int, bool], Dict] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        lid = layer_id(name, num_layers)
        decay = name not in exempt
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
