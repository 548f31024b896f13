"""tools.lr_decay.param_groups: exact lr scale and weight decay for every parameter."""
import pytest
import torch.nn as nn

from backbones import build_vit
from tools.lr_decay import layer_id, param_groups


def _expected(name, param, num_layers, decay, wd):
    """The DESIGN.md rule, written out independently of the implementation."""
    last = name.split(".")[-1]
    if last in ("cls_token", "pos_embed", "mask_token") or ".patch_embed." in f".{name}.":
        lid = 0
    elif ".blocks." in f".{name}":
        lid = int(f".{name}".split(".blocks.")[1].split(".")[0]) + 1
    else:
        lid = num_layers + 1
    no_wd = param.ndim == 1 or last in ("cls_token", "pos_embed", "mask_token", "rel_pos_h",
                                         "rel_pos_w")
    return decay ** (num_layers + 1 - lid), 0.0 if no_wd else wd


class Wrapped(nn.Module):
    """A ViT deep inside a detector-like model, with a head after it."""

    def __init__(self, depth):
        super().__init__()
        self.backbone = nn.Module()
        self.backbone.net = build_vit("custom", img_size=32, patch_size=16, embed_dim=16,
                                      depth=depth, num_heads=2, use_rel_pos=True)
        self.head = nn.Sequential(nn.Conv2d(16, 4, 3), nn.LayerNorm(4))


@pytest.mark.parametrize("depth", [12, 2])
def test_every_parameter_gets_the_rule_scale_and_weight_decay(depth):
    model = Wrapped(depth)
    groups = param_groups(model, weight_decay=0.1, layer_decay=0.7, lr=1e-3)
    seen = {}
    for g in groups:
        assert g["lr"] == pytest.approx(1e-3 * g["lr_scale"])
        for name, p in zip(g["param_names"], g["params"]):
            seen[name] = (g["lr_scale"], g["weight_decay"])
    named = dict(model.named_parameters())
    assert set(seen) == set(named)
    for name, p in named.items():
        scale, wd = _expected(name, p, depth, 0.7, 0.1)
        assert seen[name][0] == pytest.approx(scale), name
        assert seen[name][1] == wd, name
    # spot checks of the rule's corners
    assert seen["backbone.net.pos_embed"] == (pytest.approx(0.7 ** (depth + 1)), 0.0)
    assert seen["backbone.net.patch_embed.proj.weight"] == (pytest.approx(0.7 ** (depth + 1)), 0.1)
    assert seen[f"backbone.net.blocks.{depth - 1}.attn.qkv.weight"] == (pytest.approx(0.7), 0.1)
    assert seen["backbone.net.blocks.0.attn.rel_pos_h"][1] == 0.0
    assert seen["head.0.weight"] == (1.0, 0.1)
    assert seen["head.0.bias"] == (1.0, 0.0)
    assert len(groups) == len({(layer_id(n, depth), w) for n, (_, w) in seen.items()})


def test_frozen_parameters_and_explicit_no_decay_names():
    model = build_vit("vit_mini_patch16", img_size=32)
    model.pos_embed.requires_grad_(False)
    groups = param_groups(model, weight_decay=0.05, layer_decay=1.0,
                          no_weight_decay=["blocks.0.attn.qkv.weight"])
    names = {n: g["weight_decay"] for g in groups for n in g["param_names"]}
    assert "pos_embed" not in names
    assert names["blocks.0.attn.qkv.weight"] == 0.0 and names["blocks.1.attn.qkv.weight"] == 0.05
    assert all(g["lr_scale"] == 1.0 for g in groups)


def test_mae_decoder_names_are_not_counted_as_encoder_blocks():
    assert layer_id("decoder_blocks.3.mlp.fc1.weight", 12) == 13
    assert layer_id("decoder_pos_embed", 12) == 13
    assert layer_id("mask_token", 12) == 0
    assert layer_id("backbone.net.blocks.11.norm1.weight", 12) == 12
