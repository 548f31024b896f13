"""End-to-end pretraining runs on CPU with the 4-block mini ViT at 64 px (seconds each)."""
import json
import os
import subprocess
import sys

import pytest
import torch

from mae_transfer.backbones import build_vit, load_pretrained
from mae_transfer.pretrain.data import ImageFolderMAE, normalize_batch
from mae_transfer.pretrain.main import main
from mae_transfer.pretrain.model import build_mae
from mae_transfer.pretrain.restore import load_mae
from mae_transfer.tools.checkpoints import read_checkpoint
from mae_transfer.tools.synthetic_data import write_synthetic_images

pytestmark = pytest.mark.slow

TINY = ["--model", "mae_vit_mini_patch16", "--input_size", "64", "--device", "cpu",
        "--num_workers", "0", "--log_every", "2", "--vis_every", "0"]


def run(data, out, *extra):
    return main(["--data_path", str(data), "--output_dir", str(out), *TINY, *map(str, extra)])


def load(path):
    return torch.load(path, map_location="cpu", weights_only=True)


def assert_same_tensors(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    return write_synthetic_images(tmp_path_factory.mktemp("data") / "imgs", count=24,
                                  size=(72, 80), seed=5)


# Two epochs of 4 steps, accumulating 2 micro-batches per optimizer step.
RESUME_ARGS = ("--batch_size", 4, "--accum_iter", 2, "--steps_per_epoch", 4, "--epochs", 2,
               "--warmup_epochs", 1, "--blr", 1e-2, "--save_every", 1)


@pytest.fixture(scope="module")
def straight_run(images, tmp_path_factory):
    out = tmp_path_factory.mktemp("straight")
    assert run(images, out, *RESUME_ARGS) == 0
    return out


def test_loss_falls_on_images(image_folder, tmp_path):
    """Real images when ../shared/data is present (the fixture copies them), else generated."""
    assert run(image_folder, tmp_path, "--batch_size", 8, "--steps_per_epoch", 2, "--epochs", 15,
               "--warmup_epochs", 2, "--lr", 5e-3, "--log_every", 100) == 0
    # Same images, same masks: the untrained model vs the trained one.
    ds = ImageFolderMAE(image_folder, 64, 16, seed=123)
    items = [ds[(0, i)] for i in range(len(ds))]
    x = normalize_batch(torch.stack([a for a, _ in items]), torch.device("cpu"))
    noise = torch.stack([n for _, n in items])
    torch.manual_seed(0)
    untrained = build_mae("mae_vit_mini_patch16", img_size=64).eval()
    trained = load_mae(tmp_path / "checkpoint-last.pth")
    with torch.no_grad():
        before, after = untrained(x, 0.75, noise).loss.item(), trained(x, 0.75, noise).loss.item()
    assert after < 0.95 * before, (before, after)
    epochs = [json.loads(line) for line in (tmp_path / "log.txt").read_text().splitlines()]
    assert [e["epoch"] for e in epochs] == list(range(1, 16))
    assert epochs[-1]["train_loss"] < epochs[0]["train_loss"]


def test_outputs_of_a_run(straight_run):
    names = {p.name for p in straight_run.iterdir()}
    assert {"checkpoint-last.pth", "checkpoint-0001.pth", "checkpoint-0002.pth",
            "encoder.safetensors", "log.txt", "train.log"} <= names
    assert any(n.startswith("events.out.tfevents") for n in names)
    assert not any(".tmp" in n for n in names)  # atomic writes leave no temporaries
    ckpt = load(straight_run / "checkpoint-last.pth")
    assert (ckpt["epoch"], ckpt["step_in_epoch"], ckpt["global_step"]) == (2, 0, 8)
    assert ckpt["args"]["accum_iter"] == 2 and isinstance(ckpt["args"], dict)
    assert ckpt["optimizer"]["state"]  # AdamW moments saved
    log = (straight_run / "train.log").read_text()
    assert "loss" in log and "img/s" in log and "lr" in log


def test_resume_after_interruption_is_bit_for_bit(images, straight_run, tmp_path):
    # Interrupted after 6 of 8 steps (mid-epoch 2), then resumed to the end.
    assert run(images, tmp_path, *RESUME_ARGS, "--max_steps", 6) == 0
    mid = load(tmp_path / "checkpoint-last.pth")
    assert (mid["epoch"], mid["step_in_epoch"], mid["global_step"]) == (1, 2, 6)
    assert run(images, tmp_path, *RESUME_ARGS, "--resume", "auto") == 0
    a, b = load(straight_run / "checkpoint-last.pth"), load(tmp_path / "checkpoint-last.pth")
    assert (b["epoch"], b["step_in_epoch"], b["global_step"]) == (2, 0, 8)
    assert_same_tensors(a["model"], b["model"])
    sa, sb = a["optimizer"]["state"], b["optimizer"]["state"]
    assert sa.keys() == sb.keys()
    for i in sa:
        assert_same_tensors(sa[i], sb[i])
    assert read_checkpoint(tmp_path / "encoder.safetensors")[0].keys() == \
        read_checkpoint(straight_run / "encoder.safetensors")[0].keys()


def test_exported_encoder_loads_into_build_vit(straight_run):
    vit = build_vit("vit_mini_patch16", img_size=64)
    report = load_pretrained(vit, straight_run / "encoder.safetensors")
    assert report.missing_keys == [] and report.unexpected_keys == []
    full = load(straight_run / "checkpoint-last.pth")["model"]
    for k, v in vit.state_dict().items():
        assert torch.equal(v, full[k]), k
    state, meta = read_checkpoint(straight_run / "encoder.safetensors")
    assert meta["arch"] == "vit_mini_patch16" and meta["img_size"] == [64, 64]
    assert meta["patch_size"] == [16, 16] and "pretrain" in meta["producer"]
    assert not any(k.startswith("decoder") or k == "mask_token" for k in state)
    # The full training checkpoint loads too (decoder dropped, like an official MAE one).
    report = load_pretrained(build_vit("vit_mini_patch16", img_size=64),
                             straight_run / "checkpoint-last.pth")
    assert report.missing_keys == [] and "mask_token" in report.dropped_keys


def test_non_finite_loss_stops_and_keeps_last_checkpoint(images, straight_run, tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    good = (straight_run / "checkpoint-last.pth").read_bytes()
    (out / "checkpoint-last.pth").write_bytes(good)
    # lr 1e30: the first update blows the weights up, the next loss is NaN.
    status = run(images, out, *RESUME_ARGS, "--epochs", 4, "--lr", 1e30, "--resume", "auto")
    assert status == 1
    assert "non-finite loss" in capsys.readouterr().out
    assert (out / "checkpoint-last.pth").read_bytes() == good
    assert not (out / "checkpoint-0003.pth").exists() and not (out / "encoder.safetensors").exists()


def test_resume_with_another_model_is_a_clear_error(images, straight_run, tmp_path, capsys):
    status = main(["--data_path", str(images), "--output_dir", str(tmp_path), *TINY,
                   "--batch_size", "4", "--decoder_depth", "3",
                   "--resume", str(straight_run / "checkpoint-last.pth")])
    assert status == 2
    assert "different model" in capsys.readouterr().err


def test_empty_folder_exits_with_a_clear_error(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert run(tmp_path / "empty", tmp_path / "out") == 2
    assert f"error: no images found under {tmp_path / 'empty'}" in capsys.readouterr().err


def test_visualize_script(repo_root, straight_run, images, tmp_path, capsys):
    import importlib.util

    from PIL import Image

    png = tmp_path / "recon.png"
    files = sorted(images.iterdir())[:3]
    script = repo_root / "tools" / "visualize_mae.py"
    cmd = [str(straight_run / "checkpoint-last.pth"), *map(str, files), "--out", str(png)]
    done = subprocess.run([sys.executable, str(script), *cmd], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert Image.open(png).size == (4 * 64, 3 * 64)
    # In-process for the error case (no second interpreter start).
    spec = importlib.util.spec_from_file_location("visualize_mae", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    cmd[0] = str(straight_run / "encoder.safetensors")
    assert module.main(cmd) == 2
    assert "no decoder" in capsys.readouterr().err


def _shell(repo_root, *args, env_extra=None):
    # The interpreter running the tests, not whichever python3 is first on PATH (a venv that is
    # used but not activated would otherwise fail with "No module named torch").
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHON": sys.executable, **(env_extra or {})}
    return subprocess.run(["bash", str(repo_root / "tools" / "pretrain.sh"), *map(str, args)],
                          capture_output=True, text=True, env=env, timeout=300)


def test_shell_entry_point_with_workers_corrupt_files_and_pictures(repo_root, tmp_path):
    data = write_synthetic_images(tmp_path / "data" / "class_a", count=10, size=(72, 80))
    good = data / "img_000.jpg"
    truncated = data / "zz_truncated.jpg"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    text = tmp_path / "data" / "readme.jpg"
    text.write_text("not an image")
    out = tmp_path / "out"
    done = _shell(repo_root, "--", "--data_path", tmp_path / "data", "--output_dir", out,
                  "--model", "mae_vit_mini_patch16", "--input_size", 64, "--device", "cpu",
                  "--batch_size", 4, "--epochs", 2, "--warmup_epochs", 1, "--num_workers", 2,
                  "--vis_every", 1, "--vis_images", 2, "--log_every", 1)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    log = done.stdout + done.stderr
    assert str(truncated) in log and str(text) in log and "skipping unreadable image" in log
    assert (out / "encoder.safetensors").is_file() and (out / "checkpoint-0002.pth").is_file()
    assert (out / "vis" / "epoch-0001.png").is_file() and (out / "vis" / "epoch-0002.png").is_file()


def test_two_processes_ddp_match_one_process(repo_root, images, tmp_path):
    """torchrun with 2 CPU processes (gloo) x batch 4 == 1 process x batch 8: each step sees
    the same 8 samples with the same crops and masks, so the weights agree up to float rounding."""
    common = ["--data_path", images, "--model", "mae_vit_mini_patch16", "--input_size", 64,
              "--device", "cpu", "--num_workers", 0, "--epochs", 1, "--warmup_epochs", 0,
              "--steps_per_epoch", 3, "--blr", 1e-2, "--vis_every", 0, "--log_every", 1]
    one = _shell(repo_root, "--", *common, "--batch_size", 8, "--output_dir", tmp_path / "one")
    assert one.returncode == 0, one.stderr[-2000:]
    two = _shell(repo_root, "--nproc_per_node", 2, "--", *common, "--batch_size", 4,
                 "--output_dir", tmp_path / "two")
    assert two.returncode == 0, two.stdout[-2000:] + two.stderr[-2000:]
    assert "2 processes" in two.stdout
    a = load(tmp_path / "one" / "checkpoint-last.pth")["model"]
    b = load(tmp_path / "two" / "checkpoint-last.pth")["model"]
    torch.manual_seed(0)  # the runs' seed: the same initial weights
    init = build_mae("mae_vit_mini_patch16", img_size=64).state_dict()
    moved = 0
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-5, rtol=1e-4), k
        moved += not torch.equal(a[k], init[k])
    assert moved > 10  # training really changed the weights


def test_sigterm_saves_and_stops_cleanly(repo_root, images, tmp_path):
    """A scheduler's SIGTERM (sent to every process, data workers included): the run saves its
    position at the next check and exits 0; --resume auto continues from there."""
    import signal

    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "mae_transfer.pretrain.main", "--data_path", str(images), "--output_dir",
           str(out), *TINY[:-4], "--num_workers", "2", "--batch_size", "4", "--epochs", "1000",
           "--log_every", "1", "--vis_every", "0"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(repo_root)}
    proc = subprocess.Popen(cmd, cwd=repo_root, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, env=env, start_new_session=True)
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if "epoch 1/1000  step 2/" in line:
            os.killpg(proc.pid, signal.SIGTERM)  # the whole process group, like a scheduler
            break
    rest = proc.communicate(timeout=120)[0]
    assert proc.returncode == 0, "".join(lines) + rest
    assert "stopped on request" in rest
    ckpt = load(out / "checkpoint-last.pth")
    assert 2 <= ckpt["global_step"] < 6000
    assert (out / "encoder.safetensors").is_file()
