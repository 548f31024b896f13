"""MAEViT as the ADE20K configs build it computes MMSeg's own MAE + Feature2Pyramid (the reference
that reproduces MAE's 48.1 mIoU), and checkpoints move between the two layouts.

The reference modules are built directly (mmcv-lite: no registry build of the whole segmentor),
at a small width and the configs' depths and out_indices, with every weight random and non-zero
(BEiT tables and layer-scale gammas included), so that any difference in function shows.
"""
from __future__ import annotations

import pytest
import torch
from mmengine.config import Config

import mae_transfer.segmentation.registration  # noqa: F401  (registers MAEViT, ...)
from mmseg.models.backbones.mae import MAE
from mmseg.models.necks.featurepyramid import Feature2Pyramid
from mae_transfer.segmentation.backbone import MAEViT
from mae_transfer.backbones.beit_layout import from_mmseg_beit
from mae_transfer.tools.checkpoints import read_checkpoint, write_checkpoint
from mae_transfer.tools.convert_checkpoint import main as convert_main

BN = dict(type="BN", requires_grad=True)
CONFIGS = {"B": ("segmentation/configs/upernet_mae-vit-b_8xb2-160k_ade20k-512x512.py", 12),
           "L": ("segmentation/configs/upernet_mae-vit-l_8xb2-160k_ade20k-512x512.py", 24)}
WIDTH, HEADS, SIZE = 32, 2, 64
#: Feature2Pyramid's parameters under the names of MAEViT's adapter.
NECK_NAMES = {"upsample_4x.": "adapter.ops.0.", "upsample_2x.": "adapter.ops.1."}


def _config_backbone(repo_root, name):
    """MAEViT exactly as the config sets it up, at a small width (same depth, out_indices)."""
    path, depth = CONFIGS[name]
    cfg = Config.fromfile(str(repo_root / path)).model.backbone.to_dict()
    for key in ("type", "_delete_"):
        cfg.pop(key, None)
    cfg.update(arch="custom", img_size=SIZE, patch_size=16, embed_dim=WIDTH, depth=depth,
               num_heads=HEADS, norm_cfg=BN)
    return MAEViT(**cfg).eval(), cfg


def _reference(cfg):
    """MMSeg's MAE + Feature2Pyramid as MMSeg's MAE ADE20K config builds them (small width)."""
    torch.manual_seed(0)
    mae = MAE(img_size=SIZE, patch_size=16, embed_dims=WIDTH, num_layers=cfg["depth"],
              num_heads=HEADS, mlp_ratio=4, out_indices=list(cfg["out_indices"]),
              drop_path_rate=cfg["drop_path_rate"], init_values=1.0,
              norm_cfg=dict(type="LN", eps=1e-6), final_norm=False)
    neck = Feature2Pyramid(embed_dim=WIDTH, rescales=[4, 2, 1, 0.5], norm_cfg=BN)
    with torch.no_grad():
        for module in (mae, neck):
            for p in module.parameters():
                p.normal_(0.0, 0.2)
            for name, buf in module.named_buffers():
                if name.endswith("running_mean"):
                    buf.normal_()
                elif name.endswith("running_var"):
                    buf.uniform_(0.5, 2.0)
    mae.eval()  # (BEiT.train returns None: no chaining)
    neck.eval()
    return mae, neck


def _neck_state(neck):
    out = {}
    for k, v in neck.state_dict().items():
        for src, dst in NECK_NAMES.items():
            if k.startswith(src):
                out[dst + k[len(src):]] = v
    return out


def _assert_same_maps(ours, theirs):
    assert len(ours) == len(theirs) == 4
    for a, b in zip(ours, theirs):
        assert a.shape == b.shape
        rel = (a - b).abs().max() / b.abs().max()
        assert rel < 1e-5, rel


@pytest.mark.parametrize("name", ["B", "L"])
def test_config_backbone_computes_mmseg_mae_and_feature2pyramid(repo_root, name):
    model, cfg = _config_backbone(repo_root, name)
    assert cfg["rel_pos_type"] == "beit" and cfg["layer_scale_init"] == 1.0
    mae, neck = _reference(cfg)
    encoder, _ = from_mmseg_beit(mae.state_dict())
    missing, unexpected = model.load_state_dict({**encoder, **_neck_state(neck)}, strict=False)
    assert missing == [] and unexpected == []
    assert model.blocks[0].gamma_1.abs().min() > 0  # random non-zero gammas and tables
    assert model.blocks[0].attn.relative_position_bias_table.abs().min() > 0
    x = torch.randn(2, 3, SIZE, SIZE)
    with torch.no_grad():
        theirs = neck(mae(x))
        ours = model(x)
        _assert_same_maps(ours, theirs)
        model.set_fused_attn(False)  # the explicit softmax path computes the same
        _assert_same_maps(model(x), theirs)


def test_mmseg_mae_segmentor_checkpoint_loads_through_init_weights(repo_root, tmp_path):
    """A stock MMSeg MAE segmentor file fills every ViT tensor of MAEViT (was: none of them)."""
    model, cfg = _config_backbone(repo_root, "B")
    mae, neck = _reference(cfg)
    state = {f"backbone.{k}": v for k, v in mae.state_dict().items()}
    state.update({f"neck.{k}": v for k, v in neck.state_dict().items()},
                 **{"decode_head.conv_seg.weight": torch.zeros(150, 32, 1, 1)})
    torch.save({"state_dict": state, "meta": {}}, tmp_path / "iter_160000.pth")
    model.pretrained = str(tmp_path / "iter_160000.pth")
    model.init_weights()
    report = model.load_report
    assert report.missing_keys == [] and report.unexpected_keys == []
    assert sum(k.endswith("relative_position_index") for k in report.dropped_keys) == 12
    with torch.no_grad():
        x = torch.randn(1, 3, SIZE, SIZE)
        ours = model.forward_maps(x, model.out_indices)
        theirs = mae(x)
    for a, b in zip(ours, theirs):
        assert (a - b).abs().max() / b.abs().max() < 1e-5


def test_convert_to_mmseg_mae_loads_into_mmseg_mae_with_no_missing_keys(repo_root, tmp_path):
    model, cfg = _config_backbone(repo_root, "B")
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.2)
    vit_state = {k: v for k, v in model.state_dict().items() if not k.startswith("adapter.")}
    src = write_checkpoint(vit_state, tmp_path / "seg_vit.safetensors",
                           meta={"img_size": [SIZE, SIZE], "patch_size": [16, 16]})
    dst = tmp_path / "mae_mmseg.pth"
    assert convert_main([str(src), str(dst), "--to", "mmseg-mae"]) == 0
    mae, _ = _reference(cfg)
    file_state = torch.load(dst, weights_only=True)["state_dict"]
    mae.load_state_dict(file_state, strict=True)  # no missing, no unexpected key
    # and MMSeg's own pretrained path (init_cfg) reads the same file into the same function
    fresh = MAE(img_size=SIZE, patch_size=16, embed_dims=WIDTH, num_layers=12, num_heads=HEADS,
                out_indices=[3, 5, 7, 11], init_values=1.0, norm_cfg=dict(type="LN", eps=1e-6),
                init_cfg=dict(type="Pretrained", checkpoint=str(dst)))
    fresh.init_weights()
    fresh.eval()
    x = torch.randn(1, 3, SIZE, SIZE)
    with torch.no_grad():
        ours = model.forward_maps(x, model.out_indices)
        for ref in (mae, fresh):
            for a, b in zip(ours, ref(x)):
                assert (a - b).abs().max() / b.abs().max() < 1e-5
    assert convert_main([str(dst), str(tmp_path / "back.safetensors"), "--to", "ours"]) == 0
    again, _ = read_checkpoint(tmp_path / "back.safetensors")
    assert again.keys() == vit_state.keys()
    assert all(torch.equal(again[k], v) for k, v in vit_state.items())


def test_table_resize_at_load_is_mmseg_beits(monkeypatch, tmp_path):
    """A 4x4-grid MMSeg MAE table into an 8x8 model: MMSeg's own resize_rel_pos_embed result.

    MMSeg calls SciPy's interp2d, removed in SciPy 1.14 (this machine has a newer SciPy), so
    its function runs here with interp2d restored as the spline interp2d computed (cubic, s=0).
    That keeps MMSeg's own choice of source and target offsets under test.
    """
    from scipy.interpolate import RectBivariateSpline

    from mmseg.models.backbones import beit as mmseg_beit

    def interp2d(x, y, z, kind):
        assert kind == "cubic"
        spline = RectBivariateSpline(y, x, z, kx=3, ky=3, s=0)
        return lambda new_x, new_y: spline(new_y, new_x)

    monkeypatch.setattr(mmseg_beit.interpolate, "interp2d", interp2d, raising=False)
    torch.manual_seed(0)
    small = MAE(img_size=64, patch_size=16, embed_dims=WIDTH, num_layers=2, num_heads=HEADS,
                init_values=1.0, norm_cfg=dict(type="LN", eps=1e-6))
    with torch.no_grad():
        for p in small.parameters():
            p.normal_()
    big = MAE(img_size=128, patch_size=16, embed_dims=WIDTH, num_layers=2, num_heads=HEADS,
              init_values=1.0, norm_cfg=dict(type="LN", eps=1e-6))
    expected = big.resize_rel_pos_embed({k: v.clone() for k, v in small.state_dict().items()})
    path = tmp_path / "mae_64px.pth"
    torch.save({"state_dict": small.state_dict()}, path)
    model = MAEViT("custom", img_size=128, patch_size=16, embed_dim=WIDTH, depth=2,
                   num_heads=HEADS, rel_pos_type="beit", layer_scale_init=1.0, norm_cfg=BN,
                   out_indices=(0, 0, 1, 1), pretrained=str(path))
    model.init_weights()
    for i in range(2):
        ours = model.blocks[i].attn.relative_position_bias_table
        theirs = expected[f"layers.{i}.attn.relative_position_bias_table"]
        assert ours.shape == theirs.shape == (15 * 15 + 3, HEADS)
        assert torch.allclose(ours, theirs, atol=1e-5)
    assert "blocks.0.attn.relative_position_bias_table" in model.load_report.resized_keys


def test_beit_qv_bias_checkpoint_computes_mmseg_beit():
    """MMSeg's BEiT keeps q and v biases apart (k has none); folded into qkv.bias, same function."""
    from mmseg.models.backbones.beit import BEiT

    torch.manual_seed(0)
    ref = BEiT(img_size=64, patch_size=16, embed_dims=WIDTH, num_layers=2, num_heads=HEADS,
               qv_bias=True, init_values=0.1, out_indices=[0, 1],
               norm_cfg=dict(type="LN", eps=1e-6))
    with torch.no_grad():
        for p in ref.parameters():
            p.normal_(0.0, 0.2)
    ref.eval()
    assert "layers.0.attn.q_bias" in ref.state_dict()
    encoder, dropped = from_mmseg_beit(ref.state_dict())
    assert "blocks.0.attn.qkv.bias" in encoder and not any("q_bias" in k for k in encoder)
    model = MAEViT("custom", img_size=64, patch_size=16, embed_dim=WIDTH, depth=2,
                   num_heads=HEADS, rel_pos_type="beit", layer_scale_init=0.1, norm_cfg=BN,
                   out_indices=(0, 0, 1, 1)).eval()
    missing, unexpected = model.load_state_dict(encoder, strict=False)
    assert unexpected == []
    assert [k for k in missing if not k.startswith("adapter.")] == ["pos_embed"]  # BEiT has none
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        # BEiT adds no pos_embed: ours must be zero for the same function
        model.pos_embed.zero_()
        ours, theirs = model.forward_maps(x, [0, 1]), ref(x)
    for a, b in zip(ours, theirs):
        assert (a - b).abs().max() / b.abs().max() < 1e-5
