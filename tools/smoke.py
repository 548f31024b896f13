"""End-to-end smoke run: the whole toolkit in miniature, in about a minute on a CPU.

    python tools/smoke.py [--out runs/smoke] [--images DIR]

1. MAE-pretrain a tiny ViT for a few steps on ``imagenet-sample`` in the data root
   (``$MAE_TRANSFER_DATA``, else ``../shared/data``) or ``--images`` (generated images where
   neither exists) and export the encoder;
2. convert the encoder to the Detectron2 and MMSeg layouts (``tools/convert_checkpoint.py``);
3. fine-tune Mask R-CNN (Detectron2) and UperNet (MMSeg) a few iterations each from it, on a
   small generated shapes set in the COCO and ADE20K layouts;
4. print one table: pretraining loss, box AP, mask AP, mIoU, and each stage's wall time.

Every stage is the real entry point run as a user would run it (a subprocess), so this checks the
install as much as the code. Exits non-zero, naming the stage and its log, if any stage fails.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from mae_transfer.tools.image_inputs import data_root  # noqa: E402
from mae_transfer.tools.synthetic_data import make_shapes_dataset, write_synthetic_images  # noqa: E402

DEFAULT_IMAGES = data_root() / "imagenet-sample"
DET_CONFIG = "detection/configs/mask_rcnn_vit_mini_cpu.py"
SEG_CONFIG = "segmentation/configs/upernet_vit-mini_1xb4-40it_shapes-64x64.py"


class StageFailed(RuntimeError):
    pass


def run_stage(name: str, cmd: list, log_dir: Path, timings: dict) -> None:
    """Run ``cmd`` from the repo root, its output to ``log_dir/<name>.log``; time it."""
    log = log_dir / f"{name}.log"
    print(f"[smoke] {name}: {' '.join(map(str, cmd))}", flush=True)
    start = time.time()
    with open(log, "w") as f:
        proc = subprocess.run([str(c) for c in cmd], cwd=REPO, stdout=f, stderr=subprocess.STDOUT)
    timings[name] = time.time() - start
    if proc.returncode != 0:
        tail = "".join(log.read_text().splitlines(keepends=True)[-15:])
        raise StageFailed(f"stage {name} failed (exit {proc.returncode}); log: {log}\n{tail}")
    print(f"[smoke] {name}: done in {timings[name]:.1f} s", flush=True)


def pretrain_losses(out: Path) -> tuple:
    """First and last epoch loss from the pretraining log (a JSON line per epoch)."""
    rows = [json.loads(line) for line in (out / "log.txt").read_text().splitlines() if line]
    return rows[0]["train_loss"], rows[-1]["train_loss"]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=REPO / "runs" / "smoke")
    ap.add_argument("--images", type=Path, default=None,
                    help=f"unlabelled images for pretraining (default: {DEFAULT_IMAGES})")
    args = ap.parse_args(argv)
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    logs = out / "logs"
    logs.mkdir(exist_ok=True)
    timings: dict = {}
    py = sys.executable

    images = args.images or DEFAULT_IMAGES
    if not images.is_dir():
        print(f"[smoke] {images} not found: generating 32 images instead", flush=True)
        images = write_synthetic_images(out / "generated_images", count=32, size=(96, 96))
    start = time.time()
    shapes = make_shapes_dataset(out / "shapes", num_train=16, num_val=4, size=128)
    timings["data"] = time.time() - start

    mae_out = out / "mae"
    encoder = mae_out / "encoder.safetensors"
    try:
        run_stage("pretrain", [py, "-m", "mae_transfer.pretrain.main", "--data_path", images,
                               "--model", "mae_vit_mini_patch16", "--input_size", "64",
                               "--batch_size", "8", "--epochs", "2", "--steps_per_epoch", "4",
                               "--warmup_epochs", "1", "--device", "cpu", "--num_workers", "2",
                               "--log_every", "2", "--vis_every", "2", "--output_dir", mae_out,
                               "--overwrite"],  # a smoke run always starts afresh
                  logs, timings)
        run_stage("convert", [py, "tools/convert_checkpoint.py", encoder,
                              out / "encoder_detectron2.pth", "--to", "detectron2"], logs, timings)
        run_stage("convert_mmseg", [py, "tools/convert_checkpoint.py", encoder,
                                    out / "encoder_mmseg.pth", "--to", "mmseg"], logs, timings)
        det_out = out / "detection"
        run_stage("detection", [py, "tools/train_det.py", "--config", DET_CONFIG, "--overwrite",
                                "--dataset", f"custom={shapes['coco']}",
                                f"train.output_dir={det_out}",
                                f"train.init_checkpoint={out / 'encoder_detectron2.pth'}"],
                  logs, timings)
        seg_out = out / "segmentation"
        run_stage("segmentation", [py, "tools/train_seg.py", SEG_CONFIG,
                                   "--data-root", shapes["ade"], "--work-dir", seg_out,
                                   "--overwrite",
                                   "--pretrained", out / "encoder_mmseg.pth"], logs, timings)
    except StageFailed as exc:
        print(f"[smoke] FAILED: {exc}", file=sys.stderr)
        return 1

    loss_start, loss_end = pretrain_losses(mae_out)
    det = json.loads((det_out / "coco_eval.json").read_text())["results"]
    seg = json.loads((seg_out / "val_results" / "latest.json").read_text())["metrics"]
    summary = {
        "pretrain_loss_start": loss_start, "pretrain_loss_end": loss_end,
        "box_AP": det["bbox"]["AP"], "mask_AP": det["segm"]["AP"], "mIoU": seg["mIoU"],
        "seconds": {k: round(v, 1) for k, v in timings.items()},
        "files": {"encoder": str(encoder), "detector": str(det_out / "model_final.pth"),
                  "segmentor_dir": str(seg_out), "reconstructions": str(mae_out / "vis")},
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    print("\n| stage | result | seconds |\n|---|---|---|")
    print(f"| MAE pretraining (vit_mini, 64 px) | loss {loss_start:.4f} -> {loss_end:.4f} "
          f"| {timings['pretrain']:.1f} |")
    print(f"| convert encoder -> detectron2, mmseg | ok | "
          f"{timings['convert'] + timings['convert_mmseg']:.1f} |")
    print(f"| Mask R-CNN (Detectron2) | box AP {det['bbox']['AP']:.1f}, "
          f"mask AP {det['segm']['AP']:.1f} | {timings['detection']:.1f} |")
    print(f"| UperNet (MMSeg) | mIoU {seg['mIoU']:.1f} | {timings['segmentation']:.1f} |")
    print(f"\n[smoke] summary: {out / 'summary.json'}")
    finite = all(isinstance(v, (int, float)) and math.isfinite(v) for v in
                 (loss_start, loss_end, det["bbox"]["AP"], det["segm"]["AP"], seg["mIoU"]))
    return 0 if finite else 1


if __name__ == "__main__":
    sys.exit(main())
