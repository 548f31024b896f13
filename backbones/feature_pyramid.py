"""Simple feature pyramid (ViTDet, Li et al. 2022): a multi-scale pyramid from ONE ViT map.

A plain ViT has a single stride (16), while detectors with FPN-style heads want strides 4 to 64.
ViTDet's finding is that no top-down / lateral FPN is needed: resampling the LAST block's map is
enough. For every scale factor ``s``:

- ``s > 1`` (powers of 2): ``log2(s)`` stride-2 transposed convs, each halving the channels, with
  norm + GELU between them (x4: deconv -> norm -> GELU -> deconv);
- ``s == 1``: identity;
- ``s < 1``: a ``1/s`` max-pool;

then a 1x1 conv and a 3x3 conv to ``out_channels``, each followed by the norm (LayerNorm over
channels by default: detection trains with 1-2 images per device, too few for BatchNorm). Extra
coarser levels (the RPN's stride 64) are stride-2 subsamplings of the coarsest level.

Framework-free (plain torch): ``detection.backbone`` wraps it as a Detectron2 ``Backbone``.
"""
from __future__ import annotations

from typing import Callable, List, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from mae_transfer.backbones.layers import LayerNorm2d, pyramid_scales, resampler

#: ViTDet's factors on a stride-16 map: strides 4, 8, 16, 32 (+ one extra level: 64).
VITDET_SCALES = pyramid_scales(16)


def _conv_norm(in_ch: int, out_ch: int, kernel: int, norm_layer) -> nn.Sequential:
    # torch's default init, as ViTDet's pyramid (Detectron2's FPN would use Caffe2's xavier fill)
    conv = nn.Conv2d(in_ch, out_ch, kernel, padding=kernel // 2, bias=False)
    return nn.Sequential(conv, norm_layer(out_ch))


class SimpleFeaturePyramid(nn.Module):
    """Maps ``(B, in_channels, h, w)`` to a list of ``(B, out_channels, h*s, w*s)`` maps.

    Outputs are ordered finest first: one per ``scale_factors`` entry (same order, which must be
    decreasing), then ``num_extra_levels`` stride-2 subsamplings of the last one. Parameters live
    under ``levels.{i}.{0: rescale, 1: 1x1 conv + norm, 2: 3x3 conv + norm}``.
    """

    def __init__(self, in_channels: int, out_channels: int = 256,
                 scale_factors: Sequence[float] = VITDET_SCALES, num_extra_levels: int = 1,
                 norm_layer: Callable[[int], nn.Module] = LayerNorm2d):
        super().__init__()
        self.scale_factors = tuple(float(s) for s in scale_factors)
        if list(self.scale_factors) != sorted(self.scale_factors, reverse=True):
            raise ValueError(f"scale_factors must be decreasing (finest first), "
                             f"got {scale_factors}")
        self.num_extra_levels = int(num_extra_levels)
        self.out_channels = out_channels
        levels = []
        for s in self.scale_factors:
            rescale, channels = resampler(s, in_channels, norm_layer, halve_channels=True)
            levels.append(nn.Sequential(rescale, _conv_norm(channels, out_channels, 1, norm_layer),
                                        _conv_norm(out_channels, out_channels, 3, norm_layer)))
        self.levels = nn.ModuleList(levels)

    def strides(self, input_stride: int) -> List[int]:
        """Output strides for an input map of stride ``input_stride`` (16 -> [4, 8, 16, 32, 64])."""
        base = [int(round(input_stride / s)) for s in self.scale_factors]
        return base + [base[-1] * 2 ** (i + 1) for i in range(self.num_extra_levels)]

    def forward(self, x: torch.Tensor) -> List[torch.Tensor]:
        outs = [level(x) for level in self.levels]
        for _ in range(self.num_extra_levels):
            # kernel 1, stride 2: keeps every other pixel (ceil size), as Detectron2's p6 does.
            outs.append(F.max_pool2d(outs[-1], kernel_size=1, stride=2))
        return outs
