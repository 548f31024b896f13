"""``MAEViT``: the shared ViT as an MMSegmentation backbone (registered in ``mmseg.registry.MODELS``).

It *is* a ``backbones.VisionTransformer`` (a subclass, built from the same named architectures as
``build_vit``), so inside an ``EncoderDecoder`` its parameters are ``backbone.blocks.{i}...``,
``backbone.pos_embed`` ...: the names ``tools.checkpoints`` writes for the ``mmseg`` format and
that ``tools.lr_decay`` reads layer ids from. On top sits ``backbones.MultiScaleAdapter``
(``backbone.adapter.*``) that turns the stride-16 maps of four evenly spaced blocks into the
stride 4 / 8 / 16 / 32 pyramid that UperNet expects; UPerHead and FCNHead are MMSeg's own.

Pretrained weights (``pretrained=PATH`` or ``init_cfg=dict(type='Pretrained', checkpoint=PATH)``)
go through the one reader (``backbones.checkpoint_reader``), not MMEngine's loader: every layout
of docs/checkpoints.md works (official MAE with decoder keys, timm, ours, Detectron2, MMSeg, MMSeg's
own ``MAE`` / ``BEiT``, our own ``iter_N.pth``), with ``weights_only=True``;
``pos_embed`` and BEiT tables are resized to the 512 px grid, missing / unexpected keys are
logged by name in the run's log, and a file that fills too little of the ViT stops the run.
"""
from __future__ import annotations

import logging
from typing import List, Optional, Sequence

import torch
import torch.nn as nn
from mmcv.cnn import build_norm_layer
from mmengine.logging import print_log

from mae_transfer.backbones.checkpoint_reader import CheckpointReport, read_weights
from mae_transfer.backbones.layers import pyramid_scales
from mae_transfer.backbones.multiscale import MultiScaleAdapter
from mae_transfer.backbones.vit import VisionTransformer, vit_kwargs
from mmseg.registry import MODELS

#: Block fractions of the BEiT / MAE UperNet recipe: blocks 3, 5, 7, 11 of 12; 7, 11, 15, 23 of 24.
RECIPE_FRACTIONS = (1 / 3, 1 / 2, 2 / 3, 1.0)


def default_out_indices(depth: int, num_outs: int = 4) -> List[int]:
    """Evenly spaced block indices that end at the last block (the recipe's for 4 outputs)."""
    if num_outs == len(RECIPE_FRACTIONS) and depth >= num_outs:
        indices = [int(round(depth * f)) - 1 for f in RECIPE_FRACTIONS]
    else:
        indices = [int(round((depth - 1) * (i + 1) / num_outs)) for i in range(num_outs)]
    if len(set(indices)) != num_outs or min(indices) < 0:
        raise ValueError(f"cannot pick {num_outs} distinct blocks out of {depth}")
    return indices


def _pretrained_path(pretrained: Optional[str], init_cfg) -> Optional[str]:
    if isinstance(init_cfg, dict) and init_cfg.get("type") == "Pretrained":
        if pretrained is not None and pretrained != init_cfg.get("checkpoint"):
            raise ValueError("give the pretrained weights once: `pretrained` or "
                             "init_cfg=dict(type='Pretrained', checkpoint=...), not both")
        return init_cfg.get("checkpoint")
    if init_cfg is not None:
        raise ValueError(f"MAEViT accepts only init_cfg=dict(type='Pretrained', checkpoint=PATH), "
                         f"got {init_cfg}")
    return pretrained


@MODELS.register_module()
class MAEViT(VisionTransformer):
    """Shared ViT + multi-scale adapter; ``forward(img)`` -> tuple of 4 maps, strides 4 to 32.

    Args:
        arch: a ``backbones.VIT_ARCHS`` name (``vit_base_patch16``, ``vit_large_patch16`` ...).
        img_size: training crop; sets the grid ``pos_embed`` and the rel-pos tables are sized for.
        out_indices: blocks whose maps feed the adapter (default: evenly spaced, see
            ``default_out_indices``).
        drop_path_rate, use_rel_pos, final_norm, window_size, global_blocks, grad_checkpointing,
        fused_attn, ...: passed to ``VisionTransformer`` (any of its arguments can be given).
        rel_pos_type, layer_scale_init: ``'beit'`` and ``1.0`` give MMSeg's ``MAE`` backbone of
            its ADE20K config (BEiT relative position tables, layer scale), which the ADE20K
            configs use; the default (``'decomposed'``, no layer scale) is ViTDet's attention.
        norm_cfg: MMCV norm config for the adapter's x4 branch (SyncBN as in MMSeg's MAE config;
            the Runner turns it into BatchNorm on a single process).
        scales: the adapter's resampling factors; ``None`` (default): strides 4, 8, 16, 32 for the
            ViT's patch size (``backbones.layers.pyramid_scales``; 4, 2, 1, 0.5 for patch 16).
        pretrained / init_cfg: weights file for the ViT, read by ``backbones.checkpoint_reader``.
    """

    def __init__(self, arch: str = "vit_base_patch16", img_size=512,
                 out_indices: Optional[Sequence[int]] = None, drop_path_rate: float = 0.1,
                 use_rel_pos: bool = True, final_norm: bool = False,
                 scales: Optional[Sequence[float]] = None,
                 norm_cfg: dict = dict(type="SyncBN", requires_grad=True),
                 pretrained: Optional[str] = None, init_cfg=None, **vit_overrides):
        super().__init__(img_size=img_size,
                         **vit_kwargs(arch, drop_path_rate=drop_path_rate, use_rel_pos=use_rel_pos,
                                      final_norm=final_norm, **vit_overrides))
        self.arch_name = arch
        if scales is None:  # strides 4, 8, 16, 32 whatever the patch size
            scales = pyramid_scales(self.patch_size)
        self.out_indices = (default_out_indices(self.depth, len(scales)) if out_indices is None
                            else [int(i) for i in out_indices])
        if len(self.out_indices) != len(scales):
            raise ValueError(f"{len(self.out_indices)} out_indices for {len(scales)} pyramid "
                             f"scales {tuple(scales)}: give one block per scale")
        if any(not 0 <= i < self.depth for i in self.out_indices):
            raise ValueError(f"out_indices {self.out_indices} outside the {self.depth} blocks")
        self.adapter = MultiScaleAdapter(self.embed_dim, scales,
                                         norm_layer=lambda c: build_norm_layer(norm_cfg, c)[1])
        self.pretrained = _pretrained_path(pretrained, init_cfg)
        self.is_init = False
        self.load_report: Optional[CheckpointReport] = None

    @property
    def strides(self) -> List[int]:
        """Output strides, e.g. [4, 8, 16, 32] for patch 16."""
        return self.adapter.strides(self.patch_size[0])

    def load_pretrained(self, path: str) -> CheckpointReport:
        """Load ViT weights from ``path`` (any layout of the one reader); log the report.

        The adapter is excluded from the read: a pretrained file never holds it (a segmentation
        ``iter_N.pth`` does, and its adapter is not the ViT's), and listing its weights as
        "missing" on every load would drown the keys that really are.
        """
        report = read_weights(path, self, exclude=["adapter"], target="MAEViT").load_into(self)
        print_log(f"MAEViT: loaded pretrained weights: {report.summary()}", logger="current")
        new_tables, missing = report.new_in_fine_tuning, report.missing_pretrained
        if new_tables:
            print_log(f"MAEViT: {len(new_tables)} relative-position tables / layer-scale vectors "
                      f"are new in fine-tuning (not in the checkpoint; tables start at zero, "
                      f"gammas at layer_scale_init)", logger="current")
        unused_norm = [k for k in report.unexpected_keys
                       if k in ("norm.weight", "norm.bias") and isinstance(self.norm, nn.Identity)]
        unexpected = [k for k in report.unexpected_keys if k not in unused_norm]
        if unused_norm:
            print_log("MAEViT: the checkpoint's final norm is not used (final_norm=False: the "
                      "pyramid takes un-normed block outputs, as in the UperNet recipe)",
                      logger="current")
        print_log(f"MAEViT: missing keys: {missing or 'none'}", logger="current",
                  level=logging.WARNING if missing else logging.INFO)
        print_log(f"MAEViT: unexpected keys: {unexpected or 'none'}", logger="current",
                  level=logging.WARNING if unexpected else logging.INFO)
        self.load_report = report
        return report

    def init_weights(self) -> None:
        """Called once by the Runner before training (not on test): load the pretrained ViT.

        The random init (MAE's) happened at construction; a resumed run overwrites everything
        afterwards from its own checkpoint.
        """
        if self.pretrained:
            self.load_pretrained(self.pretrained)
        else:
            print_log("MAEViT: no pretrained weights given; the ViT starts from random init",
                      logger="current", level=logging.WARNING)
        self.is_init = True

    def forward(self, x: torch.Tensor) -> tuple:
        maps = self.forward_maps(x, self.out_indices)
        return tuple(self.adapter(maps))
