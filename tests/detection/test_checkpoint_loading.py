"""Initial weights for the detector: every ViT checkpoint format, whole detectors, patch resize."""
import logging
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from detectron2.config import LazyConfig, instantiate

from mae_transfer.backbones import build_vit, load_pretrained
from mae_transfer.pretrain.model import build_mae
from mae_transfer.detection.checkpointing import AtomicCheckpointer, load_init_checkpoint
from mae_transfer.tools.checkpoints import CheckpointError, write_checkpoint

TINY = Path(__file__).resolve().parents[2] / "detection" / "configs" / "mask_rcnn_vit_mini_cpu.py"


def detector(**net_overrides):
    cfg = LazyConfig.load(str(TINY))
    cfg.model.backbone.net.update(net_overrides)
    return instantiate(cfg.model)


def pretrained_encoder(seed=1):
    """An MAE-pretraining-shaped encoder (224 px grid, cls token, final norm), random weights."""
    torch.manual_seed(seed)
    return build_vit("vit_mini_patch16", img_size=224).state_dict()


def _backbone_keys(model):
    return {k[len("backbone.net."):] for k in model.state_dict() if k.startswith("backbone.net.")}


def test_mae_training_checkpoint_with_decoder_loads_with_no_missing_backbone_keys(tmp_path, caplog):
    encoder = pretrained_encoder()
    decoder = {"mask_token": torch.zeros(1, 1, 32), "decoder_embed.weight": torch.randn(32, 64),
               "decoder_pred.bias": torch.zeros(768)}
    path = tmp_path / "mae_checkpoint-799.pth"
    torch.save({"model": {**encoder, **decoder}, "epoch": 799}, path)
    model = detector(use_rel_pos=False)
    with caplog.at_level(logging.INFO, logger="mae_transfer"):
        report = load_init_checkpoint(model, str(path))
    assert report.missing_keys == []
    assert sorted(report.dropped_keys) == sorted(decoder)
    # what the detector's ViT does not use (no cls token, no final norm, as in ViTDet)
    assert sorted(report.unexpected_keys) == ["cls_token", "norm.bias", "norm.weight"]
    assert report.resized_keys == ["pos_embed"]
    state = model.state_dict()
    for key in ("blocks.3.mlp.fc2.weight", "patch_embed.proj.weight", "blocks.0.attn.qkv.bias"):
        assert torch.equal(state[f"backbone.net.{key}"], encoder[key])
    assert "0 missing keys []" in caplog.text and "unexpected keys ['cls_token'" in caplog.text


@pytest.mark.parametrize("fmt, name", [("ours", "enc.safetensors"), ("ours", "enc.pth"),
                                       ("timm", "enc.pth"), ("detectron2", "enc.pth"),
                                       ("mmseg", "enc.pth")])
def test_every_written_format_fills_every_pretrained_backbone_key(tmp_path, fmt, name):
    encoder = pretrained_encoder(seed=2)
    path = write_checkpoint(encoder, tmp_path / name, fmt, {"img_size": [224, 224],
                                                          "patch_size": [16, 16]})
    model = detector()  # the tiny config's ViT: relative position bias on
    report = load_init_checkpoint(model, str(path))
    # only the relative-position tables are new (zero: no bias at first, as in ViTDet)
    assert report.missing_keys and all(k.endswith(("rel_pos_h", "rel_pos_w"))
                                       for k in report.missing_keys)
    assert _backbone_keys(model) - set(report.missing_keys) <= set(encoder)
    assert all(model.state_dict()[f"backbone.net.{k}"].abs().sum() == 0
               for k in report.missing_keys)
    assert torch.equal(model.state_dict()["backbone.net.blocks.2.norm1.weight"],
                       encoder["blocks.2.norm1.weight"])


def test_whole_detector_checkpoint_loads_into_every_module(tmp_path):
    torch.manual_seed(3)
    trained = detector()
    AtomicCheckpointer(trained, str(tmp_path)).save("model_final", iteration=9)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last_checkpoint", "model_final.pth"]
    assert (tmp_path / "last_checkpoint").read_text() == "model_final.pth"
    saved = torch.load(tmp_path / "model_final.pth", weights_only=True)
    assert saved["iteration"] == 9
    torch.manual_seed(4)
    fresh = detector()
    report = load_init_checkpoint(fresh, str(tmp_path / "model_final.pth"))
    assert report.layout == "Detectron2 detector" and report.part == "all"
    assert report.missing_keys == report.unexpected_keys == []
    assert report.tensors == len(saved["model"])
    for key, value in trained.state_dict().items():
        assert torch.equal(fresh.state_dict()[key], value), key


def test_a_checkpoint_of_another_width_is_refused_in_one_line(tmp_path):
    other = build_vit("custom", img_size=64, patch_size=16, embed_dim=96, depth=4, num_heads=4)
    path = write_checkpoint(other.state_dict(), tmp_path / "wide.safetensors")
    with pytest.raises(CheckpointError, match="does not fit") as err:
        load_init_checkpoint(detector(), str(path))
    assert "\n" not in str(err.value)


def test_patch14_checkpoint_resizes_into_a_patch16_vit_preserving_tokens(tmp_path):
    """ViT-H recipe: MAE's 14x14 patch kernel -> 16x16 (PI-resize keeps the patch tokens)."""
    torch.manual_seed(5)
    src = build_vit("vit_mini_patch16", img_size=224, patch_size=14)
    path = write_checkpoint(src.state_dict(), tmp_path / "p14.safetensors", "ours",
                            {"img_size": [224, 224], "patch_size": [14, 14]})
    dst = build_vit("vit_mini_patch16", img_size=256, patch_size=16)
    report = load_pretrained(dst, path)
    assert "patch_embed.proj.weight" in report.resized_keys and not report.missing_keys
    patch = torch.randn(2, 3, 14, 14)
    upsampled = F.interpolate(patch, size=(16, 16), mode="bilinear", align_corners=False)
    old = F.conv2d(patch, src.patch_embed.proj.weight)
    new = F.conv2d(upsampled, dst.patch_embed.proj.weight)
    assert torch.allclose(old, new, atol=1e-4)


@pytest.mark.parametrize("state, layout", [
    ({"conv1.weight": torch.zeros(8, 3, 7, 7), "layer1.0.conv1.weight": torch.zeros(8, 8, 1, 1),
      "fc.weight": torch.zeros(10, 8)}, "a torchvision/timm classifier"),
    ({"backbone.bottom_up.stem.conv1.weight": torch.zeros(8, 3, 7, 7),
      "proposal_generator.rpn_head.conv.weight": torch.zeros(8, 8, 3, 3),
      "roi_heads.box_predictor.cls_score.weight": torch.zeros(81, 8)}, "a Detectron2 detector"),
])
def test_init_checkpoint_without_this_vit_stops_naming_its_layout(tmp_path, state, layout):
    """Before: the detector went on from random init with two warning lines."""
    path = tmp_path / "foreign.pth"
    torch.save({"model": state}, path)
    with pytest.raises(CheckpointError) as err:
        load_init_checkpoint(detector(), str(path))
    msg = str(err.value)
    assert "\n" not in msg and f"looks like {layout}" in msg
    assert "python tools/convert_checkpoint.py SRC DST --to ours" in msg


def test_init_checkpoint_with_beit_tables_is_refused_by_the_decomposed_detector(tmp_path):
    """An MMSeg MAE segmentation checkpoint (BEiT tables) cannot become ViTDet's rel-pos."""
    from mae_transfer.backbones.beit_layout import to_mmseg_beit

    beit = build_vit("vit_mini_patch16", img_size=64, use_rel_pos=True, rel_pos_type="beit",
                     layer_scale_init=1.0)
    path = tmp_path / "iter_160000.pth"
    torch.save({"state_dict": {f"backbone.{k}": v
                               for k, v in to_mmseg_beit(beit.state_dict()).items()}}, path)
    with pytest.raises(CheckpointError, match="rel_pos_type='beit'.*rel_pos_type='decomposed'"):
        load_init_checkpoint(detector(), str(path))


@pytest.mark.parametrize("whole_detector", [False, True])
def test_init_checkpoint_reads_the_file_once_through_the_one_reader(tmp_path, reader_reads, caplog,
                                                                   whole_detector):
    """A ViT-H file is 2.5 GB (a detector's more): one read, whatever the file holds; the log has
    the reader's summary line, as every caller's."""
    if whole_detector:
        torch.manual_seed(3)
        source = detector()
        path = tmp_path / "model_final.pth"
        torch.save({"model": source.state_dict()}, path)
    else:  # an MAE training checkpoint, decoder included
        torch.manual_seed(3)
        path = tmp_path / "checkpoint-9.pth"
        mae = build_mae("mae_vit_mini_patch16", img_size=64).state_dict()
        torch.save({"model": mae, "epoch": 9}, path)
    model = detector()
    with caplog.at_level(logging.INFO, logger="mae_transfer"):
        report = load_init_checkpoint(model, str(path))
    assert reader_reads["reader"] == reader_reads["file"] == [path]
    assert report.summary() in caplog.text and report.missing_pretrained == []
    assert report.layout == ("Detectron2 detector" if whole_detector
                             else "MAE with decoder (decoder_*, mask_token)")
    key = "blocks.0.attn.qkv.weight"
    expected = source.state_dict()[f"backbone.net.{key}"] if whole_detector else mae[key]
    assert torch.equal(model.state_dict()[f"backbone.net.{key}"], expected)


def _trainer_checkpoint(model, out_dir):
    """``model_final.pth`` as a run writes it: model, trainer (optimizer, LR hook), iteration."""
    from detectron2.engine import SimpleTrainer, hooks
    from detectron2.solver import LRMultiplier
    from fvcore.common.param_scheduler import CosineParamScheduler

    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    optimizer.step()  # optimizer state (exp_avg, step) as after a real iteration
    trainer = SimpleTrainer(model, [], optimizer)
    trainer.register_hooks([hooks.LRScheduler(
        optimizer=optimizer, scheduler=LRMultiplier(optimizer, CosineParamScheduler(1, 0), 10))])
    trainer.iter = 9
    AtomicCheckpointer(model, str(out_dir), trainer=trainer).save("model_final", iteration=9)
    return out_dir / "model_final.pth"


def test_a_runs_model_final_is_read_by_init_checkpoint_the_converter_and_segmentation(tmp_path):
    from mae_transfer.backbones.checkpoint_reader import read_weights
    from mae_transfer.tools.convert_checkpoint import convert

    torch.manual_seed(6)
    trained = detector()
    path = _trainer_checkpoint(trained, tmp_path)
    saved = torch.load(path, weights_only=True)
    assert {"model", "trainer", "iteration"} <= set(saved) and saved["trainer"]["hooks"]
    assert read_weights(path).report.layout == "Detectron2 detector"
    torch.manual_seed(7)
    fresh = detector()
    report = load_init_checkpoint(fresh, str(path))
    assert report.part == "all" and report.missing_keys == report.unexpected_keys == []
    for key, value in trained.state_dict().items():
        assert torch.equal(fresh.state_dict()[key], value), key
    # its ViT, converted or read straight into a segmentation backbone
    net = {k: v for k, v in trained.backbone.net.state_dict().items()}
    summary = convert(str(path), str(tmp_path / "vit.safetensors"), "ours")
    assert summary["tensors"] == len(net) and summary["layout"] == "Detectron2 detector"
    from mae_transfer.segmentation.backbone import MAEViT

    seg = MAEViT(arch="vit_mini_patch16", img_size=64, norm_cfg=dict(type="BN"))
    seg_report = seg.load_pretrained(str(path))
    # ViTDet's ViT has no cls token: its pos_embed gets a zero cls slot, cls_token stays at init
    assert seg_report.missing_pretrained == ["cls_token"] and seg_report.unexpected_keys == []
    assert seg_report.resized_keys[0] == "pos_embed"  # then the rel-pos tables of its windows
    for key in ("blocks.2.attn.qkv.weight", "patch_embed.proj.weight"):
        assert torch.equal(seg.state_dict()[key], net[key])
