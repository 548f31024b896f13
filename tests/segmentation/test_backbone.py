"""MAEViT: the shared ViT as an MMSeg backbone (shapes, strides, names, pretrained loading)."""
from __future__ import annotations

import pytest
import torch
from timm.layers import resample_abs_pos_embed

import mae_transfer.segmentation.registration  # noqa: F401  (registers MAEViT, ...)
from mae_transfer.backbones import build_vit
from mae_transfer.segmentation.backbone import MAEViT, default_out_indices
from mae_transfer.tools.checkpoints import write_checkpoint
from mae_transfer.backbones.pos_embed import POS_EMBED_RESAMPLING

BN = dict(type="BN", requires_grad=True)


def mini(**kw):
    kw.setdefault("norm_cfg", BN)
    return MAEViT("vit_mini_patch16", img_size=64, **kw)


def test_default_out_indices_are_the_recipe_blocks():
    assert default_out_indices(12) == [3, 5, 7, 11]
    assert default_out_indices(24) == [7, 11, 15, 23]
    assert default_out_indices(4) == [0, 1, 2, 3]
    assert default_out_indices(32) == [10, 15, 20, 31]
    assert mini().out_indices == [0, 1, 2, 3]


@pytest.mark.parametrize("size", [(64, 64), (96, 128), (128, 48), (80, 80)])
def test_output_shapes_and_strides(size):
    model = mini().eval()
    h, w = size
    outs = model(torch.randn(2, 3, h, w))
    assert model.strides == [4, 8, 16, 32]
    grid = (h // 16, w // 16)
    expected = [(2, 64, grid[0] * 4, grid[1] * 4), (2, 64, grid[0] * 2, grid[1] * 2),
                (2, 64, grid[0], grid[1]), (2, 64, grid[0] // 2, grid[1] // 2)]
    assert [tuple(o.shape) for o in outs] == expected


def test_patch8_vit_gets_the_same_strides():
    model = MAEViT("vit_mini_patch8", img_size=64, norm_cfg=BN).eval()
    assert model.adapter.scales == (2.0, 1.0, 0.5, 0.25)
    assert model.strides == [4, 8, 16, 32]
    outs = model(torch.randn(1, 3, 64, 96))
    assert [tuple(o.shape[-2:]) for o in outs] == [(16, 24), (8, 12), (4, 6), (2, 3)]


def test_maps_are_the_vit_block_outputs():
    model = mini().eval()
    x = torch.randn(1, 3, 64, 64)
    vit_maps = model.forward_maps(x, [0, 1, 2, 3])
    outs = model(x)
    assert torch.equal(outs[2], vit_maps[2])  # identity branch = block 2's map
    assert torch.equal(outs[3], torch.nn.functional.max_pool2d(vit_maps[3], 2))


def test_parameter_names_match_the_mmseg_checkpoint_format():
    from mmengine.registry import init_default_scope
    from mmseg.registry import MODELS

    init_default_scope("mmseg")
    seg = MODELS.build(dict(
        type="EncoderDecoder", backbone=dict(type="MAEViT", arch="vit_mini_patch16",
                                             img_size=64, norm_cfg=BN),
        decode_head=dict(type="FCNHead", in_channels=64, in_index=3, channels=8, num_convs=1,
                         num_classes=3, norm_cfg=BN)))
    names = set(seg.state_dict())
    vit_names = {f"backbone.{k}" for k in build_vit("vit_mini_patch16", img_size=64,
                                                    use_rel_pos=True, final_norm=False
                                                    ).state_dict()}
    assert vit_names <= names
    assert "backbone.blocks.3.attn.qkv.weight" in names
    assert "backbone.blocks.0.attn.rel_pos_h" in names
    assert any(n.startswith("backbone.adapter.") for n in names)


def test_options_reach_the_vit():
    model = mini(drop_path_rate=0.2, use_rel_pos=False, window_size=2, global_blocks=[3])
    assert not hasattr(model.blocks[0].attn, "rel_pos_h")
    assert model.blocks[0].attn.window_size == 2 and model.blocks[3].attn.window_size == 0
    assert model.blocks[3].drop_path.drop_prob == pytest.approx(0.2)
    assert model.pos_embed.shape == (1, 1 + 16, 64)  # 64 px -> 4x4 grid
    with pytest.raises(ValueError, match="one block per scale"):
        mini(out_indices=(1, 2, 3))
    with pytest.raises(ValueError, match="outside the 4 blocks"):
        mini(out_indices=(0, 1, 2, 4))


def _check_loaded(model, state):
    """Every ViT tensor equals the checkpoint's (pos_embed: resized as load_pretrained does)."""
    own = model.state_dict()
    for k, v in state.items():
        if k == "pos_embed":
            ref = resample_abs_pos_embed(v, model.pretrain_grid, (14, 14), num_prefix_tokens=1,
                                         **POS_EMBED_RESAMPLING)
            assert torch.allclose(own[k], ref, atol=1e-6)
        elif k in own:
            assert torch.equal(own[k], v), k


def test_mae_pretraining_checkpoint_loads_without_missing_backbone_keys(mae_checkpoint):
    state = torch.load(mae_checkpoint, weights_only=True)["model"]
    model = mini(use_rel_pos=False, final_norm=True, pretrained=str(mae_checkpoint))
    model.init_weights()
    report = model.load_report
    assert report.missing_keys == []
    assert report.unexpected_keys == []
    assert set(report.dropped_keys) == {"mask_token", "decoder_embed.weight",
                                        "decoder_pos_embed", "decoder_blocks.0.norm1.weight"}
    assert report.resized_keys == ["pos_embed"]
    _check_loaded(model, {k: v for k, v in state.items() if not k.startswith(("decoder", "mask"))})


def test_recipe_backbone_only_lacks_the_new_rel_pos_tables(mae_checkpoint):
    """With the recipe's rel-pos bias and no final norm: the tables are new, the norm unused."""
    model = mini(init_cfg=dict(type="Pretrained", checkpoint=str(mae_checkpoint)))
    model.init_weights()
    report = model.load_report
    assert report.missing_keys and all(k.endswith(("rel_pos_h", "rel_pos_w"))
                                       for k in report.missing_keys)
    assert len(report.missing_keys) == 2 * 4
    assert sorted(report.unexpected_keys) == ["norm.bias", "norm.weight"]
    # the adapter is never reported: a pretraining file cannot hold it
    assert not any("adapter" in k for k in report.missing_keys)


@pytest.mark.parametrize("fmt,name", [("ours", "enc.safetensors"), ("mmseg", "seg.pth"),
                                      ("detectron2", "det.pth")])
def test_every_checkpoint_format_loads(tmp_path, mae_checkpoint, fmt, name):
    state = {k: v for k, v in torch.load(mae_checkpoint, weights_only=True)["model"].items()
             if not k.startswith(("decoder", "mask"))}
    path = write_checkpoint(state, tmp_path / name, fmt, meta={"img_size": [224, 224],
                                                               "patch_size": [16, 16]})
    model = mini(use_rel_pos=False, final_norm=True, pretrained=str(path))
    model.init_weights()
    assert model.load_report.missing_keys == [] and model.load_report.unexpected_keys == []
    _check_loaded(model, state)


def test_pretrained_given_twice_is_an_error(mae_checkpoint):
    with pytest.raises(ValueError, match="once"):
        mini(pretrained="a.pth", init_cfg=dict(type="Pretrained", checkpoint="b.pth"))
    with pytest.raises(ValueError, match="only init_cfg"):
        mini(init_cfg=dict(type="Kaiming"))


def test_checkpoints_written_by_pretrain_load_without_missing_keys(tmp_path):
    """pretrain/'s two outputs: the training checkpoint (full MAE) and the encoder export."""
    from mae_transfer.pretrain.checkpoint import atomic_save
    from mae_transfer.pretrain.model import build_mae

    torch.manual_seed(3)
    mae = build_mae("mae_vit_mini_patch16", img_size=64)
    with torch.no_grad():
        for p in mae.parameters():
            p.normal_()
    encoder = mae.encoder_state_dict()
    training = atomic_save({"model": mae.state_dict(), "epoch": 2, "global_step": 8},
                           tmp_path / "checkpoint-last.pth")
    export = write_checkpoint(encoder, tmp_path / "encoder.safetensors", "ours",
                              meta={"arch": "vit_mini_patch16", "img_size": [64, 64],
                                    "patch_size": [16, 16]})
    for path in (training, export):
        model = mini(use_rel_pos=False, final_norm=True, pretrained=str(path))
        model.init_weights()
        assert model.load_report.missing_keys == [], path.name
        assert model.load_report.unexpected_keys == [], path.name
        own = model.state_dict()
        assert all(torch.equal(own[k], v) for k, v in encoder.items())
