"""The shared ViT as a Detectron2 ``Backbone``: ``net`` (the ViT) + a simple feature pyramid.

Thin on purpose: the ViT is ``backbones.build_vit(...)`` (held as ``self.net``, so its parameters
are named ``backbone.net.blocks.{i}...`` inside a detector, the Detectron2 checkpoint format of
``tools.checkpoints``) and the pyramid is ``backbones.feature_pyramid.SimpleFeaturePyramid``
(``backbone.pyramid.*``). This class only adds what Detectron2 asks of a backbone: named outputs
``p2``..``p6`` with their strides and channels, and how to pad input batches.
"""
from __future__ import annotations

import math
from typing import Callable, Dict, Optional, Sequence

import torch
import torch.nn as nn

from mae_transfer.detection import compat

compat.setup()  # Detectron2 v0.6 cannot be imported without it (no compiled _C, Image.LINEAR)
from detectron2.layers import ShapeSpec  # noqa: E402
from detectron2.modeling import Backbone  # noqa: E402

from mae_transfer.backbones.feature_pyramid import SimpleFeaturePyramid  # noqa: E402
from mae_transfer.backbones.layers import LayerNorm2d, pyramid_scales  # noqa: E402
from mae_transfer.backbones.vit import VisionTransformer  # noqa: E402


class ViTDetBackbone(Backbone):
    """ViT + simple feature pyramid, with outputs ``p{log2(stride)}`` (ViTDet: p2..p6).

    ``scale_factors``: the pyramid's factors on the ViT's map; ``None`` (default) gives strides 4,
    8, 16, 32 for the ViT's patch size (``backbones.layers.pyramid_scales``: ViTDet's 4, 2, 1, 0.5
    for patch 16; 2, 1, 0.5, 0.25 for patch 8), so the usual p2..p6 names and the RPN / ROI
    configs hold for every patch size.
    ``square_pad`` (e.g. 1024): pad every batch to a square of that size, as ViTDet does, so the
    ViT always sees the grid it trained on. Declared as ``padding_constraints["square_size"]``;
    Detectron2 versions with ``padding_constraints`` honour it themselves, and
    ``detection.rcnn.ViTDetRCNN`` applies it where Detectron2 does not (v0.6).
    """

    def __init__(self, net: VisionTransformer, out_channels: int = 256,
                 scale_factors: Optional[Sequence[float]] = None, num_extra_levels: int = 1,
                 norm_layer: Callable[[int], nn.Module] = LayerNorm2d, square_pad: int = 0):
        super().__init__()
        patch_h, patch_w = net.patch_size
        if patch_h != patch_w or patch_h & (patch_h - 1):
            raise ValueError(
                f"the ViT's patch size {net.patch_size} gives non power-of-2 pyramid strides, "
                f"which Detectron2's ROI poolers cannot use; build it with a power-of-2 "
                f"patch size such as 16 or 8 (patch-14 checkpoints are resized when loaded)")
        if scale_factors is None:
            scale_factors = pyramid_scales(patch_h)
        self.net = net
        self.pyramid = SimpleFeaturePyramid(net.embed_dim, out_channels, scale_factors,
                                            num_extra_levels, norm_layer)
        strides = self.pyramid.strides(patch_h)
        self._out_features = [f"p{int(math.log2(s))}" for s in strides]
        self._out_feature_strides = dict(zip(self._out_features, strides))
        self._out_feature_channels = {name: out_channels for name in self._out_features}
        # The coarsest pyramid level (not the extra ones, which round up) must divide the input.
        self._size_divisibility = strides[len(scale_factors) - 1]
        self._square_pad = int(square_pad)

    def forward(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        maps = self.pyramid(self.net.forward_maps(x)[0])
        return dict(zip(self._out_features, maps))

    @property
    def size_divisibility(self) -> int:
        return self._size_divisibility

    @property
    def padding_constraints(self) -> Dict[str, int]:
        constraints = {"size_divisibility": self._size_divisibility}
        if self._square_pad:
            constraints["square_size"] = self._square_pad
        return constraints

    def output_shape(self) -> Dict[str, ShapeSpec]:
        return {name: ShapeSpec(channels=self._out_feature_channels[name],
                                stride=self._out_feature_strides[name])
                for name in self._out_features}
