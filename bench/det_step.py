"""Training-step cost of the ViTDet Mask R-CNN: fused SDPA attention vs explicit softmax attention.

    python bench/det_step.py                      # GPU: ViT-B, 1024 px, batch 2, bf16 autocast
    python bench/det_step.py --size 256 --arch vit_tiny_patch16   # what the CPU default is

Builds the model of ``detection/configs/mask_rcnn_vitdet_b_coco.py`` (``--arch`` swaps the ViT),
feeds synthetic images with 5 random box-shaped instances each, and times full training steps
(forward, backward, AdamW with layer-decay groups). Each attention variant runs in its own child
process, so the peak-memory numbers do not mix (GPU: ``torch.cuda.max_memory_allocated``; CPU:
the child's peak resident set size). The ratios explicit / fused come from the same run.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

from bench.timing import time_step  # noqa: E402

CONFIG = "detection/configs/mask_rcnn_vitdet_b_coco.py"
VARIANTS = ("fused", "explicit")


def synthetic_batch(batch: int, size: int, num_classes: int, seed: int = 0):
    """``batch`` Detectron2 inputs: random images + 5 box-shaped instances with polygon masks."""
    from detectron2.structures import Boxes, Instances, PolygonMasks

    g = torch.Generator().manual_seed(seed)
    inputs = []
    for _ in range(batch):
        xy = torch.rand(5, 2, generator=g) * size * 0.6
        wh = (torch.rand(5, 2, generator=g) * 0.3 + 0.1) * size
        boxes = torch.cat([xy, xy + wh], dim=1)
        polygons = [[[x0, y0, x1, y0, x1, y1, x0, y1]] for x0, y0, x1, y1 in boxes.tolist()]
        inst = Instances((size, size), gt_boxes=Boxes(boxes), gt_masks=PolygonMasks(polygons),
                         gt_classes=torch.randint(0, num_classes, (5,), generator=g))
        image = torch.randint(0, 256, (3, size, size), dtype=torch.uint8, generator=g)
        inputs.append({"image": image, "instances": inst, "height": size, "width": size})
    return inputs


def run_child(args) -> dict:
    """Time ``args.iters`` training steps of one attention variant; returns the measurements."""
    from mae_transfer import detection

    detection.setup()  # the framework fixes (detection/compat.py), before any detectron2 import
    from detectron2.config import LazyConfig, instantiate
    from detectron2.utils.events import EventStorage

    torch.manual_seed(0)
    cuda = args.device == "cuda"
    cfg = LazyConfig.load(os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                       args.config))
    cfg.model.backbone.net.update(name=args.arch, img_size=args.size, drop_path_rate=0.0)
    cfg.model.backbone.square_pad = args.size
    model = instantiate(cfg.model).to(args.device).train()
    model.backbone.net.set_fused_attn(args.child == "fused")
    if args.compile:
        for block in model.backbone.net.blocks:
            block.compile()
    cfg.optimizer.params.model = model
    optimizer = instantiate(cfg.optimizer)
    batch = synthetic_batch(args.batch, args.size, cfg.model.roi_heads.num_classes)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(args.amp) if cuda else None
    scaler = torch.amp.GradScaler("cuda") if dtype == torch.float16 else None

    def step():
        with torch.autocast(args.device, dtype=dtype or torch.float32, enabled=dtype is not None):
            loss = sum(model(batch).values())
        optimizer.zero_grad(set_to_none=True)
        if scaler:
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            optimizer.step()

    with EventStorage(0):
        seconds, peak = time_step(step, args.warmup, args.iters, cuda)
    return {"variant": args.child, "s_per_iter": seconds, "peak_bytes": peak,
            "memory": "cuda max allocated" if cuda else "peak RSS, whole process"}


def main(argv=None) -> int:
    cuda = torch.cuda.is_available()
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cuda" if cuda else "cpu")
    ap.add_argument("--arch", default="vit_base_patch16" if cuda else "vit_tiny_patch16")
    ap.add_argument("--size", type=int, default=1024 if cuda else 256)
    ap.add_argument("--batch", type=int, default=2 if cuda else 1)
    ap.add_argument("--iters", type=int, default=10 if cuda else 2)
    ap.add_argument("--warmup", type=int, default=3 if cuda else 1)
    ap.add_argument("--amp", choices=("bf16", "fp16", "none"), default="bf16")
    ap.add_argument("--compile", action="store_true", help="torch.compile each ViT block")
    ap.add_argument("--config", default=CONFIG,
                    help="LazyConfig whose model is timed (the CPU smoke check uses "
                         "detection/configs/mask_rcnn_vit_mini_cpu.py: toy heads)")
    ap.add_argument("--json", default=None, help="write the results to this file")
    ap.add_argument("--child", choices=VARIANTS, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        print(json.dumps(run_child(args)))
        return 0
    forwarded = list(argv if argv is not None else sys.argv[1:])
    print(f"ViTDet Mask R-CNN train step: {args.arch}, {args.size} px, batch {args.batch}, "
          f"{args.device}, amp {args.amp if args.device == 'cuda' else 'off (CPU)'}, "
          f"{args.iters} timed iterations after {args.warmup} warm-up")
    results = {}
    for variant in VARIANTS:
        cmd = [sys.executable, os.path.abspath(__file__), *_without_json(forwarded), "--child",
               variant]
        run = subprocess.run(cmd, capture_output=True, text=True)
        if run.returncode:
            print(f"{variant}: failed\n{run.stderr[-2000:]}", file=sys.stderr)
            return 1
        results[variant] = r = json.loads(run.stdout.strip().splitlines()[-1])
        print(f"  {variant:8s}  {r['s_per_iter']:.3f} s/iter   peak "
              f"{r['peak_bytes'] / 2**30:.2f} GiB ({r['memory']})")
    fused, explicit = results["fused"], results["explicit"]
    results["time_ratio_explicit_over_fused"] = explicit["s_per_iter"] / fused["s_per_iter"]
    results["memory_ratio_explicit_over_fused"] = explicit["peak_bytes"] / fused["peak_bytes"]
    print(f"explicit / fused: time x{results['time_ratio_explicit_over_fused']:.2f}, "
          f"peak memory x{results['memory_ratio_explicit_over_fused']:.2f}")
    if args.json:
        results["settings"] = {"config": args.config, "arch": args.arch, "size": args.size,
                               "batch": args.batch,
                               "amp": args.amp if args.device == "cuda" else None,
                               "device": args.device, "iters": args.iters,
                               "warmup": args.warmup, "compile": args.compile}
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
    return 0


def _without_json(argv):
    """The parent's arguments minus ``--json`` (children print their result instead)."""
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a == "--json":
            skip = True
        elif not a.startswith("--json="):
            out.append(a)
    return out


if __name__ == "__main__":
    sys.exit(main())
