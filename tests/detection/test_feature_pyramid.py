"""Simple feature pyramid + LayerNorm2d (pure torch) and the Detectron2 backbone around them."""
import math

import pytest
import torch
import torch.nn.functional as F

from mae_transfer.backbones import build_vit
from mae_transfer.backbones.feature_pyramid import SimpleFeaturePyramid
from mae_transfer.backbones.layers import LayerNorm2d


def test_layernorm2d_normalises_each_pixel_over_channels():
    torch.manual_seed(0)
    norm = LayerNorm2d(6)
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5)
        norm.bias.uniform_(-1, 1)
    x = torch.randn(2, 6, 5, 7) * 3 + 1
    mean = x.mean(dim=1, keepdim=True)
    var = x.var(dim=1, unbiased=False, keepdim=True)
    expected = (x - mean) / torch.sqrt(var + 1e-6) * norm.weight[:, None, None] \
        + norm.bias[:, None, None]
    assert torch.allclose(norm(x), expected, atol=1e-5)
    with pytest.raises(ValueError, match=r"\(B, C, H, W\)"):
        norm(torch.randn(2, 6))


@pytest.mark.parametrize("grid", [(4, 4), (6, 8), (5, 7), (3, 5)])
def test_pyramid_shapes_for_several_map_sizes(grid):
    h, w = grid
    pyramid = SimpleFeaturePyramid(64, out_channels=32)
    outs = pyramid(torch.randn(2, 64, h, w))
    pooled = (h // 2, w // 2)
    expected = [(4 * h, 4 * w), (2 * h, 2 * w), (h, w), pooled,
                (math.ceil(pooled[0] / 2), math.ceil(pooled[1] / 2))]
    assert [tuple(o.shape[-2:]) for o in outs] == expected
    assert all(o.shape[:2] == (2, 32) for o in outs)
    assert pyramid.strides(16) == [4, 8, 16, 32, 64]


def test_pyramid_upsampling_halves_channels_and_rejects_non_power_of_two_scales():
    pyramid = SimpleFeaturePyramid(64, out_channels=16, scale_factors=(4.0, 1.0, 0.25),
                                   num_extra_levels=0)
    deconvs = [m for m in pyramid.levels[0][0] if isinstance(m, torch.nn.ConvTranspose2d)]
    assert [(d.in_channels, d.out_channels) for d in deconvs] == [(64, 32), (32, 16)]
    assert pyramid.strides(16) == [4, 16, 64]
    assert [tuple(o.shape[-2:]) for o in pyramid(torch.randn(1, 64, 8, 8))] == \
        [(32, 32), (8, 8), (2, 2)]
    with pytest.raises(ValueError, match="power of 2"):
        SimpleFeaturePyramid(64, scale_factors=(3.0, 1.0))
    with pytest.raises(ValueError, match="decreasing"):
        SimpleFeaturePyramid(64, scale_factors=(1.0, 2.0))


def _backbone(name="vit_mini_patch16", **net_kw):
    from mae_transfer.detection.backbone import ViTDetBackbone

    net = build_vit(name, img_size=64, window_size=2, global_blocks=[3],
                    use_rel_pos=True, use_cls_token=False, final_norm=False, **net_kw)
    return ViTDetBackbone(net, out_channels=16, square_pad=128)


@pytest.mark.parametrize("size", [(64, 64), (96, 128), (160, 64)])
def test_backbone_outputs_match_its_declared_shapes(size):
    backbone = _backbone().eval()
    shapes = backbone.output_shape()
    assert {k: v.stride for k, v in shapes.items()} == {"p2": 4, "p3": 8, "p4": 16, "p5": 32,
                                                       "p6": 64}
    assert backbone.size_divisibility == 32
    assert backbone.padding_constraints == {"size_divisibility": 32, "square_size": 128}
    with torch.no_grad():
        feats = backbone(torch.randn(1, 3, *size))
    assert list(feats) == ["p2", "p3", "p4", "p5", "p6"]
    for name, f in feats.items():
        stride = shapes[name].stride
        assert f.shape == (1, shapes[name].channels,
                           math.ceil(size[0] / stride), math.ceil(size[1] / stride)), name


def test_backbone_p4_is_built_from_the_vits_last_map():
    """Identity branch: p4 = conv3x3(conv1x1(last ViT map)) with their LayerNorms, nothing else."""
    backbone = _backbone().eval()
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        vit_map = backbone.net.forward_maps(x)[0]
        expected = backbone.pyramid.levels[2][2](backbone.pyramid.levels[2][1](vit_map))
        assert torch.allclose(backbone(x)["p4"], expected, atol=1e-6)
        assert torch.equal(backbone(x)["p6"], F.max_pool2d(backbone(x)["p5"], 1, 2))


def test_backbone_refuses_patch_sizes_that_give_fractional_strides():
    with pytest.raises(ValueError, match="power-of-2 patch size"):
        _backbone(patch_size=14)


def test_pyramid_scales_reach_strides_4_to_32_for_any_power_of_2_patch():
    from mae_transfer.backbones.feature_pyramid import VITDET_SCALES
    from mae_transfer.backbones.layers import pyramid_scales

    assert pyramid_scales(16) == VITDET_SCALES == (4.0, 2.0, 1.0, 0.5)
    assert pyramid_scales(8) == (2.0, 1.0, 0.5, 0.25)
    assert pyramid_scales((32, 32)) == (8.0, 4.0, 2.0, 1.0)
    with pytest.raises(ValueError, match="not a power of 2"):
        pyramid_scales(14)


def test_patch8_backbone_keeps_the_p2_to_p6_names_and_strides():
    """With a patch-8 ViT the pyramid upsamples x2 and pools twice, so the RPN / ROI configs
    written for ViTDet (p2..p6, strides 4..64) hold unchanged."""
    backbone = _backbone("vit_mini_patch8").eval()
    assert backbone.pyramid.scale_factors == (2.0, 1.0, 0.5, 0.25)
    assert {k: v.stride for k, v in backbone.output_shape().items()} == {
        "p2": 4, "p3": 8, "p4": 16, "p5": 32, "p6": 64}
    with torch.no_grad():
        feats = backbone(torch.randn(1, 3, 64, 96))
    assert [tuple(f.shape[-2:]) for f in feats.values()] == [(16, 24), (8, 12), (4, 6), (2, 3),
                                                            (1, 2)]


def test_pyramid_convs_start_from_torchs_default_init_as_vitdets():
    """ViTDet's SimpleFeaturePyramid leaves its convs at torch's default init (no Caffe2 fill)."""
    torch.manual_seed(0)
    pyramid = SimpleFeaturePyramid(64, out_channels=32, scale_factors=(1.0,), num_extra_levels=0)
    torch.manual_seed(0)
    reference = [torch.nn.Conv2d(64, 32, 1, bias=False), torch.nn.Conv2d(32, 32, 3, padding=1,
                                                                          bias=False)]
    ours = [pyramid.levels[0][1][0], pyramid.levels[0][2][0]]
    for conv, ref in zip(ours, reference):
        assert torch.equal(conv.weight, ref.weight)
