"""MAE pretraining throughput: images/s of a full training step, model FLOPs utilisation, and the
speed-up of encoding only the visible patches, all measured in one run.

    python bench/pretrain_throughput.py                                   # GPU: ViT-B/16, 224 px
    python bench/pretrain_throughput.py --model mae_vit_large_patch16 --batch_size 128 --compile
    python bench/pretrain_throughput.py --device cpu                      # small CPU default
    python bench/pretrain_throughput.py --data_path DIR --num_workers 16  # + data loader speed
    python bench/pretrain_throughput.py --data_path DIR --skip_synthetic --num_workers 1  # per core
    python bench/pretrain_throughput.py --data_path DIR --end_to_end [--decode_on_device]

A step is what training does: forward (bf16 autocast on GPU), loss, backward, fused AdamW update,
on synthetic device-resident images (the model's speed, not the disk's; ``--data_path`` times
the loader separately, to show whether it keeps up, in images/s and images per CPU-second, and
``--end_to_end`` the steps fed by it). The first step is reported on its own: with ``--compile``
it is the compilation time. The same step is then timed with the
paper's ablation "encoder w/ [M]": the encoder processes every patch, masked ones replaced by a
mask token. The ratio of the two is what encoding the visible 25% saves (the paper reports about
3x for ViT-L, counting the whole step).

FLOPs come from fvcore (one fused multiply-add = 2 FLOPs), counted on the forward pass with
explicit attention matmuls; a training step is taken as 3x the forward. MFU = achieved FLOP/s
divided by the GPU's dense bf16 peak (known cards, or ``--peak_tflops``).
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import resource
import sys
import time
import warnings
from typing import Dict, Optional, Tuple

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

from mae_transfer.pretrain.device_decode import batch_pixels  # noqa: E402
from mae_transfer.pretrain.main import build_optimizer  # noqa: E402
from mae_transfer.pretrain.model import MAE_MODELS, build_mae  # noqa: E402

#: Dense bf16 tensor-core peaks in TFLOP/s (vendor data sheets), by a substring of the name.
PEAK_BF16_TFLOPS = {"GH200": 989.4, "H200": 989.4, "H100 SXM": 989.4, "H100 80GB HBM3": 989.4,
                    "H100 NVL": 835.0, "H100 PCIe": 756.0, "H100": 756.0,
                    "B200": 2250.0, "A100": 312.0, "A800": 312.0, "L40S": 362.0, "L4": 121.0,
                    "A10G": 70.0, "A10": 125.0, "RTX 4090": 165.2, "RTX 3090": 71.0,
                    "V100": 125.0}


def peak_tflops(device: torch.device, override: Optional[float]) -> Optional[float]:
    if override:
        return override
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for key, value in PEAK_BF16_TFLOPS.items():  # most specific keys first
        if key in name:
            return value
    return None


class _LossOnly(torch.nn.Module):
    """fvcore traces modules returning tensors; the MAE returns a named tuple."""

    def __init__(self, model, mask_ratio):
        super().__init__()
        self.model, self.mask_ratio = model, mask_ratio

    def forward(self, imgs, noise):
        return self.model(imgs, self.mask_ratio, noise).loss


def forward_flops_per_image(model, mask_ratio: float) -> float:
    """Forward FLOPs for one image (fvcore MACs x 2), explicit attention so matmuls are counted."""
    with warnings.catch_warnings():  # fvcore's import scripts a function: a deprecation warning
        warnings.simplefilter("ignore", FutureWarning)
        from fvcore.nn import FlopCountAnalysis

    counted = copy.deepcopy(model).cpu().float().eval()
    counted.set_fused_attn(False)
    size = counted.config["img_size"]
    imgs = torch.randn(1, counted.in_chans, *size)
    noise = torch.rand(1, counted.num_patches)
    analysis = FlopCountAnalysis(_LossOnly(counted, mask_ratio), (imgs, noise))
    analysis.unsupported_ops_warnings(False)
    analysis.uncalled_modules_warnings(False)
    with warnings.catch_warnings():  # jit tracing warns about itself being deprecated
        warnings.simplefilter("ignore")
        return 2.0 * analysis.total()


def make_step(model, args, device: torch.device):
    """One training step as ``pretrain/`` runs it on this device: bf16 autocast (on CUDA, or with
    ``--amp``), loss, backward, AdamW (fused on CUDA), optionally through ``torch.compile``."""
    opt = build_optimizer(model, argparse.Namespace(weight_decay=0.05, lr=1e-4), device)
    amp = args.amp if args.amp is not None else device.type == "cuda"
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp)
    step_model = torch.compile(model) if args.compile else model

    def step(imgs, noise):
        with autocast:
            loss = step_model(imgs, args.mask_ratio, noise).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss

    return step


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_steps(model, args, device: torch.device) -> Dict[str, float]:
    """Images/s of full training steps on device-resident synthetic images (after warm-up), the
    first step's time on its own (it includes compilation with ``--compile``), peak memory."""
    step = make_step(model, args, device)
    g = torch.Generator(device=device).manual_seed(0)
    size = model.config["img_size"]
    imgs = torch.randn(args.batch_size, 3, *size, device=device, generator=g)
    imgs = imgs.contiguous(memory_format=torch.channels_last)
    noise = torch.rand(args.batch_size, model.num_patches, device=device, generator=g)

    t0 = time.perf_counter()
    step(imgs, noise)
    _sync(device)
    first = time.perf_counter() - t0
    for _ in range(max(0, args.warmup - 1)):
        step(imgs, noise)
    _sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    t0 = time.perf_counter()
    for _ in range(args.steps):
        loss = step(imgs, noise)
    _sync(device)
    elapsed = time.perf_counter() - t0
    out = {"images_per_s": args.steps * args.batch_size / elapsed,
           "ms_per_step": 1000 * elapsed / args.steps, "first_step_s": first,
           "loss": float(loss.detach())}
    if device.type == "cuda":
        out["peak_mem_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
    return out


def build_loader(args, num_patches: int, batches: int):
    """The training data loader of ``pretrain/`` over ``--data_path``, cycling through the
    photos for ``batches`` batches (JPEG bytes, decoded on the device, with
    ``--decode_on_device``)."""
    from mae_transfer.pretrain.data import ResumableSampler
    from mae_transfer.pretrain.device_decode import dataset_class, make_loader

    ds = dataset_class(args.decode_on_device)(args.data_path, args.input_size, num_patches)
    sampler = ResumableSampler(len(ds), args.batch_size, steps_per_epoch=batches)
    return make_loader(ds, batch_size=args.batch_size, sampler=sampler,
                       num_workers=args.num_workers, pin_memory=torch.cuda.is_available(),
                       prefetch_factor=4 if args.num_workers else None)


def _cpu_seconds() -> Tuple[float, float]:
    """CPU seconds of this process, and of its finished children (loader workers, once joined)."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime, kids.ru_utime + kids.ru_stime


def time_loader(args, num_patches: int, device: torch.device) -> Dict[str, float]:
    """What the data loader delivers (uint8 batches on ``device``, decoded there with
    ``--decode_on_device``): images/s of wall clock and per worker process, and images per
    CPU-second of the workers alone and of workers + this process. CPU time is what sizes a
    machine (cores per GPU), and it does not change when other jobs share the cores."""
    loader = build_loader(args, num_patches, args.loader_batches + 1)
    it = iter(loader)
    next(it)  # workers started, first batch (imports, file lists) out of the clock
    (own0, kids0), t0 = _cpu_seconds(), time.perf_counter()
    n = 0
    for batch, _ in it:
        pixels = batch_pixels(batch, device).to(device)
        n += pixels.shape[0]
    _sync(device)
    wall = time.perf_counter() - t0
    del it  # workers joined: their CPU time is now counted
    own1, kids1 = _cpu_seconds()
    speed = n / wall
    out = {"images_per_s": speed, "num_workers": args.num_workers,
           "images_per_s_per_worker": speed / max(1, args.num_workers),
           "images_per_cpu_s": n / max(own1 - own0 + kids1 - kids0, 1e-9), "images": n,
           "decode_on_device": bool(args.decode_on_device)}
    if args.num_workers:
        out["worker_images_per_cpu_s"] = n / max(kids1 - kids0, 1e-9)
    return out


def time_end_to_end(model, args, device: torch.device) -> Dict[str, float]:
    """Images/s of training steps fed by the real loader from JPEG files (warm-up excluded)."""
    from mae_transfer.pretrain.data import normalize_batch

    step = make_step(model, args, device)
    loader = build_loader(args, model.num_patches, args.warmup + args.steps)
    it = iter(loader)
    for _ in range(args.warmup):
        batch, noise = next(it)
        pixels = batch_pixels(batch, device)
        step(normalize_batch(pixels, device), noise.to(device, non_blocking=True))
    _sync(device)
    t0, n = time.perf_counter(), 0
    for batch, noise in it:
        pixels = batch_pixels(batch, device)
        loss = step(normalize_batch(pixels, device), noise.to(device, non_blocking=True))
        n += pixels.shape[0]
    _sync(device)
    return {"images_per_s": n / (time.perf_counter() - t0), "num_workers": args.num_workers,
            "decode_on_device": bool(args.decode_on_device), "loss": float(loss.detach())}


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--model", choices=sorted(MAE_MODELS), default=None,
                    help="default: mae_vit_base_patch16 on GPU, mae_vit_mini_patch16 on CPU")
    ap.add_argument("--batch_size", type=int, default=None, help="default: 256 GPU, 16 CPU")
    ap.add_argument("--input_size", type=int, default=224)
    ap.add_argument("--mask_ratio", type=float, default=0.75)
    ap.add_argument("--steps", type=int, default=None, help="timed steps (default 30 GPU, 3 CPU)")
    ap.add_argument("--warmup", type=int, default=None, help="untimed steps (default 10 / 1)")
    ap.add_argument("--compile", action="store_true")
    ap.add_argument("--amp", action=argparse.BooleanOptionalAction, default=None,
                    help="bf16 autocast (default: on for CUDA)")
    ap.add_argument("--peak_tflops", type=float, default=None, help="for MFU on unknown GPUs")
    ap.add_argument("--skip_all_patches", action="store_true",
                    help="time the visible-only step alone (no ratio)")
    ap.add_argument("--data_path", default=None, help="also time the data loader on this folder")
    ap.add_argument("--num_workers", type=int, default=min(10, os.cpu_count() or 1))
    ap.add_argument("--loader_batches", type=int, default=20)
    ap.add_argument("--decode_on_device", action="store_true",
                    help="loader ships JPEG bytes; decode + crop + flip on --device")
    ap.add_argument("--skip_synthetic", action="store_true",
                    help="skip the steps on synthetic images (with --data_path: the loader and "
                         "--end_to_end only)")
    ap.add_argument("--end_to_end", action="store_true",
                    help="with --data_path: also time training steps fed by the loader")
    ap.add_argument("--json", default=None, help="write the results to this file")
    args = ap.parse_args(argv)
    gpu = args.device.startswith("cuda")
    args.model = args.model or ("mae_vit_base_patch16" if gpu else "mae_vit_mini_patch16")
    args.batch_size = args.batch_size or (256 if gpu else 16)
    args.steps = args.steps or (30 if gpu else 3)
    args.warmup = args.warmup if args.warmup is not None else (10 if gpu else 1)
    return args


def time_variants(args, device: torch.device, peak: Optional[float]) -> Dict[str, object]:
    """The visible-only step and (unless ``--skip_all_patches``) the all-patches ablation."""
    results: Dict[str, object] = {}
    variants = [("visible_only", False)] + ([] if args.skip_all_patches
                                            else [("all_patches", True)])
    for label, in_encoder in variants:
        torch.manual_seed(0)
        model = build_mae(args.model, img_size=args.input_size,
                          mask_tokens_in_encoder=in_encoder).to(device)
        if device.type == "cuda":
            model.to(memory_format=torch.channels_last)
        flops = forward_flops_per_image(model, args.mask_ratio)
        r = time_steps(model, args, device)
        r["train_gflops_per_image"] = 3 * flops / 1e9
        if peak:
            r["mfu"] = 3 * flops * r["images_per_s"] / (peak * 1e12)
        results[label] = r
        line = (f"  {label:13s} {r['images_per_s']:9.1f} img/s  {r['ms_per_step']:8.1f} ms/step  "
                f"{r['train_gflops_per_image']:7.1f} GFLOP/img (train)  first step "
                f"{r['first_step_s']:.1f} s")
        if "mfu" in r:
            line += f"  MFU {100 * r['mfu']:.1f}% of {peak:.0f} TFLOP/s"
        if "peak_mem_gib" in r:
            line += f"  {r['peak_mem_gib']:.1f} GiB"
        print(line, flush=True)
        del model
        if device.type == "cuda":
            torch.cuda.empty_cache()
    if "all_patches" in results:
        v, a = results["visible_only"], results["all_patches"]
        results["speedup_visible_only"] = v["images_per_s"] / a["images_per_s"]
        results["flops_ratio"] = a["train_gflops_per_image"] / v["train_gflops_per_image"]
        print(f"  visible-only encoding: {results['speedup_visible_only']:.2f}x faster than "
              f"encoding all patches ({results['flops_ratio']:.2f}x fewer FLOPs); the paper "
              f"reports ~3x for ViT-L")
    return results


def main(argv=None) -> int:
    args = parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.benchmark = True
    peak = peak_tflops(device, args.peak_tflops)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    amp = args.amp if args.amp is not None else device.type == "cuda"
    print(f"{args.model}, {args.input_size} px, batch {args.batch_size}, mask {args.mask_ratio}, "
          f"{name}, amp {'bf16' if amp else 'off'}, compile {args.compile}")
    results = {"model": args.model, "device": name, "batch_size": args.batch_size,
               "input_size": args.input_size, "compile": args.compile,
               "amp": "bf16" if amp else None, "peak_tflops": peak}
    if not args.skip_synthetic:
        results.update(time_variants(args, device, peak))
    if args.data_path:
        num_patches = build_mae(args.model, img_size=args.input_size).num_patches
        r = results["loader"] = time_loader(args, num_patches, device)
        where = f"decoded on {device.type}" if args.decode_on_device else "decoded by the workers"
        line = (f"  data loader   {r['images_per_s']:9.1f} img/s with {args.num_workers} workers "
                f"({where}); {r.get('worker_images_per_cpu_s', r['images_per_cpu_s']):.0f} img "
                f"per CPU-second of the workers, {r['images_per_cpu_s']:.0f} with this process")
        if "visible_only" in results:
            line += f"; {r['images_per_s'] / results['visible_only']['images_per_s']:.2f}x " \
                    f"what one step consumes"
        print(line, flush=True)
        if args.end_to_end:
            torch.manual_seed(0)
            model = build_mae(args.model, img_size=args.input_size).to(device)
            if device.type == "cuda":
                model.to(memory_format=torch.channels_last)
            r = results["end_to_end"] = time_end_to_end(model, args, device)
            print(f"  end to end    {r['images_per_s']:9.1f} img/s (training steps fed by the "
                  f"loader from JPEG files)", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
