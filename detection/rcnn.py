"""Detectron2's ``GeneralizedRCNN`` that pads every batch to the backbone's square, on any version.

ViTDet pads each batch, after normalisation, with zeros at the bottom / right to a 1024x1024
square (``Backbone.padding_constraints["square_size"]``), in training and at test time, while
``ImageList.image_sizes`` keep each image's real size (so proposals are clipped to the image,
not to the square). Detectron2 releases before ``padding_constraints`` (v0.6, the one that
installs from the registry) only pad to ``size_divisibility``: a 1024x768 test image then reaches
the ViT as 1024x768, its position embedding and the global blocks' relative-position tables are
interpolated to a grid the model never trained on, and the features (so the AP) change.

``ViTDetRCNN`` checks the batch that the installed ``preprocess_image`` made and, when it is not
yet the square, pads it as ViTDet does. Where Detectron2 already honours the constraint the batch
arrives square and nothing happens: no version test, the result is the same on both.
"""
from __future__ import annotations

from typing import Dict, List

import torch
import torch.nn.functional as F

from mae_transfer.detection import compat

compat.setup()  # Detectron2 v0.6 cannot be imported without it (no compiled _C, Image.LINEAR)
from detectron2.modeling.meta_arch import GeneralizedRCNN  # noqa: E402
from detectron2.structures import ImageList  # noqa: E402


def square_side(height: int, width: int, square_size: int, size_divisibility: int = 0) -> int:
    """Side of the square a ``height x width`` batch is padded to.

    ``square_size``, or, for a batch larger than it (a test size the config was not written
    for), the batch's longer side rounded up to ``size_divisibility``: padding never crops.
    """
    side = max(int(square_size), int(height), int(width))
    if size_divisibility > 1:
        side = -(-side // size_divisibility) * size_divisibility
    return side


def pad_to_square(images: ImageList, padding_constraints: Dict[str, int]) -> ImageList:
    """``images`` with its tensor zero-padded (bottom / right) to the constrained square.

    Returns ``images`` itself when there is no ``square_size`` or the tensor already is that
    square; ``image_sizes`` are never changed.
    """
    square = int(padding_constraints.get("square_size", 0) or 0)
    if square <= 0:
        return images
    height, width = images.tensor.shape[-2:]
    side = square_side(height, width, square, padding_constraints.get("size_divisibility", 0))
    if (height, width) == (side, side):
        return images
    tensor = F.pad(images.tensor, (0, side - width, 0, side - height), value=0.0)
    return ImageList(tensor, images.image_sizes)


class ViTDetRCNN(GeneralizedRCNN):
    """``GeneralizedRCNN`` whose input batches always honour ``backbone.padding_constraints``."""

    def preprocess_image(self, batched_inputs: List[Dict[str, torch.Tensor]]) -> ImageList:
        images = super().preprocess_image(batched_inputs)
        constraints = getattr(self.backbone, "padding_constraints", None) or {}
        return pad_to_square(images, constraints)
