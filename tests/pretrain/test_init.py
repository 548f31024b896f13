"""``--init``: a new pretraining run from an encoder file, our full checkpoint or an official MAE
training checkpoint (which pickles an ``argparse.Namespace``)."""
import argparse
import logging
import pathlib

import pytest
import torch

from mae_transfer.backbones.pos_embed import sincos_2d
from mae_transfer.pretrain.init import init_from_checkpoint
from mae_transfer.pretrain.main import main
from mae_transfer.pretrain.model import build_mae
from mae_transfer.tools.checkpoints import CheckpointError, read_checkpoint, write_checkpoint
from mae_transfer.tools.synthetic_data import write_synthetic_images

MINI = "mae_vit_mini_patch16"


def trained_mae(img_size=32, seed=1):
    """A mini MAE whose every tensor differs from a fresh model's (so loads are visible)."""
    torch.manual_seed(seed)
    model = build_mae(MINI, img_size=img_size)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "pos_embed" not in name:
                p.add_(torch.randn_like(p) * 0.1)
    return model


def fresh(img_size=32):
    torch.manual_seed(0)
    return build_mae(MINI, img_size=img_size)


def encoder_keys(model):
    return set(model.encoder_state_dict()) - {"pos_embed"}


def official_training_checkpoint(model, path):
    """As the official ``main_pretrain.py`` (``misc.save_model``) writes it."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    args = argparse.Namespace(model="mae_vit_base_patch16", input_size=224, mask_ratio=0.75,
                              norm_pix_loss=True, blr=1.5e-4, epochs=800, output_dir="out")
    torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "epoch": 799,
                "scaler": torch.amp.GradScaler("cpu").state_dict(), "args": args}, path)
    return path


def assert_loaded(model, source, keys):
    own, theirs = model.state_dict(), source.state_dict()
    for k in keys:
        assert torch.equal(own[k], theirs[k]), k


def test_encoder_only_file_loads_the_encoder_and_leaves_the_decoder_fresh(tmp_path):
    src = trained_mae()
    path = write_checkpoint(src.encoder_state_dict(), tmp_path / "enc.safetensors", "ours")
    model = fresh()
    report = init_from_checkpoint(model, path)
    assert not report.with_decoder and report.encoder.missing_keys == []
    assert_loaded(model, src, encoder_keys(src))
    untouched = fresh()
    for k in ("decoder_embed.weight", "mask_token", "decoder_blocks.0.attn.qkv.weight"):
        assert torch.equal(model.state_dict()[k], untouched.state_dict()[k]), k
        assert not torch.equal(model.state_dict()[k], src.state_dict()[k]), k


def test_our_full_checkpoint_loads_encoder_and_decoder(tmp_path):
    src = trained_mae()
    path = tmp_path / "checkpoint-last.pth"
    torch.save({"model": src.state_dict(), "epoch": 3, "meta": {"producer": "test"}}, path)
    model = fresh()
    report = init_from_checkpoint(model, path)
    assert report.with_decoder and report.encoder.missing_keys == []
    assert_loaded(model, src, set(src.state_dict()))


def test_official_training_checkpoint_with_a_namespace_loads(tmp_path):
    src = trained_mae()
    path = official_training_checkpoint(src, tmp_path / "checkpoint-799.pth")
    with pytest.raises(Exception):  # plain weights_only refuses the Namespace ...
        torch.load(path, weights_only=True)
    model = fresh()
    report = init_from_checkpoint(model, path)  # ... which is the one class allowed here
    assert report.with_decoder
    assert_loaded(model, src, set(src.state_dict()))


def test_any_other_pickled_object_is_still_refused(tmp_path):
    src = trained_mae()
    path = tmp_path / "odd.pth"
    torch.save({"model": src.state_dict(), "args": pathlib.PurePosixPath("/data")}, path)
    with pytest.raises(CheckpointError, match="pickles a Python object .*PurePosixPath"):
        init_from_checkpoint(fresh(), path)


def test_position_embeddings_are_recomputed_for_another_input_size(tmp_path, caplog):
    src = trained_mae(img_size=32)  # 2x2 grid
    path = tmp_path / "full.pth"
    torch.save({"model": src.state_dict()}, path)
    model = fresh(img_size=64)  # 4x4 grid
    with caplog.at_level(logging.INFO, logger="mae_transfer.pretrain"):
        report = init_from_checkpoint(model, path)
    assert report.file_grid == (2, 2) and report.run_grid == (4, 4)
    assert torch.equal(model.pos_embed, sincos_2d(64, (4, 4)))
    assert torch.equal(model.decoder_pos_embed, sincos_2d(64, (4, 4)))
    assert "recomputed for this run's 4x4 grid (not interpolated)" in caplog.text
    assert_loaded(model, src, encoder_keys(src) | {"decoder_embed.weight", "mask_token"})


def test_a_decoder_of_another_size_is_an_error_naming_the_flags(tmp_path):
    torch.manual_seed(0)
    src = build_mae(MINI, img_size=32, decoder_embed_dim=32)
    path = tmp_path / "full.pth"
    torch.save({"model": src.state_dict()}, path)
    with pytest.raises(CheckpointError, match="--decoder_embed_dim 32"):
        init_from_checkpoint(fresh(), path)


@pytest.mark.slow
def test_cli_init_runs_and_records_the_source(tmp_path, capsys):
    images = write_synthetic_images(tmp_path / "imgs", count=8, size=(40, 40))
    src = trained_mae(img_size=32)
    ckpt = official_training_checkpoint(src, tmp_path / "official.pth")
    common = ["--data_path", str(images), "--model", MINI, "--input_size", "32", "--device",
              "cpu", "--num_workers", "0", "--vis_every", "0", "--batch_size", "4",
              "--epochs", "1", "--steps_per_epoch", "1", "--warmup_epochs", "0", "--lr", "0"]
    out = tmp_path / "run"
    assert main([*common, "--output_dir", str(out), "--init", str(ckpt)]) == 0
    state, meta = read_checkpoint(out / "encoder.safetensors")
    assert meta["init_checkpoint"] == str(ckpt)
    for k in encoder_keys(src):  # lr 0: the run's weights are the file's
        assert torch.equal(state[k], src.state_dict()[k]), k
    assert "--init" in (out / "train.log").read_text()
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"not a checkpoint")
    assert main([*common, "--output_dir", str(tmp_path / "bad"), "--init", str(bad)]) == 2
    assert "bad.pth" in capsys.readouterr().err
