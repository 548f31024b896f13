"""tools.lr_decay.param_groups: exact lr scale and weight decay for every parameter."""
import pytest
import torch.nn as nn

from mae_transfer.backbones import build_vit
from mae_transfer.tools.lr_decay import layer_id, param_groups


def _expected(name, param, num_layers, decay, wd):
    """The rule of docs/backbone.md ("Layer-wise lr decay"), written out independently of the
    implementation."""
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


# ------------------------------------------------------------------ weight-decay policies
class TinyDetector(nn.Module):
    """One-block ViT with rel-pos inside a 'backbone.net', a channel-LN pyramid conv and a BN head."""

    def __init__(self):
        super().__init__()
        from mae_transfer.backbones.layers import LayerNorm2d

        self.backbone = nn.Module()
        self.backbone.net = build_vit("custom", img_size=32, patch_size=16, embed_dim=8, depth=1,
                                      num_heads=2, use_rel_pos=True, use_cls_token=True)
        self.backbone.pyramid = nn.Sequential(nn.Conv2d(8, 4, 1), LayerNorm2d(4))
        self.head = nn.Sequential(nn.Conv2d(4, 4, 3), nn.BatchNorm2d(4), nn.Linear(4, 2))


VIT = "backbone.net."
VIT_LN = {f"{VIT}{n}.{p}" for n in ("blocks.0.norm1", "blocks.0.norm2", "norm")
          for p in ("weight", "bias")}
BIASES = {f"{VIT}{n}.bias" for n in ("patch_embed.proj", "blocks.0.attn.qkv",
                                      "blocks.0.attn.proj", "blocks.0.mlp.fc1",
                                      "blocks.0.mlp.fc2")} | {"backbone.pyramid.0.bias",
                                                              "head.0.bias", "head.2.bias"}
CHANNEL_LN = {"backbone.pyramid.1.weight", "backbone.pyramid.1.bias"}
BN = {"head.1.weight", "head.1.bias"}
REL_POS = {f"{VIT}blocks.0.attn.rel_pos_h", f"{VIT}blocks.0.attn.rel_pos_w"}
TOKENS = {f"{VIT}cls_token", f"{VIT}pos_embed"}

EXPECTED_EXEMPT = {
    # MAE/BEiT fine-tuning: every 1-D parameter, tokens, pos_embed, rel-pos tables.
    "mae_finetune": VIT_LN | BIASES | CHANNEL_LN | BN | REL_POS | TOKENS,
    # ViTDet B/L: torch norm modules (the ViT's nn.LayerNorm, BatchNorm) and pos_embed only.
    "vitdet": VIT_LN | BN | {f"{VIT}pos_embed"},
    "vitdet_h": set(),
    # MMSeg MAE / timm add_weight_decay: 1-D and biases; tokens and rel-pos tables decayed.
    "mmseg_mae": VIT_LN | BIASES | CHANNEL_LN | BN,
    "mae_pretrain": VIT_LN | BIASES | CHANNEL_LN | BN,
}


@pytest.mark.parametrize("policy", sorted(EXPECTED_EXEMPT))
def test_weight_decay_policy_exempts_exactly_the_reference_parameters(policy):
    from mae_transfer.tools.lr_decay import WD_POLICIES

    assert set(WD_POLICIES) == set(EXPECTED_EXEMPT)
    model = TinyDetector()
    groups = param_groups(model, weight_decay=0.1, layer_decay=0.7, wd_policy=policy)
    wd = {n: g["weight_decay"] for g in groups for n in g["param_names"]}
    assert set(wd) == {n for n, _ in model.named_parameters()}
    exempt = {n for n, v in wd.items() if v == 0.0}
    assert exempt == EXPECTED_EXEMPT[policy]
    assert all(v == 0.1 for n, v in wd.items() if n not in exempt)


def test_unknown_weight_decay_policy_is_an_error():
    with pytest.raises(ValueError, match="unknown wd_policy 'vitdet_x'"):
        param_groups(TinyDetector(), wd_policy="vitdet_x")


def test_mae_pretrain_policy_decays_the_tokens_as_official_mae():
    from mae_transfer.pretrain.model import build_mae

    model = build_mae("mae_vit_mini_patch16", img_size=32)
    groups = param_groups(model, weight_decay=0.05, layer_decay=1.0, wd_policy="mae_pretrain")
    wd = {n: g["weight_decay"] for g in groups for n in g["param_names"]}
    assert wd["cls_token"] == 0.05 and wd["mask_token"] == 0.05
    assert "pos_embed" not in wd and "decoder_pos_embed" not in wd  # frozen sin-cos tables
    assert wd["blocks.0.norm1.weight"] == 0.0 and wd["decoder_embed.bias"] == 0.0
    assert wd["decoder_blocks.0.attn.qkv.weight"] == 0.05
