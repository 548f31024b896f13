"""ViTDet's optimisation recipe: AdamW with layer-wise lr decay, warm-up + step schedule, AMP.

- AdamW, lr 1e-4 at batch 64, betas (0.9, 0.999), weight decay 0.1; parameter groups from
  ``tools.lr_decay.param_groups`` (ViT-B layer decay 0.7; L 0.8, H 0.9) with ViTDet's weight-decay
  rule (``wd_policy="vitdet"``: only ``nn.LayerNorm`` parameters and ``pos_embed`` skip it; the
  H config uses ``"vitdet_h"``, where nothing does). Each group's lr is
  ``lr * lr_scale``; Detectron2's ``LRMultiplier`` scales every group's initial lr by the
  schedule, so the decay holds throughout;
- ``coco_iterations(epochs)`` (COCO's 118k images at batch 64: 100 epochs = 184375) and
  ``step_schedule(max_iter)``: 250 warm-up iterations from 0.001x, lr x0.1 at 8/9 and again at
  26/27 of training (ViTDet's 163889 and 177546 of 184375). Milestones are fractions: overriding
  ``train.max_iter`` alone rescales the whole schedule (the warm-up stays 250 iterations; the
  H config passes ViTDet's 187.5 itself);
- ``train``: Detectron2's usual keys, plus ``amp.dtype`` (bfloat16, or float16 with a loss
  scaler), ``compile`` (torch.compile of the ViT blocks) and ``device``.
"""
import torch
from fvcore.common.param_scheduler import MultiStepParamScheduler

from detectron2.config import LazyCall as L
from detectron2.solver import WarmupParamScheduler

from mae_transfer.tools.lr_decay import param_groups

COCO_TRAIN_IMAGES = 118_000
BATCH_SIZE = 64


def coco_iterations(epochs: float, batch_size: int = BATCH_SIZE,
                    num_images: int = COCO_TRAIN_IMAGES) -> int:
    """Iterations for ``epochs`` over ``num_images`` at ``batch_size`` (100 epochs: 184375)."""
    return int(round(epochs * num_images / batch_size))


def step_schedule(max_iter: int, warmup_iters: int = 250):
    """lr multiplier config: linear warm-up from 0.001x, then x0.1 at 8/9 and 26/27 of training."""
    return L(WarmupParamScheduler)(
        scheduler=L(MultiStepParamScheduler)(
            values=[1.0, 0.1, 0.01],
            milestones=[round(max_iter * 8 / 9), round(max_iter * 26 / 27)],
            num_updates=max_iter),
        warmup_length=min(1.0, warmup_iters / max_iter),
        warmup_factor=0.001)


max_iter = coco_iterations(100)
lr_multiplier = step_schedule(max_iter)

optimizer = L(torch.optim.AdamW)(
    # ``model`` is filled in by detection.training.build_optimizer.
    params=L(param_groups)(weight_decay=0.1, layer_decay=0.7, lr="${..lr}", wd_policy="vitdet"),
    lr=1e-4,
    betas=(0.9, 0.999),
    weight_decay=0.1,
)

train = dict(
    output_dir="./output/det",
    init_checkpoint="",  # any ViT checkpoint backbones.load_pretrained reads, or a detector's
    max_iter=max_iter,
    device="cuda",
    cpu_threads=0,  # torch's thread count when device="cpu" (0: torch's default)
    amp=dict(enabled=True, dtype="bfloat16", cpu=False),  # cpu: the bf16 path on a CPU (tests)
    compile=False,
    ddp=dict(broadcast_buffers=False, find_unused_parameters=False, fp16_compression=True),
    checkpointer=dict(period=5000, max_to_keep=10),
    eval_period=10000,
    log_period=20,
    seed=-1,
    cudnn_benchmark=False,
)
