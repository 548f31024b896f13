"""The segmentation paths a GPU run takes, run on the CPU: MMEngine's ``AmpOptimWrapper`` in
bf16, and ``--compile`` through ``tools/train_seg.py``.

``AmpOptimWrapper.__init__`` asserts that a GPU (or NPU/MLU/MUSA) is present and nothing else in
it needs one: its loss scaler is ``torch.cuda.amp.GradScaler``, which disables itself without
CUDA (bf16 needs no scaling), and its ``optim_context`` enters MMEngine's ``autocast`` on the
current device, bf16 on the CPU. The test lifts that one assertion (its module's
``is_cuda_available``, not torch's) and runs the wrapper's own backward / step / context.

``--compile`` compiles the backbone in place (``segmentation.entry.compile_backbone``; MMEngine's
own compile of the whole ``train_step`` recompiled every iteration, found by this test). It uses
torch.compile's ``aot_eager`` backend here (``--cfg-options compile.backend=aot_eager``):
inductor's CPU code generator is not the GPU's either, and costs minutes per graph on 2 cores.
"""
from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys

import pytest
import torch

import mae_transfer.segmentation.registration  # noqa: F401  (registers MAEViT, ...)


def load_seg_bench(repo_root):
    spec = importlib.util.spec_from_file_location("seg_step", repo_root / "bench" / "seg_step.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_amp_optim_wrapper_trains_in_bf16_and_moves_the_weights(repo_root, monkeypatch):
    import mmengine.optim.optimizer.amp_optimizer_wrapper as amp_module
    from mmengine.optim import AmpOptimWrapper
    from mmengine.registry import init_default_scope
    from mmseg.registry import MODELS

    bench = load_seg_bench(repo_root)
    init_default_scope("mmseg")
    torch.manual_seed(0)
    model = MODELS.build(bench.segmentor_cfg("ours", "vit_mini_patch16", 64))
    model.init_weights()
    model.train()
    with pytest.raises(AssertionError, match="only available training on gpu"):
        AmpOptimWrapper(optimizer=torch.optim.AdamW(model.parameters()), dtype="bfloat16")
    monkeypatch.setattr(amp_module, "is_cuda_available", lambda: True)
    wrapper = AmpOptimWrapper(optimizer=torch.optim.AdamW(model.parameters(), lr=1e-3),
                              dtype="bfloat16")
    dtypes = []
    qkv = model.backbone.blocks[0].attn.qkv
    hook = qkv.register_forward_hook(lambda m, i, o: dtypes.append(o.dtype))
    watched = {"backbone.blocks.0.attn.qkv.weight": qkv.weight,
               "decode_head.conv_seg.weight": model.decode_head.conv_seg.weight}
    before = {n: p.detach().clone() for n, p in watched.items()}
    losses = model.train_step(bench.fake_batch(2, 64), wrapper)
    hook.remove()
    assert dtypes == [torch.bfloat16]  # the forward ran under bf16 autocast
    assert all(math.isfinite(float(v)) for k, v in losses.items() if k.startswith("loss") or
               k.endswith("loss_ce"))
    for n, p in watched.items():
        assert p.dtype == torch.float32 and not torch.equal(before[n], p), n
    assert "loss_scaler" in wrapper.state_dict()


@pytest.mark.slow
def test_compiled_backbone_trains_through_the_entry_point(repo_root, ade_root, mae_checkpoint,
                                                     tmp_path):
    work = tmp_path / "run"
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    proc = subprocess.run(
        [sys.executable, str(repo_root / "tools" / "train_seg.py"),
         "segmentation/configs/upernet_vit-mini_1xb4-40it_shapes-64x64.py", "--compile",
         "--work-dir", str(work), "--data-root", str(ade_root), "--pretrained",
         str(mae_checkpoint), "--cfg-options", "compile.backend=aot_eager",
         "train_cfg.max_iters=4", "train_cfg.val_interval=4", "default_hooks.logger.interval=1",
         "default_hooks.checkpoint.interval=4"],
        cwd=repo_root, capture_output=True, text=True, timeout=900, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    log = "\n".join(p.read_text() for p in work.glob("*/*.log"))
    assert "torch.compile: MAEViT compiled in place ({'backend': 'aot_eager'})" in log
    scalars = [json.loads(line) for p in work.glob("*/vis_data/scalars.json")
               for line in p.read_text().splitlines()]
    losses = [s["loss"] for s in scalars if "loss" in s]
    assert len(losses) == 4 and all(math.isfinite(v) for v in losses)
    state = torch.load(work / "iter_4.pth", map_location="cpu", weights_only=False)["state_dict"]
    start = torch.load(mae_checkpoint, map_location="cpu", weights_only=True)["model"]
    key = "blocks.0.attn.qkv.weight"
    assert not torch.equal(state[f"backbone.{key}"], start[key])  # trained from the file's
    assert (work / "val_results" / "iter_4.json").is_file()
