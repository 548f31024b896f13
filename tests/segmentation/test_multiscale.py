"""backbones.multiscale: the framework-free pyramid adapter (strides 4, 8, 16, 32 from stride 16)."""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from mae_transfer.backbones.multiscale import MultiScaleAdapter


def test_adapter_output_shapes_and_strides():
    adapter = MultiScaleAdapter(32)
    assert adapter.strides(16) == [4, 8, 16, 32]
    maps = [torch.randn(2, 32, 6, 10) for _ in range(4)]
    outs = adapter(maps)
    assert [tuple(o.shape) for o in outs] == [(2, 32, 24, 40), (2, 32, 12, 20), (2, 32, 6, 10),
                                              (2, 32, 3, 5)]


def test_adapter_ops_match_the_recipe():
    adapter = MultiScaleAdapter(8, norm_layer=nn.BatchNorm2d).eval()
    up4, up2, ident, down = adapter.ops
    assert [type(m) for m in up4] == [nn.ConvTranspose2d, nn.BatchNorm2d, nn.GELU,
                                      nn.ConvTranspose2d]
    assert [type(m) for m in up2] == [nn.ConvTranspose2d] and up2[0].stride == (2, 2)
    x = torch.randn(1, 8, 4, 4)
    outs = adapter([x, x, x, x])
    assert outs[2] is x  # identity: the stride-16 map itself
    assert torch.equal(outs[3], F.max_pool2d(x, 2))
    ref = up4[3](F.gelu(up4[1](up4[0](x))))
    assert torch.allclose(outs[0], ref)
    assert torch.allclose(outs[1], up2(x))


def test_adapter_rejects_wrong_number_of_maps_and_scales():
    adapter = MultiScaleAdapter(8)
    with pytest.raises(ValueError, match="resamples 4 maps"):
        adapter([torch.randn(1, 8, 4, 4)] * 3)
    with pytest.raises(ValueError, match="must be a power of 2, got 3"):
        MultiScaleAdapter(8, scales=(3,))


def test_adapter_norm_layer_is_configurable():
    adapter = MultiScaleAdapter(8, norm_layer=lambda c: nn.GroupNorm(1, c))
    assert isinstance(adapter.ops[0][1], nn.GroupNorm)
    assert MultiScaleAdapter(8, scales=(2, 1, 0.5, 0.25)).strides(16) == [8, 16, 32, 64]
