"""``ViTLayerDecayOptimizerConstructor``: layer-wise lr decay for MMEngine, from ``tools.lr_decay``.

Why our own: MMSeg's ``LearningRateDecayOptimizerConstructor`` / ``LayerDecay...``
only act when the backbone class name contains "MAE"/"BEiT"/"ConvNeXt", expect ``layers.{i}``
names (our ``blocks.{i}`` would silently get scale 1) and put weight decay on ``pos_embed`` and
``cls_token``. This one applies the project's single rule (``tools.lr_decay.param_groups``):
embeddings -> layer 0, ``blocks.{i}`` -> i + 1, the adapter, heads and everything else -> L + 1,
lr = base lr x decay ** (L + 1 - id); which parameters skip weight decay is the named policy
``paramwise_cfg.wd_policy`` (default ``mae_finetune``; the ADE20K configs use ``mmseg_mae``, the
rule of MMSeg's own constructor).

Each group carries its absolute ``lr``. MMEngine's schedulers (LinearLR warm-up, PolyLR, ...)
record every group's ``initial_lr`` and scale each group by the same factor (chainable form), so
the per-layer ratios hold for the whole run (exactly so for PolyLR with ``eta_min=0``, the
recipe's). Groups are ordered head first, so the ``lr`` in the training log is the base lr.

Config::

    optim_wrapper = dict(type='OptimWrapper', optimizer=dict(type='AdamW', lr=1e-4,
                         weight_decay=0.05), constructor='ViTLayerDecayOptimizerConstructor',
                         paramwise_cfg=dict(layer_decay_rate=0.65))

``paramwise_cfg`` keys: ``layer_decay_rate`` (required), ``num_layers`` (default: read off the
``blocks.{i}`` names), ``no_weight_decay`` (extra exact parameter names without weight decay),
``wd_policy`` (a ``tools.lr_decay.WD_POLICIES`` name, checked when the config is read).
"""
from __future__ import annotations

import copy
from typing import Dict, List, Optional

import torch.nn as nn
from mmengine.logging import print_log
from mmengine.model import is_model_wrapper
from mmengine.optim import OptimWrapper
from mmengine.registry import OPTIM_WRAPPER_CONSTRUCTORS, OPTIM_WRAPPERS, OPTIMIZERS

from mae_transfer.tools.lr_decay import check_wd_policy, param_groups

_KNOWN_KEYS = {"layer_decay_rate", "num_layers", "no_weight_decay", "wd_policy"}


@OPTIM_WRAPPER_CONSTRUCTORS.register_module()
class ViTLayerDecayOptimizerConstructor:
    """Build an ``OptimWrapper`` whose optimizer has one group per (layer id, decay?) pair."""

    def __init__(self, optim_wrapper_cfg: dict, paramwise_cfg: Optional[dict] = None):
        if not isinstance(optim_wrapper_cfg, dict) or "optimizer" not in optim_wrapper_cfg:
            raise ValueError("optim_wrapper needs an `optimizer` entry, e.g. "
                             "dict(type='AdamW', lr=1e-4, weight_decay=0.05)")
        paramwise_cfg = dict(paramwise_cfg or {})
        unknown = set(paramwise_cfg) - _KNOWN_KEYS
        if unknown:
            raise ValueError(f"unknown paramwise_cfg keys {sorted(unknown)} for "
                             f"ViTLayerDecayOptimizerConstructor (known: {sorted(_KNOWN_KEYS)})")
        if "layer_decay_rate" not in paramwise_cfg:
            raise ValueError("paramwise_cfg needs layer_decay_rate (e.g. 0.65)")
        self.optim_wrapper_cfg = copy.deepcopy(dict(optim_wrapper_cfg))
        self.optimizer_cfg = self.optim_wrapper_cfg.pop("optimizer")
        self.layer_decay = float(paramwise_cfg["layer_decay_rate"])
        self.num_layers = paramwise_cfg.get("num_layers")
        self.no_weight_decay = tuple(paramwise_cfg.get("no_weight_decay", ()))
        self.wd_policy = check_wd_policy(str(paramwise_cfg.get("wd_policy", "mae_finetune")))

    def param_groups(self, model: nn.Module) -> List[Dict]:
        """The optimizer's groups (head first), each with its absolute ``lr``."""
        base_lr = float(self.optimizer_cfg["lr"])
        groups = param_groups(model, weight_decay=float(self.optimizer_cfg.get("weight_decay", 0)),
                              layer_decay=self.layer_decay, num_layers=self.num_layers,
                              lr=base_lr, no_weight_decay=self.no_weight_decay,
                              wd_policy=self.wd_policy)
        return sorted(groups, key=lambda g: (-g["layer_id"], -g["weight_decay"]))

    def __call__(self, model: nn.Module) -> OptimWrapper:
        if is_model_wrapper(model):
            model = model.module
        groups = self.param_groups(model)
        optimizer_cfg = dict(copy.deepcopy(self.optimizer_cfg), params=groups)
        optimizer = OPTIMIZERS.build(optimizer_cfg)
        wrapper_cfg = copy.deepcopy(self.optim_wrapper_cfg)
        wrapper_cfg.setdefault("type", "OptimWrapper")
        optim_wrapper = OPTIM_WRAPPERS.build(wrapper_cfg, default_args=dict(optimizer=optimizer))
        summary = ", ".join(f"{g['layer_id']}{'' if g['weight_decay'] else '(no wd)'}:"
                            f"{g['lr_scale']:.3g}x{len(g['params'])}" for g in groups)
        print_log(f"layer-wise lr decay {self.layer_decay}: {len(groups)} groups "
                  f"(layer id: lr scale x params) {summary}", logger="current")
        return optim_wrapper
