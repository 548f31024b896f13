"""Multi-scale adapter: a pyramid at strides 4, 8, 16, 32 from same-resolution ViT maps (UperNet).

A plain ViT has a single resolution (stride 16), while UperNet's FPN/PPM head wants a pyramid. The
BEiT / MAE segmentation recipe takes the maps of four evenly spaced blocks and resamples each one:

- x4: 2x transposed conv -> norm -> GELU -> 2x transposed conv   (stride 16 -> 4)
- x2: 2x transposed conv                                         (stride 16 -> 8)
- x1: identity                                                   (stride 16)
- x0.5: 2x2 max-pool                                             (stride 16 -> 32)

(Any power-of-2 factor is accepted, e.g. x0.25 for a pyramid that ends at stride 64.) Channel counts are
kept, so every output has the ViT's width. Framework-free: the norm between the two transposed
convs is a constructor argument (``BatchNorm2d`` by default; the MMSeg backbone passes SyncBN,
as MMSeg's MAE config does), and nothing here imports MMSeg or Detectron2.
"""
from __future__ import annotations

from typing import Callable, List, Sequence

import torch
import torch.nn as nn

from mae_transfer.backbones.layers import pyramid_scales, resampler

#: The UperNet pyramid from stride-16 maps: strides 4, 8, 16, 32.
UPERNET_SCALES = pyramid_scales(16)


class MultiScaleAdapter(nn.Module):
    """Resample ``len(scales)`` same-stride maps by the factors in ``scales`` (one op per map).

    ``forward(maps)`` takes a list of ``(B, dim, h, w)`` tensors (e.g. ``VisionTransformer.
    forward_maps(x, out_indices)``) and returns the list of resampled maps, in the same order.
    Parameters live under ``ops.{i}``; only the x4 and x2 branches have any.
    """

    def __init__(self, dim: int, scales: Sequence[float] = UPERNET_SCALES,
                 norm_layer: Callable[[int], nn.Module] = nn.BatchNorm2d):
        super().__init__()
        self.scales = tuple(float(s) for s in scales)
        self.ops = nn.ModuleList([resampler(s, dim, norm_layer, halve_channels=False)[0]
                                  for s in self.scales])

    def strides(self, input_stride: int) -> List[int]:
        """Output strides for input maps of stride ``input_stride`` (16 -> [4, 8, 16, 32])."""
        return [int(round(input_stride / s)) for s in self.scales]

    def forward(self, maps: Sequence[torch.Tensor]) -> List[torch.Tensor]:
        if len(maps) != len(self.ops):
            raise ValueError(f"the adapter resamples {len(self.ops)} maps (scales "
                             f"{self.scales}), got {len(maps)}")
        return [op(m) for op, m in zip(self.ops, maps)]
