"""Training-step cost of UperNet on our ViT (``MAEViT``) vs MMSeg's own ``MAE`` backbone.

    python bench/seg_step.py      # with a GPU: ViT-B, 512 px, batch 2 per device, bf16 AMP
    python bench/seg_step.py      # CPU only: ViT-S, 128 px, batch 2, fp32
    python bench/seg_step.py --arch vit_base_patch16 --size 128   # CPU, ViT-B: ~20 s/iter

Both segmentors use the same UPerHead + auxiliary FCNHead (MMSeg's, widths of the MAE config) and
the same pyramid (ours: the adapter inside MAEViT; MMSeg: its ``Feature2Pyramid`` neck on ``MAE``),
BEiT relative position bias, layer scale 1.0 and drop path 0.1 in both (the same function, as the
ADE20K configs build it). One full ``train_step`` (data preprocessing,
forward, losses, backward, AdamW step; ``AmpOptimWrapper`` bf16 on GPU) is timed after warm-up.
Each model runs in its own child process so that peak memory (CUDA ``max_memory_allocated``, or
peak RSS growth on CPU) is measured from a clean start; the parent prints both and the ratios.
On a shared machine, ``--repeats N`` alternates the two N times and keeps each one's best time.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

ARCHS = {  # name -> (embed_dim, depth, heads, out_indices)
    "vit_base_patch16": (768, 12, 12, (3, 5, 7, 11)),
    "vit_large_patch16": (1024, 24, 16, (7, 11, 15, 23)),
    "vit_small_patch16": (384, 12, 6, (3, 5, 7, 11)),
    "vit_mini_patch16": (64, 4, 4, (0, 1, 2, 3)),
}
NUM_CLASSES = 150


def segmentor_cfg(which: str, arch: str, size: int) -> dict:
    dim, depth, heads, out_indices = ARCHS[arch]
    norm = dict(type="BN", requires_grad=True)  # one process: SyncBN would be reverted anyway
    if which == "ours":
        backbone = dict(type="MAEViT", arch=arch, img_size=size, out_indices=out_indices,
                        drop_path_rate=0.1, use_rel_pos=True, rel_pos_type="beit",
                        layer_scale_init=1.0, norm_cfg=norm)  # the ADE20K recipe's attention
        neck = None
    else:
        backbone = dict(type="MAE", img_size=(size, size), patch_size=16, embed_dims=dim,
                        num_layers=depth, num_heads=heads, mlp_ratio=4, init_values=1.0,
                        drop_path_rate=0.1, out_indices=list(out_indices))
        neck = dict(type="Feature2Pyramid", embed_dim=dim, rescales=[4, 2, 1, 0.5],
                    norm_cfg=norm)
    return dict(
        type="EncoderDecoder",
        data_preprocessor=dict(type="SegDataPreProcessor", mean=[123.675, 116.28, 103.53],
                               std=[58.395, 57.12, 57.375], bgr_to_rgb=True, pad_val=0,
                               seg_pad_val=255, size=(size, size)),
        backbone=backbone, neck=neck,
        decode_head=dict(type="UPerHead", in_channels=[dim] * 4, in_index=[0, 1, 2, 3],
                         pool_scales=(1, 2, 3, 6), channels=dim, dropout_ratio=0.1,
                         num_classes=NUM_CLASSES, norm_cfg=norm, align_corners=False,
                         loss_decode=dict(type="CrossEntropyLoss", loss_weight=1.0)),
        auxiliary_head=dict(type="FCNHead", in_channels=dim, in_index=2, channels=256,
                            num_convs=1, concat_input=False, dropout_ratio=0.1,
                            num_classes=NUM_CLASSES, norm_cfg=norm, align_corners=False,
                            loss_decode=dict(type="CrossEntropyLoss", loss_weight=0.4)),
        train_cfg=dict(), test_cfg=dict(mode="whole"))


def fake_batch(batch: int, size: int, seed: int = 0) -> dict:
    import torch
    from mmengine.structures import PixelData
    from mmseg.structures import SegDataSample

    g = torch.Generator().manual_seed(seed)
    inputs, samples = [], []
    for _ in range(batch):
        inputs.append(torch.randint(0, 256, (3, size, size), generator=g, dtype=torch.uint8))
        s = SegDataSample()
        s.gt_sem_seg = PixelData(data=torch.randint(0, NUM_CLASSES, (1, size, size), generator=g))
        s.set_metainfo(dict(img_shape=(size, size), ori_shape=(size, size),
                            pad_shape=(size, size)))
        samples.append(s)
    return dict(inputs=inputs, data_samples=samples)


def child(args) -> dict:
    from mae_transfer import segmentation

    segmentation.setup()  # the framework fixes (segmentation/compat.py), before any mmseg import
    import mae_transfer.segmentation.registration  # noqa: F401  (MAEViT in MODELS)
    import torch
    from mmengine.optim import AmpOptimWrapper, OptimWrapper
    from mmengine.registry import init_default_scope
    from mmseg.registry import MODELS

    from bench.timing import peak_rss_bytes, time_step

    init_default_scope("mmseg")
    cuda = args.device == "cuda"
    torch.manual_seed(0)
    base_rss = peak_rss_bytes()
    model = MODELS.build(segmentor_cfg(args.child, args.arch, args.size))
    model.init_weights()
    device = torch.device(args.device)
    model.to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.05)
    wrapper = (AmpOptimWrapper(optimizer=optimizer, dtype="bfloat16") if cuda
               else OptimWrapper(optimizer=optimizer))
    data = fake_batch(args.batch, args.size)

    def step():
        model.train_step(data, wrapper)

    seconds, peak = time_step(step, args.warmup, args.iters, cuda)
    peak = (peak if cuda else peak - base_rss) / 2 ** 30
    params = sum(p.numel() for p in model.parameters()) / 1e6
    return {"model": args.child, "s_per_iter": seconds, "peak_gb": peak, "params_m": params}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--arch", default=None, choices=sorted(ARCHS),
                    help="default: vit_base_patch16 on GPU, vit_small_patch16 on CPU")
    ap.add_argument("--size", type=int, default=None, help="crop size (default 512 GPU, 128 CPU)")
    ap.add_argument("--batch", type=int, default=2, help="images per step (per device)")
    ap.add_argument("--iters", type=int, default=None, help="timed steps (default 20 GPU, 3 CPU)")
    ap.add_argument("--warmup", type=int, default=None, help="untimed steps (default 5 GPU, 1 CPU)")
    ap.add_argument("--device", default=None, help="cuda or cpu (default: cuda if available)")
    ap.add_argument("--repeats", type=int, default=1,
                    help="run the pair this many times, alternating, and keep each one's best "
                         "(for shared or noisy machines)")
    ap.add_argument("--json", default=None, help="write the results to this file")
    ap.add_argument("--child", choices=["ours", "mmseg"], help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.device is None:
        import torch
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    gpu = args.device == "cuda"
    args.arch = args.arch or ("vit_base_patch16" if gpu else "vit_small_patch16")
    args.size = args.size or (512 if gpu else 128)
    args.iters = args.iters or (20 if gpu else 3)
    args.warmup = args.warmup if args.warmup is not None else (5 if gpu else 1)
    if args.size % 32:
        ap.error("--size must be a multiple of 32 (stride-32 pyramid level)")

    if args.child:
        print(json.dumps(child(args)))
        return 0

    print(f"UperNet train step: {args.arch}, {args.size} px, batch {args.batch}, {args.device}"
          f"{' (bf16 AMP)' if gpu else ' (fp32)'}, {args.warmup} warm-up + {args.iters} timed")
    results = {}
    mem = "peak GPU memory" if gpu else "peak RSS growth"
    for rep in range(args.repeats):
        for which in ("ours", "mmseg"):
            cmd = [sys.executable, os.path.abspath(__file__), "--child", which, "--arch",
                   args.arch, "--size", str(args.size), "--batch", str(args.batch), "--iters",
                   str(args.iters), "--warmup", str(args.warmup), "--device", args.device]
            proc = subprocess.run(cmd, capture_output=True, text=True)
            lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
            if proc.returncode or not lines:
                tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
                print(f"{which}: failed ({tail})")
                return 1
            r = json.loads(lines[-1])
            print(f"{which:>6} (run {rep + 1}): {r['s_per_iter']:.3f} s/iter, {mem} "
                  f"{r['peak_gb']:.2f} GiB, {r['params_m']:.1f} M params")
            best = results.get(which)
            if best is None or r["s_per_iter"] < best["s_per_iter"]:
                results[which] = r
    o, m = results["ours"], results["mmseg"]
    print(f"best of {args.repeats}: ours {o['s_per_iter']:.3f} s/iter, "
          f"mmseg {m['s_per_iter']:.3f} s/iter")
    results["time_ratio_ours_over_mmseg"] = o["s_per_iter"] / m["s_per_iter"]
    results["memory_ratio_ours_over_mmseg"] = o["peak_gb"] / max(m["peak_gb"], 1e-9)
    print(f"ratio ours / mmseg: time {results['time_ratio_ours_over_mmseg']:.2f}x, "
          f"memory {results['memory_ratio_ours_over_mmseg']:.2f}x")
    if args.json:
        results["settings"] = {"arch": args.arch, "size": args.size, "batch": args.batch,
                               "device": args.device, "amp": "bf16" if gpu else None,
                               "iters": args.iters, "warmup": args.warmup,
                               "repeats": args.repeats, "memory": mem}
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
