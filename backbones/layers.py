"""Small layers the ViT adapters share (framework-free).

``LayerNorm2d``: LayerNorm over the channel axis of an NCHW map. Convolutional pyramids and heads
on top of a ViT (ViTDet's simple feature pyramid, the LayerNorm in its RPN / box / mask convs) use
it where a CNN would use BatchNorm, because it does not depend on the batch size: detection trains
with 1-2 images per device, where BatchNorm statistics are noise.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


class LayerNorm2d(nn.LayerNorm):
    """``nn.LayerNorm(C)`` applied at every pixel of a ``(B, C, H, W)`` tensor.

    Subclasses ``nn.LayerNorm`` so the parameters are the usual ``weight``/``bias`` of shape (C,)
    (no weight decay through ``tools.lr_decay``, which exempts 1-D parameters), and it can be
    passed wherever a ``norm(num_channels) -> module`` factory is expected (e.g. Detectron2's
    ``get_norm``). Default eps 1e-6, as in the ViT.
    """

    def __init__(self, num_channels: int, eps: float = 1e-6):
        super().__init__(num_channels, eps=eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4:
            raise ValueError(f"LayerNorm2d expects a (B, C, H, W) tensor, "
                             f"got shape {tuple(x.shape)}")
        x = x.permute(0, 2, 3, 1)
        x = F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
        return x.permute(0, 3, 1, 2)
