"""Small layers the ViT adapters share (framework-free).

``resampler``: the per-scale up/down-sampling both pyramids (ViTDet, UperNet adapter) are built of.

``pyramid_scales``: the factors that take a ViT's patch-stride map to strides 4, 8, 16, 32, so
both pyramids work for any power-of-2 patch size (16: 4, 2, 1, 0.5; 8: 2, 1, 0.5, 0.25).

``LayerNorm2d``: LayerNorm over the channel axis of an NCHW map. Convolutional pyramids and heads
on top of a ViT (ViTDet's simple feature pyramid, the LayerNorm in its RPN / box / mask convs) use
it where a CNN would use BatchNorm, because it does not depend on the batch size: detection trains
with 1-2 images per device, where BatchNorm statistics are noise.
"""
from __future__ import annotations

import math
from typing import Callable, List, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F


class LayerNorm2d(nn.Module):
    """LayerNorm over the channel axis of a ``(B, C, H, W)`` tensor (Detectron2's ``"LN"``).

    Parameters ``weight`` / ``bias`` of shape (C,), default eps 1e-6 as in the ViT. Deliberately
    *not* a subclass of ``nn.LayerNorm``: ViTDet's weight-decay rule (Detectron2's
    ``get_default_optimizer_params(weight_decay_norm=0)``) exempts modules that are
    ``torch.nn.LayerNorm`` instances, and its own channel LayerNorm is not one, so the pyramid's and
    heads' norms keep weight decay there; ``tools.lr_decay``'s ``vitdet`` policy relies on the same
    distinction. It can be passed wherever a ``norm(num_channels) -> module`` factory is expected
    (e.g. Detectron2's ``get_norm``).
    """

    def __init__(self, num_channels: int, eps: float = 1e-6):
        super().__init__()
        self.normalized_shape = (int(num_channels),)
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(num_channels))
        self.bias = nn.Parameter(torch.zeros(num_channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4:
            raise ValueError(f"LayerNorm2d expects a (B, C, H, W) tensor, "
                             f"got shape {tuple(x.shape)}")
        x = x.permute(0, 2, 3, 1)
        x = F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
        return x.permute(0, 3, 1, 2)


#: The output strides of both pyramids (ViTDet p2..p5, UperNet's four inputs).
PYRAMID_STRIDES = (4, 8, 16, 32)


def pyramid_scales(patch_size, strides: Sequence[int] = PYRAMID_STRIDES) -> Tuple[float, ...]:
    """Resampling factors from a ViT's stride-``patch_size`` map to ``strides`` (finest first).

    ``pyramid_scales(16)`` is ViTDet's ``(4.0, 2.0, 1.0, 0.5)``. Patch sizes that are not a power of
    2 (e.g. 14) are an error: the resulting strides would not be integers, which ROI poolers and
    the UperNet head cannot use.
    """
    patch = patch_size[0] if isinstance(patch_size, (tuple, list)) else int(patch_size)
    if patch <= 0 or patch & (patch - 1):
        raise ValueError(f"patch size {patch_size} is not a power of 2: the pyramid strides "
                         f"{tuple(strides)} cannot be reached by factors of 2")
    return tuple(patch / s for s in strides)


def _log2_int(value: float) -> int:
    k = math.log2(value)
    if abs(k - round(k)) > 1e-9:
        raise ValueError(f"pyramid scale factor must be a power of 2, got {value}")
    return int(round(k))


def resampler(scale: float, channels: int, norm_layer: Callable[[int], nn.Module],
              halve_channels: bool) -> Tuple[nn.Module, int]:
    """``(module, output channels)`` resampling a stride-s map by ``scale`` (a power of 2).

    The one recipe both ViT adapters use: upsampling by ``2**k`` is k stride-2 transposed convs
    with norm + GELU between them; 1 is identity; downsampling is a max-pool. ViTDet's pyramid
    halves the channels at every transposed conv (``halve_channels=True``); the UperNet adapter
    of BEiT / MAE keeps them.
    """
    steps = _log2_int(scale)
    if steps == 0:
        return nn.Identity(), channels
    if steps < 0:
        k = 2 ** -steps
        return nn.MaxPool2d(kernel_size=k, stride=k), channels
    if halve_channels and channels % (2 ** steps):
        raise ValueError(f"{channels} channels cannot be halved {steps} times for scale {scale}")
    layers: List[nn.Module] = []
    for i in range(steps):
        out = channels // 2 if halve_channels else channels
        layers.append(nn.ConvTranspose2d(channels, out, kernel_size=2, stride=2))
        channels = out
        if i < steps - 1:
            layers += [norm_layer(channels), nn.GELU()]
    return nn.Sequential(*layers), channels
