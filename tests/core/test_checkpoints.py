"""load_pretrained and tools/convert_checkpoint.py over every supported format, and bad files."""
import logging
import subprocess
import sys

import pytest
import timm
import torch

from mae_transfer.backbones import build_vit, load_pretrained
from mae_transfer.tools.checkpoints import CheckpointError, read_checkpoint, write_checkpoint
from mae_transfer.tools.convert_checkpoint import main as convert_main


def _mini(**kw):
    return build_vit("vit_mini_patch16", img_size=64, **kw)


def _decoder_keys():
    return {"mask_token": torch.zeros(1, 1, 32), "decoder_embed.weight": torch.zeros(32, 64),
            "decoder_blocks.0.norm1.weight": torch.ones(32), "decoder_pred.bias": torch.zeros(768)}


def _assert_same(model, state):
    own = model.state_dict()
    for k, v in state.items():
        assert torch.equal(own[k], v), k


@pytest.fixture
def source():
    torch.manual_seed(0)
    return _mini()


def test_official_mae_format_with_decoder_loads_with_no_missing_keys(tmp_path, source, caplog):
    path = tmp_path / "mae_pretrain.pth"
    torch.save({"model": {**source.state_dict(), **_decoder_keys()}}, path)
    target = _mini()
    with caplog.at_level(logging.INFO, logger="mae_transfer.load"):
        report = load_pretrained(target, path)
    assert report.missing_keys == [] and report.unexpected_keys == []
    assert sorted(report.dropped_keys) == sorted(_decoder_keys())
    _assert_same(target, source.state_dict())
    assert "dropped 4 non-encoder keys" in caplog.text


def test_official_mae_training_checkpoint_with_args_namespace_loads(tmp_path, source):
    import argparse

    path = tmp_path / "checkpoint-799.pth"
    torch.save({"model": source.state_dict(), "epoch": 799,
                "args": argparse.Namespace(model="mae_vit_mini_patch16", mask_ratio=0.75)}, path)
    report = load_pretrained(_mini(), path)
    assert report.missing_keys == []


def test_timm_state_dict_reports_head_as_unexpected(tmp_path, caplog):
    ref = timm.models.vision_transformer.VisionTransformer(
        img_size=64, patch_size=16, embed_dim=64, depth=4, num_heads=4, num_classes=10)
    path = tmp_path / "timm.pth"
    torch.save(ref.state_dict(), path)
    target = _mini()
    with caplog.at_level(logging.WARNING, logger="mae_transfer.load"):
        report = load_pretrained(target, path)
    assert report.missing_keys == []
    assert sorted(report.unexpected_keys) == ["head.bias", "head.weight"]
    assert "(timm ViT (head.*)) -> model: 54 tensors loaded; 0 missing keys []" in caplog.text
    assert "2 unexpected keys ['head.weight', 'head.bias']" in caplog.text
    _assert_same(target, {k: v for k, v in ref.state_dict().items() if not k.startswith("head")})


@pytest.mark.parametrize("fmt,name", [("ours", "enc.safetensors"), ("ours", "enc.pth"),
                                      ("timm", "enc.pth"), ("detectron2", "model_final.pth"),
                                      ("mmseg", "iter_160000.pth")])
def test_every_written_format_loads_back_exactly(tmp_path, source, fmt, name):
    path = write_checkpoint(source.state_dict(), tmp_path / name, fmt, meta={"producer": "test"})
    target = _mini()
    report = load_pretrained(target, path)
    assert report.missing_keys == [] and report.unexpected_keys == []
    _assert_same(target, source.state_dict())


def test_detector_and_segmentor_heads_are_dropped_not_loaded(tmp_path, source):
    state = {f"backbone.net.{k}": v for k, v in source.state_dict().items()}
    state["backbone.simfp_2.0.weight"] = torch.zeros(3)
    state["roi_heads.box_predictor.cls_score.weight"] = torch.zeros(2, 2)
    torch.save({"model": state, "iteration": 10}, tmp_path / "d2.pth")
    report = load_pretrained(_mini(), tmp_path / "d2.pth")
    assert report.missing_keys == [] and report.unexpected_keys == []
    assert sorted(report.dropped_keys) == ["backbone.simfp_2.0.weight",
                                           "roi_heads.box_predictor.cls_score.weight"]


def test_pos_embed_is_resized_to_the_model_grid(tmp_path, source):
    path = write_checkpoint(source.state_dict(), tmp_path / "enc.safetensors")
    big = build_vit("vit_mini_patch16", img_size=96)  # 6x6 grid
    report = load_pretrained(big, path)
    assert report.resized_keys == ["pos_embed"]
    assert big.pos_embed.shape == (1, 37, 64)
    assert torch.allclose(big.pos_embed, source.abs_pos((6, 6)))


def test_pos_embed_without_cls_slot_gets_a_zero_one(tmp_path, source):
    state = dict(source.state_dict(), pos_embed=source.pos_embed[:, 1:].detach().clone())
    torch.save(state, tmp_path / "nocls.pth")
    target = _mini()
    load_pretrained(target, tmp_path / "nocls.pth")
    assert torch.equal(target.pos_embed[:, 0], torch.zeros(1, 64))
    assert torch.equal(target.pos_embed[:, 1:], source.pos_embed[:, 1:])


def test_rel_pos_tables_are_resized_linearly(tmp_path):
    src = build_vit("vit_mini_patch16", img_size=64, use_rel_pos=True)
    for blk in src.blocks:
        blk.attn.rel_pos_h.data.normal_()
    path = write_checkpoint(src.state_dict(), tmp_path / "rel.safetensors")
    dst = build_vit("vit_mini_patch16", img_size=128, use_rel_pos=True)  # 8x8 grid: 15 rows
    report = load_pretrained(dst, path)
    assert "blocks.0.attn.rel_pos_h" in report.resized_keys
    assert dst.blocks[0].attn.rel_pos_h.shape == (15, 16)


def test_wrong_architecture_is_one_clear_error(tmp_path, source):
    path = write_checkpoint(source.state_dict(), tmp_path / "mini.safetensors")
    wider = build_vit("custom", img_size=64, patch_size=16, embed_dim=96, depth=4, num_heads=4)
    with pytest.raises(CheckpointError) as err:
        load_pretrained(wider, path)
    msg = str(err.value)
    assert "\n" not in msg
    assert "does not fit this model" in msg and "embed_dim 64" in msg and "embed_dim 96" in msg


def test_deeper_model_reports_missing_blocks_and_strict_raises(tmp_path, source):
    path = write_checkpoint(source.state_dict(), tmp_path / "mini.safetensors")
    deeper = build_vit("vit_mini_patch16", img_size=64, depth=5)
    report = load_pretrained(deeper, path)
    assert report.missing_keys and all(k.startswith("blocks.4.") for k in report.missing_keys)
    with pytest.raises(CheckpointError, match="strict load failed"):
        load_pretrained(deeper, path, strict=True)


def test_truncated_file_is_one_clear_error(tmp_path, source):
    for name in ("enc.pth", "enc.safetensors"):
        path = write_checkpoint(source.state_dict(), tmp_path / name)
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
        with pytest.raises(CheckpointError) as err:
            load_pretrained(_mini(), path)
        assert "truncated or not a checkpoint" in str(err.value) and "\n" not in str(err.value)


class _Exploit:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_pickle_with_code_is_refused_and_never_run(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    torch.save({"model": {"pos_embed": torch.zeros(1)}, "x": _Exploit(str(marker))}, path)
    with pytest.raises(CheckpointError) as err:
        load_pretrained(_mini(), path)
    assert not marker.exists()
    assert str(err.value).startswith(f"refusing to load {path}") and "\n" not in str(err.value)


def test_not_a_vit_and_missing_file(tmp_path):
    torch.save({"conv1.weight": torch.zeros(3)}, tmp_path / "resnet.pth")
    with pytest.raises(CheckpointError, match="none of this ViT's parameters"):
        load_pretrained(_mini(), tmp_path / "resnet.pth")
    with pytest.raises(CheckpointError, match="no checkpoint file"):
        load_pretrained(_mini(), tmp_path / "nope.pth")


@pytest.mark.parametrize("chain", [("ours", "timm", "ours"), ("detectron2", "mmseg", "timm"),
                                   ("mmseg", "ours", "detectron2")])
def test_conversion_round_trips_are_bit_exact(tmp_path, source, chain):
    src = tmp_path / "official.pth"
    torch.save({"model": {**source.state_dict(), **_decoder_keys()}}, src)
    current = src
    for i, fmt in enumerate(chain):
        out = tmp_path / f"step{i}_{fmt}.{'pth' if fmt != 'ours' else 'safetensors'}"
        assert convert_main([str(current), str(out), "--to", fmt]) == 0
        current = out
    state, _ = read_checkpoint(current)
    prefix = {"detectron2": "backbone.net.", "mmseg": "backbone."}.get(chain[-1], "")
    expected = {prefix + k: v for k, v in source.state_dict().items()}
    assert state.keys() == expected.keys()
    for k, v in expected.items():
        assert state[k].dtype == v.dtype and torch.equal(state[k], v), k


def test_convert_cli_writes_framework_layouts_and_fails_in_one_line(tmp_path, source, repo_root):
    src = write_checkpoint(source.state_dict(), tmp_path / "enc.safetensors")
    d2 = tmp_path / "d2.pth"
    mm = tmp_path / "mm.pth"
    for dst, fmt in ((d2, "detectron2"), (mm, "mmseg")):
        run = subprocess.run([sys.executable, "tools/convert_checkpoint.py", str(src), str(dst),
                              "--to", fmt], cwd=repo_root, capture_output=True, text=True)
        assert run.returncode == 0, run.stderr
        assert "wrote" in run.stdout and "embed_dim 64, patch 16, depth 4" in run.stdout
    assert set(torch.load(d2, weights_only=True)) == {"model", "meta"}
    assert all(k.startswith("backbone.net.") for k in torch.load(d2, weights_only=True)["model"])
    assert all(k.startswith("backbone.") for k in torch.load(mm, weights_only=True)["state_dict"])
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"not a checkpoint")
    run = subprocess.run([sys.executable, "tools/convert_checkpoint.py", str(bad), str(d2),
                          "--to", "timm"], cwd=repo_root, capture_output=True, text=True)
    assert run.returncode == 2
    assert run.stderr.count("\n") == 1 and run.stderr.startswith("error: cannot read checkpoint")
