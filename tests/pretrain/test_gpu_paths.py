"""The pretraining paths a GPU run takes, run on the CPU: ``--compile`` with bf16 autocast.

The compile test uses torch's default backend (inductor), as the GPU does. Its first run on a
machine compiles C++ kernels with gcc (minutes on 2 busy cores: measured 4-8 min cold, 15 s with
the on-disk cache warm); ``bench/acceptance.py --tiny`` compiles the same graph (same model,
size, batch, dtype, one thread), so the suite pays it once.
"""
import argparse
import json
import math

import pytest
import torch

from mae_transfer.pretrain.main import build_optimizer, main
from mae_transfer.pretrain.model import build_mae
from mae_transfer.tools.synthetic_data import write_synthetic_images

#: The shapes bench/acceptance.py --tiny compiles too (one cached graph for both).
COMPILED = ["--model", "mae_vit_mini_patch16", "--input_size", "64", "--batch_size", "4",
            "--device", "cpu", "--num_workers", "0", "--vis_every", "0", "--log_every", "1"]


def weights_moved_and_losses_finite(out):
    torch.manual_seed(0)  # the run's seed: its initial weights
    start = build_mae("mae_vit_mini_patch16", img_size=64).state_dict()
    end = torch.load(out / "checkpoint-last.pth", map_location="cpu", weights_only=True)["model"]
    moved = [k for k in start if not torch.equal(start[k], end[k])]
    assert "blocks.0.attn.qkv.weight" in moved and "decoder_pred.weight" in moved
    assert all(end[k].dtype == torch.float32 for k in end)  # master weights stay fp32
    epochs = [json.loads(line) for line in (out / "log.txt").read_text().splitlines()]
    assert epochs and all(math.isfinite(e["train_loss"]) for e in epochs)


@pytest.fixture
def one_thread():
    """One thread, as bench/acceptance.py's CPU children (inductor's cache is per thread count;
    and OpenMP threads spinning on 2 shared cores make compiled kernels far slower)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.slow
def test_compiled_bf16_training_moves_the_weights(tmp_path, one_thread):
    data = write_synthetic_images(tmp_path / "imgs", count=8, size=(72, 80), seed=3)
    out = tmp_path / "run"
    assert main(["--data_path", str(data), "--output_dir", str(out), *COMPILED, "--compile",
                 "--amp", "--amp_dtype", "bfloat16", "--epochs", "1", "--steps_per_epoch", "2",
                 "--warmup_epochs", "0", "--lr", "1e-3"]) == 0
    weights_moved_and_losses_finite(out)
    assert (out / "encoder.safetensors").is_file()
    assert "amp torch.bfloat16" in (out / "train.log").read_text()


def test_cuda_optimizer_bf16_autocast_and_checkpointing_step_on_cpu():
    """What a GPU step runs besides compilation: the optimizer ``build_optimizer`` makes for
    CUDA (fused AdamW, which torch also has for CPU tensors), bf16 autocast, SDPA, activation
    checkpointing; one step moves the weights and keeps them fp32."""
    torch.manual_seed(0)
    model = build_mae("mae_vit_mini_patch16", img_size=64, grad_checkpointing=True).train()
    opt = build_optimizer(model, argparse.Namespace(weight_decay=0.05, lr=1e-3),
                          torch.device("cuda"))
    assert opt.defaults["fused"] is True
    before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    imgs, noise = torch.randn(2, 3, 64, 64), torch.rand(2, 16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(imgs, 0.75, noise)
    assert out.pred.dtype == torch.bfloat16 and math.isfinite(out.loss.item())
    out.loss.backward()
    opt.step()
    moved = [n for n, p in model.named_parameters() if p.requires_grad
             and not torch.equal(before[n], p)]
    assert "blocks.0.attn.qkv.weight" in moved and "decoder_pred.weight" in moved
    assert all(p.dtype == torch.float32 for p in model.parameters())
