"""ViTDet's square padding through the whole detector, on the installed Detectron2 (issue #10.1).

ViTDet zero-pads every normalised batch to 1024x1024 (bottom / right) and keeps the real image
sizes; Detectron2 v0.6 ignores ``padding_constraints`` and would hand the ViT a non-square grid.
The tiny CPU config pads to 128x128, so a 96x128 image must reach the ViT as 128x128.
"""
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from detectron2.config import LazyConfig, instantiate
from detectron2.modeling.postprocessing import detector_postprocess
from detectron2.structures import Boxes, ImageList, Instances, PolygonMasks
from detectron2.utils.events import EventStorage

from mae_transfer.detection.rcnn import ViTDetRCNN, pad_to_square

TINY = Path(__file__).resolve().parents[2] / "detection" / "configs" / "mask_rcnn_vit_mini_cpu.py"
SQUARE = 128


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    model = instantiate(LazyConfig.load(str(TINY)).model).eval()
    model.roi_heads.box_predictor.test_score_thresh = 0.0  # keep every detection
    return model


def _record_calls(module, store):
    """Keep the inputs and outputs of every forward of ``module`` in ``store``."""
    return module.register_forward_hook(lambda m, args, out: store.append((args, out)))


def _image(height, width, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (3, height, width), dtype=torch.uint8, generator=g)


def test_non_square_test_image_reaches_the_vit_as_the_zero_padded_square(model):
    assert isinstance(model, ViTDetRCNN)
    assert model.backbone.padding_constraints["square_size"] == SQUARE
    image = _image(96, 128)
    backbone_calls, rpn_calls = [], []
    hooks = [_record_calls(model.backbone, backbone_calls),
             _record_calls(model.proposal_generator, rpn_calls)]
    try:
        with torch.no_grad():
            out = model([{"image": image, "height": 192, "width": 256}])[0]["instances"]
    finally:
        for h in hooks:
            h.remove()
    (vit_input,), features = backbone_calls[0]
    assert vit_input.shape == (1, 3, SQUARE, SQUARE)
    # The image padded by hand: normalised, then zeros below it (ViTDet's padding).
    normalised = (image.float() - model.pixel_mean) / model.pixel_std
    by_hand = F.pad(normalised, (0, 0, 0, SQUARE - 96))[None]
    assert torch.equal(vit_input, by_hand)
    with torch.no_grad():
        expected = model.backbone(by_hand)
        unpadded = model.backbone(normalised[None])
    for name, level in expected.items():
        assert torch.allclose(features[name], level, atol=1e-6), name
    # ... which is not what the ViT computes on the bare 96x128 grid (the interpolated
    # position embedding and rel-pos tables give other features even inside the image).
    p4 = expected["p4"][..., :96 // 16, :]
    assert (unpadded["p4"] - p4).abs().max() > 0.05 * p4.abs().max()

    # Proposals and predictions live in the image, not in the padded square.
    images_seen = rpn_calls[0][0][0]
    assert images_seen.image_sizes == [(96, 128)] and images_seen.tensor.shape[-2:] == (128, 128)
    assert out.image_size == (192, 256) and len(out) > 0
    assert out.pred_masks.shape[-2:] == (192, 256)
    boxes = out.pred_boxes.tensor
    assert boxes[:, 0::2].min() >= 0 and boxes[:, 2].max() <= 256
    assert boxes[:, 1::2].min() >= 0 and boxes[:, 3].max() <= 192
    # Same numbers as running the heads by hand on the padded batch with the real image size.
    with torch.no_grad():
        padded = ImageList(by_hand, [(96, 128)])
        proposals, _ = model.proposal_generator(padded, expected, None)
        results, _ = model.roi_heads(padded, expected, proposals, None)
        manual = detector_postprocess(results[0], 192, 256)
    assert torch.allclose(manual.pred_boxes.tensor, boxes, atol=1e-4)
    assert torch.equal(manual.pred_classes, out.pred_classes)


def test_training_batches_are_padded_to_the_square_with_their_real_sizes(model):
    model.train()
    batch = []
    for k, (h, w) in enumerate([(80, 128), (128, 64)]):
        boxes = torch.tensor([[8.0, 8.0, 40.0, 50.0]])
        inst = Instances((h, w), gt_boxes=Boxes(boxes), gt_classes=torch.tensor([1]),
                         gt_masks=PolygonMasks([[[8.0, 8.0, 40.0, 8.0, 40.0, 50.0, 8.0, 50.0]]]))
        batch.append({"image": _image(h, w, seed=k), "instances": inst})
    calls = []
    hook = _record_calls(model.proposal_generator, calls)
    try:
        with EventStorage(0):
            losses = model(batch)
    finally:
        hook.remove()
        model.eval()
    images = calls[0][0][0]
    assert images.tensor.shape == (2, 3, SQUARE, SQUARE)
    assert images.image_sizes == [(80, 128), (128, 64)]
    assert images.tensor[0, :, 80:].abs().max() == 0
    assert images.tensor[1, :, :, 64:].abs().max() == 0
    assert all(torch.isfinite(v) for v in losses.values())


def test_pad_to_square_leaves_an_already_square_batch_alone_and_never_crops():
    square = ImageList(torch.ones(1, 3, 128, 128), [(100, 128)])
    assert pad_to_square(square, {"square_size": 128}) is square  # e.g. Detectron2 >= 0.7
    assert pad_to_square(square, {"size_divisibility": 32}) is square  # no square asked for
    large = pad_to_square(ImageList(torch.ones(1, 3, 150, 100), [(150, 100)]),
                          {"square_size": 128, "size_divisibility": 32})
    assert large.tensor.shape[-2:] == (160, 160) and large.image_sizes == [(150, 100)]
    assert large.tensor[..., 150:, :].abs().max() == 0 and large.tensor[..., :150, :100].min() == 1
