"""The classifier: our ViT with MAE's classification head (``models_vit.py``), for fine-tuning
and linear probing.

Names and function are official MAE's, so that its fine-tuned checkpoints
(``mae_finetuned_vit_base.pth``: ``blocks.*``, ``fc_norm.*``, ``head.*``) evaluate here with
``--eval --resume`` and ours read there:

- ``global_pool=True`` (fine-tuning default): the mean of the patch tokens after the last block
  (cls token left out), through ``fc_norm`` (LayerNorm, eps 1e-6); the encoder's final ``norm``
  is removed (MAE deletes it), so a pretrained file's ``norm.*`` is reported unused.
- ``global_pool=False`` (``--cls_token``, linear-probe default): the cls token after ``norm``.
- head: ``Linear(D, nb_classes)``, weight trunc-normal (std 2e-5 for fine-tuning, 0.01 for the
  probe, as MAE after MoCo v3), bias zero. The probe puts ``BatchNorm1d(D, affine=False,
  eps=1e-6)`` in front (``head.0``, ``head.1``: MAE's ``Sequential``) and trains only the head.
"""
from __future__ import annotations

from typing import List

import torch
import torch.nn as nn
from timm.layers import trunc_normal_

from mae_transfer.backbones.vit import VisionTransformer
from mae_transfer.classification.encoder import encoder_kwargs

#: Head weight init std of each recipe (MAE ``main_finetune.py`` / ``main_linprobe.py``).
FINETUNE_HEAD_STD = 2e-5
LINPROBE_HEAD_STD = 0.01
#: The probe's feature normalisation (a BatchNorm without affine parameters).
PROBE_BN_EPS = 1e-6


def linear_head(dim: int, nb_classes: int, std: float) -> nn.Linear:
    """``Linear(dim, nb_classes)``: weight trunc-normal(std) (cut at +-2, timm's), bias zero."""
    head = nn.Linear(dim, nb_classes)
    trunc_normal_(head.weight, std=std)
    nn.init.zeros_(head.bias)
    return head


def probe_head(dim: int, nb_classes: int, std: float = LINPROBE_HEAD_STD) -> nn.Sequential:
    """MAE's linear-probe head: ``BatchNorm1d(dim, affine=False, eps=1e-6)`` then the linear."""
    return nn.Sequential(nn.BatchNorm1d(dim, affine=False, eps=PROBE_BN_EPS),
                         linear_head(dim, nb_classes, std))


class ViTClassifier(VisionTransformer):
    """A ``VisionTransformer`` with a pooled feature and a head (see the module docstring)."""

    def __init__(self, nb_classes: int, global_pool: bool = True, probe: bool = False,
                 head_init_std: float = FINETUNE_HEAD_STD, **vit_kwargs):
        super().__init__(final_norm=not global_pool, **vit_kwargs)
        self.global_pool = global_pool
        self.nb_classes = nb_classes
        dim = self.embed_dim
        self.fc_norm = nn.LayerNorm(dim, eps=1e-6) if global_pool else None
        self.head = (probe_head(dim, nb_classes, head_init_std) if probe
                     else linear_head(dim, nb_classes, head_init_std))

    def pooled(self, x: torch.Tensor) -> torch.Tensor:
        """Images ``(B, 3, H, W)`` -> the feature the head reads, ``(B, D)``."""
        tokens, grid = self.embed(x)
        for i in range(self.depth):
            tokens = self.run_block(i, tokens, grid)
        if self.global_pool:
            return self.fc_norm(tokens[:, self.num_prefix_tokens:].mean(dim=1))
        return self.norm(tokens)[:, 0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.pooled(x))


def build_classifier(model: str, nb_classes: int, input_size: int = 224, drop_path: float = 0.0,
                     global_pool: bool = True, probe: bool = False,
                     head_init_std: float | None = None) -> ViTClassifier:
    """``--model`` as a classifier at ``--input_size``; ``probe``: MAE's linear-probe head."""
    std = head_init_std if head_init_std is not None else (
        LINPROBE_HEAD_STD if probe else FINETUNE_HEAD_STD)
    return ViTClassifier(nb_classes, global_pool=global_pool, probe=probe, head_init_std=std,
                         **encoder_kwargs(model, input_size, drop_path))


def freeze_all_but_head(model: nn.Module) -> List[str]:
    """Linear probing: only ``head.*`` trains (MAE freezes every other parameter, ``fc_norm``
    included). Returns the names of the parameters left trainable."""
    trainable = []
    for name, p in model.named_parameters():
        p.requires_grad = name.startswith("head.")
        if p.requires_grad:
            trainable.append(name)
    return trainable
