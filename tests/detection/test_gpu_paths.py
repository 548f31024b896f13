"""The detection paths a GPU run takes, run on the CPU: compiled ViT blocks under bf16 autocast.

``train.compile`` here uses torch.compile's ``aot_eager`` backend: what breaks first on a GPU
(dynamo tracing of the window / global blocks, graph breaks, AOT autograd's backward graph) is
the same code under it, while inductor's CPU code generator (C++ through gcc) is not the GPU's
(Triton) either and costs minutes per graph on 2 cores (measured for the mini MAE: 4-8 min cold).
The default backend runs in ``tests/pretrain/test_gpu_paths.py`` and on the GPU in
``bench/acceptance.py``.
"""
import math

import pytest
import torch
from detectron2.utils.events import EventStorage

from mae_transfer.detection.cli import UsageError
from mae_transfer.detection.training import AutocastTrainer, amp_dtype, build_model, build_optimizer

from .test_model import batch, tiny_cfg


def test_bf16_autocast_on_cpu_only_when_asked():
    cfg = tiny_cfg()
    cfg.train.amp.enabled = True
    assert amp_dtype(cfg) is None  # CPU: fp32 by default (CPU bf16 is slower)
    cfg.train.amp.cpu = True
    assert amp_dtype(cfg) is torch.bfloat16
    cfg.train.amp.dtype = "float16"
    with pytest.raises(UsageError, match="bfloat16 only"):
        amp_dtype(cfg)


@pytest.mark.slow
def test_compiled_blocks_train_in_bf16_and_move_the_weights():
    cfg = tiny_cfg()
    cfg.train.compile = {"backend": "aot_eager"}
    cfg.train.amp.update(enabled=True, cpu=True)
    torch.manual_seed(0)
    model = build_model(cfg).train()
    assert all(hasattr(b, "_compiled_call_impl") and b._compiled_call_impl is not None
               for b in model.backbone.net.blocks)
    names = ("backbone.net.blocks.0.attn.qkv.weight", "backbone.net.blocks.1.attn.rel_pos_h",
             "backbone.net.blocks.3.mlp.fc2.weight")
    params = dict(model.named_parameters())
    assert set(names) <= set(dict(model.state_dict()))  # compiled in place: names unchanged
    before = {n: params[n].detach().clone() for n in names}
    trainer = AutocastTrainer(model, iter([batch(2)] * 3), build_optimizer(cfg, model),
                              amp_dtype=amp_dtype(cfg), device_type="cpu")
    with EventStorage(0) as storage:
        trainer.storage = storage
        for trainer.iter in range(2):
            trainer.run_step()
    assert math.isfinite(storage.history("total_loss").latest())
    for n in names:
        assert params[n].dtype == torch.float32 and not torch.equal(before[n], params[n]), n
