"""The GPU acceptance check: every speed target measured, every GPU path run, in one command.

    python bench/acceptance.py                     # one GPU: the papers' sizes, <= 8 min wall
    python bench/acceptance.py --device cpu --tiny # the same code at toy sizes (a few minutes)
    python bench/acceptance.py --parts pretrain,det --data shared-photos/

Parts (each a few child processes of the existing benchmarks and entry points; a failed or timed
out run is recorded with its error and the check goes on):
  pretrain  MAE ViT-B/16 and ViT-L/16 at 224 px, bf16 + SDPA + fused AdamW, with and without
            ``--compile``: img/s, MFU (fvcore FLOPs x3 / the GPU's bf16 peak), peak memory,
            visible-only vs all-patches speed-up; compile time reported apart (first step)
  loader    ViT-B fed by the real loader from JPEG files (``--data``, else the data root's;
            generated ones, said in the output, where it has none, as in a plain clone; the
            photos are cycled to fill the run), all CPU cores as workers, decoded by the workers and on the GPU
            (``--decode_on_device``): img/s end to end, loader img/s per CPU-second
  det       ViTDet-B Mask R-CNN train step, 1024 px, batch 2, bf16: fused vs explicit attention
  seg       UperNet ViT-B 512 px train step, ours vs MMSeg's own ``MAE`` backbone (same run)
  entry     a few iterations of ``tools/pretrain.sh --compile``, ``tools/train_det.py`` with AMP,
            ``tools/train_seg.py`` with ``AmpOptimWrapper``: finite losses, checkpoints written,
            evaluation (or reconstruction pictures) done

Writes ``<out>/acceptance-<device>-<date>.json`` (every number, command, error) and ``.md`` (the
table, also printed), plus each child's log under ``<out>/logs-<device>-<date>/``. Default
``<out>``: ``bench/results/``. Details and how to read them: docs/benchmarks.md.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.acceptance_checks import ENTRY_CHECKS  # noqa: E402
from bench.acceptance_report import markdown, summarize  # noqa: E402
from mae_transfer.tools.image_inputs import DATA_ENV, data_root, is_jpeg  # noqa: E402

PARTS = ("pretrain", "loader", "det", "seg", "entry")
#: Photos written for the loader and pretrain.sh parts where the data root has none (a plain
#: clone): COCO's 640x480, enough to fill a batch of the size in use before they cycle.
GENERATED_PHOTOS = {"tiny": 16, "full": 64}


@dataclass
class Run:
    """One child process of the check: its command, time limit and how to read its result."""

    part: str
    name: str
    cmd: List[str]
    timeout_s: float
    json_path: Optional[Path] = None  # the child's --json output
    check: Optional[Callable[[Path], Dict]] = None  # reads an entry point's outputs
    workdir: Optional[Path] = None


def photo_folder(data: Path) -> Optional[Path]:
    """Full-size photos for the loader: ``<data>/coco-mini`` (640x480 COCO) when present,
    else ``<data>`` itself (any folder of JPEGs)."""
    for candidate in (data / "coco-mini", data):
        if candidate.is_dir() and any(is_jpeg(p) for p in candidate.rglob("*")):
            return candidate
    return None


def choose_photos(data: Optional[Path], tiny: bool, work: Path) -> Tuple[Path, Optional[str]]:
    """The photos of the loader and pretrain.sh parts, and a line for the output when they are
    generated.

    ``--data`` given: its photos (``photo_folder``), or the folder itself, so that a wrong path
    fails those parts naming it. Not given: the data root's photos (``$MAE_TRANSFER_DATA``, else
    ``../shared/data``); where it has none (a plain clone) generated 640x480 JPEGs in ``work``,
    so that every part still runs, its speed then not that of real photos.
    """
    if data is not None:
        return photo_folder(data) or data, None
    root = data_root()
    found = photo_folder(root)
    if found is not None:
        return found, None
    from mae_transfer.tools.synthetic_data import write_synthetic_images

    count = GENERATED_PHOTOS["tiny" if tiny else "full"]
    folder = write_synthetic_images(work / "generated-photos", count=count, size=(480, 640))
    return folder, (f"no photos under {root} (set {DATA_ENV} or pass --data DIR): the loader and "
                    f"pretrain.sh parts run on {count} generated 640x480 JPEGs in {folder}")


def sizes(tiny: bool, cpus: int) -> Dict[str, object]:
    """The papers' settings on a GPU; toy ones (same code) with ``--tiny``."""
    if tiny:
        return dict(
            mae_b="mae_vit_mini_patch16", mae_l=None, img=64, batch_b=4, batch_l=4, steps=1,
            warmup=1, workers=1, loader_batches=2,
            det_config="detection/configs/mask_rcnn_vit_mini_cpu.py", det_arch="vit_mini_patch16",
            det_size=128, det_batch=1, det_iters=1, det_warmup=1,
            seg_arch="vit_mini_patch16", seg_size=64, seg_iters=1, seg_warmup=1,
            entry_model="mae_vit_mini_patch16", entry_batch=4, entry_steps=2, entry_iters=4)
    return dict(
        mae_b="mae_vit_base_patch16", mae_l="mae_vit_large_patch16", img=224, batch_b=256,
        batch_l=128, steps=15, warmup=3, workers=max(1, cpus), loader_batches=10,
        det_config="detection/configs/mask_rcnn_vitdet_b_coco.py", det_arch="vit_base_patch16",
        det_size=1024, det_batch=2, det_iters=5, det_warmup=2,
        seg_arch="vit_base_patch16", seg_size=512, seg_iters=5, seg_warmup=2,
        entry_model="mae_vit_base_patch16", entry_batch=256, entry_steps=8, entry_iters=20)


def plan(args, stamp: str) -> List[Run]:
    """Every run of the selected parts, in order."""
    s = sizes(args.tiny, os.cpu_count() or 1)
    py = sys.executable
    res = args.work or args.out / f"runs-{stamp}"
    dev = ["--device", args.device]
    amp = ["--amp"] if args.device == "cpu" else []  # CPU: bf16 autocast only when asked
    peak = ["--peak_tflops", str(args.peak_tflops)] if args.peak_tflops else []
    photos = args.photos or choose_photos(args.data, args.tiny, res)[0]
    runs: List[Run] = []
    last: List[Run] = []  # the costliest compilation goes last: a short budget drops it first
    if "pretrain" in args.parts:
        for key, model, batch in (("b", s["mae_b"], s["batch_b"]), ("l", s["mae_l"], s["batch_l"])):
            if model is None:
                continue
            for compiled in (False, True):
                name = f"vit_{key}" + ("_compiled" if compiled else "")
                out = res / f"pretrain_{name}.json"
                cmd = [py, "bench/pretrain_throughput.py", *dev, *amp, *peak, "--model", model,
                       "--input_size", str(s["img"]), "--batch_size", str(batch), "--steps",
                       str(s["steps"]), "--warmup", str(s["warmup"]), "--json", str(out)]
                if compiled:  # the ablation's ratio is measured uncompiled: no second compile
                    cmd += ["--compile", "--skip_all_patches"]
                run = Run("pretrain", name, cmd, 240 if compiled else 150, out)
                (last if compiled and key == "l" else runs).append(run)
    if "loader" in args.parts:
        for on_device in (False, True):
            name = "decode_on_device" if on_device else "decode_in_workers"
            out = res / f"loader_{name}.json"
            cmd = [py, "bench/pretrain_throughput.py", *dev, *amp, "--model", s["mae_b"],
                   "--input_size", str(s["img"]), "--batch_size", str(s["batch_b"]),
                   "--steps", str(s["steps"]), "--warmup", str(s["warmup"]),
                   "--num_workers", str(s["workers"]), "--loader_batches",
                   str(s["loader_batches"]), "--skip_synthetic", "--end_to_end",
                   "--data_path", str(photos), "--json", str(out)]
            if on_device:
                cmd.append("--decode_on_device")
            runs.append(Run("loader", name, cmd, 150, out))
    if "det" in args.parts:
        out = res / "det_step.json"
        runs.append(Run("det", "vitdet_step", [
            py, "bench/det_step.py", *dev, "--config", s["det_config"], "--arch", s["det_arch"],
            "--size", str(s["det_size"]), "--batch", str(s["det_batch"]), "--iters",
            str(s["det_iters"]), "--warmup", str(s["det_warmup"]), "--amp", "bf16", "--json",
            str(out)], 180, out))
    if "seg" in args.parts:
        out = res / "seg_step.json"
        runs.append(Run("seg", "upernet_step", [
            py, "bench/seg_step.py", *dev, "--arch", s["seg_arch"], "--size", str(s["seg_size"]),
            "--iters", str(s["seg_iters"]), "--warmup", str(s["seg_warmup"]), "--json", str(out)],
            180, out))
    if "entry" in args.parts:
        runs += entry_runs(args, s, res, photos)
    return runs + last


def entry_runs(args, s, res: Path, photos: Path) -> List[Run]:
    """A few iterations of each training entry point, on the device, with its GPU options."""
    from mae_transfer.tools.synthetic_data import make_shapes_dataset

    cpu = args.device == "cpu"
    shapes = res / "shapes"
    if not (shapes / "coco").is_dir():
        make_shapes_dataset(shapes, num_train=8, num_val=2, size=128)
    py = sys.executable
    pre, det, seg = res / "entry_pretrain", res / "entry_det", res / "entry_seg"
    steps = s["entry_steps"]
    pretrain_cmd = ["bash", "tools/pretrain.sh", "--", "--data_path", str(photos),
                    "--model", s["entry_model"], "--input_size", str(s["img"]), "--batch_size",
                    str(s["entry_batch"]), "--epochs", "1", "--steps_per_epoch", str(steps),
                    "--warmup_epochs", "0", "--log_every", "1", "--vis_every", "1",
                    "--vis_images", "2", "--num_workers", str(s["workers"]), "--compile",
                    "--output_dir", str(pre), "--overwrite"]
    if cpu:
        pretrain_cmd += ["--device", "cpu", "--amp"]
    iters = s["entry_iters"]
    det_cmd = [py, "tools/train_det.py", "--overwrite",
               "--config", "detection/configs/mask_rcnn_vit_mini_cpu.py",
               "--dataset", f"custom={shapes / 'coco'}", f"train.output_dir={det}",
               f"train.device={'cpu' if cpu else 'cuda'}", "train.amp.enabled=True",
               f"train.max_iter={iters}", f"train.eval_period={iters}",
               f"train.checkpointer.period={iters}", "train.log_period=1"]
    if cpu:
        det_cmd.append("train.amp.cpu=True")
    seg_cmd = [py, "tools/train_seg.py",
               "segmentation/configs/upernet_vit-mini_1xb4-40it_shapes-64x64.py",
               "--data-root", str(shapes / "ade" / "ADEChallengeData2016"), "--work-dir", str(seg),
               "--overwrite",
               "--cfg-options", f"train_cfg.max_iters={iters}", f"train_cfg.val_interval={iters}",
               f"default_hooks.checkpoint.interval={iters}", "default_hooks.logger.interval=1"]
    return [Run("entry", "pretrain_sh_compile", pretrain_cmd, 300, check=ENTRY_CHECKS["pretrain"],
                workdir=pre),
            Run("entry", "train_det_amp", det_cmd, 240, check=ENTRY_CHECKS["det"], workdir=det),
            Run("entry", "train_seg_amp", seg_cmd, 240, check=ENTRY_CHECKS["seg"], workdir=seg)]


def tail(text: str, lines: int = 15) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


def execute(run: Run, limit: float, log_dir: Path, env: Dict[str, str]) -> Dict:
    """Run one child for at most ``limit`` seconds; its result dict (``status`` ok / failed /
    timeout / skipped)."""
    record: Dict = {"part": run.part, "name": run.name, "cmd": run.cmd}
    if limit < 10:
        record.update(status="skipped", error="the wall-clock budget (--budget_s) is spent")
        return record
    if run.json_path:
        run.json_path.parent.mkdir(parents=True, exist_ok=True)
        run.json_path.unlink(missing_ok=True)
    # PYTHON: tools/pretrain.sh runs this interpreter, not whichever python3 is first on PATH
    # (a virtual environment used without being activated).
    env = dict(os.environ, PYTHONPATH=str(REPO), PYTHONWARNINGS="ignore",
               PYTHON=sys.executable, **env)
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(run.cmd, cwd=REPO, capture_output=True, text=True, timeout=limit,
                              env=env)
        out, rc = proc.stdout + proc.stderr, proc.returncode
    except subprocess.TimeoutExpired as exc:
        out = (exc.stdout or b"").decode(errors="replace") if isinstance(exc.stdout, bytes) \
            else (exc.stdout or "")
        record.update(status="timeout", error=f"killed after {limit:.0f} s", wall_s=limit)
        (log_dir / f"{run.part}_{run.name}.log").write_text(out)
        return record
    record["wall_s"] = round(time.perf_counter() - t0, 1)
    (log_dir / f"{run.part}_{run.name}.log").write_text(out)
    try:
        if rc:
            raise RuntimeError(f"exit status {rc}: {tail(out, 8)}")
        if run.json_path:
            record["result"] = json.loads(run.json_path.read_text())
        if run.check:
            record["result"] = run.check(run.workdir)
        record["status"] = "ok"
    except Exception as exc:  # noqa: BLE001 - every failure is recorded, the check goes on
        record.update(status="failed", error=f"{type(exc).__name__}: {exc}"[:3000])
    return record


def device_info(device: str) -> Dict:
    import torch

    info = {"device": device, "torch": torch.__version__, "cpus": os.cpu_count()}
    if device.startswith("cuda") and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
        info["cuda"] = torch.version.cuda
    elif device.startswith("cuda"):
        info["gpu"] = None
        info["note"] = "no CUDA device visible"
    return info


def slug(info: Dict) -> str:
    name = info.get("gpu") or ("cpu" if info["device"] == "cpu" else "nogpu")
    return re.sub(r"[^A-Za-z0-9]+", "-", name).strip("-").lower()


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cuda", help="cuda (the check) or cpu (with --tiny)")
    ap.add_argument("--tiny", action="store_true", help="toy sizes: the same code in minutes")
    ap.add_argument("--parts", default=",".join(PARTS),
                    help=f"comma-separated subset of {','.join(PARTS)}")
    ap.add_argument("--data", type=Path, default=None,
                    help=f"photos for the loader and pretrain.sh; its coco-mini/ is used when "
                         f"present (default: ${DATA_ENV}, else ../shared/data; where that holds "
                         f"no JPEGs, generated ones)")
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    ap.add_argument("--budget_s", type=float, default=None,
                    help="wall-clock budget: a run gets at most what is left, runs that would "
                         "start after it are skipped (default 480 on a GPU, 1800 on a CPU)")
    ap.add_argument("--keep_runs", action="store_true",
                    help="keep the children's work folders (checkpoints: GBs on a GPU) under "
                         "<out>/runs-<device>-<date>/; by default they are deleted once checked")
    ap.add_argument("--peak_tflops", type=float, default=None,
                    help="dense bf16 peak of an unlisted GPU, for MFU")
    args = ap.parse_args(argv)
    args.parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    bad = [p for p in args.parts if p not in PARTS]
    if bad:
        ap.error(f"unknown parts {bad}; choose from {list(PARTS)}")
    cpu = args.device == "cpu"
    if args.budget_s is None:
        args.budget_s = 1800.0 if cpu else 480.0
    # Runs' limits are sized for the GPU; a CPU (2 shared cores in CI) gets four times longer.
    args.timeout_scale = 4.0 if cpu else 1.0
    # CPU: one thread a process. Two shared cores with OpenMP threads that spin while other
    # processes hold the cores make compiled CPU kernels 80x slower (measured), and inductor's
    # cache is per thread count (the tests compile with one thread too).
    args.child_env = {"OMP_NUM_THREADS": "1"} if cpu else {}
    args.out = args.out.resolve()
    args.work = None  # main() picks the children's work folder
    args.data = args.data.resolve() if args.data is not None else None
    args.photos = None  # main() picks them (choose_photos)
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    started = time.perf_counter()
    info = device_info(args.device)
    stamp = f"{slug(info)}-{datetime.datetime.now().strftime('%Y%m%d-%H%M')}"
    args.out.mkdir(parents=True, exist_ok=True)
    log_dir = args.out / f"logs-{stamp}"
    log_dir.mkdir(exist_ok=True)
    args.work = (args.out / f"runs-{stamp}" if args.keep_runs
                 else Path(tempfile.mkdtemp(prefix=f"acceptance-{stamp}-")))
    report = {"info": info, "tiny": args.tiny, "parts": args.parts,
              "data": str(args.data or data_root()), "budget_s": args.budget_s,
              "started": datetime.datetime.now().isoformat(timespec="seconds"), "runs": []}
    try:
        args.photos, report["photos_note"] = choose_photos(args.data, args.tiny, args.work)
        report["photos"] = str(args.photos)
        if report["photos_note"]:
            print(report["photos_note"], flush=True)
        runs = plan(args, stamp)
    except Exception as exc:  # noqa: BLE001 - e.g. the shapes data could not be written
        runs = []
        report["error"] = f"planning failed: {type(exc).__name__}: {exc}"
    for run in runs:
        remaining = args.budget_s - (time.perf_counter() - started)
        print(f"[{time.perf_counter() - started:5.0f} s] {run.part}/{run.name} ...", flush=True)
        record = execute(run, min(run.timeout_s * args.timeout_scale, remaining), log_dir,
                         args.child_env)
        print(f"        {record['status']}" + (f": {record['error'][:300]}"
                                               if record.get("error") else ""), flush=True)
        report["runs"].append(record)
    report["wall_s"] = round(time.perf_counter() - started, 1)
    report["summary"] = summarize(report)
    json_path = args.out / f"acceptance-{stamp}.json"
    json_path.write_text(json.dumps(report, indent=2))
    if not args.keep_runs:
        shutil.rmtree(args.work, ignore_errors=True)
    table = markdown(report)
    (args.out / f"acceptance-{stamp}.md").write_text(table)
    print(table)
    print(f"wrote {json_path} and {json_path.with_suffix('.md')} (logs: {log_dir})")
    return 0 if all(r["status"] == "ok" for r in report["runs"]) and runs else 1


if __name__ == "__main__":
    sys.exit(main())
