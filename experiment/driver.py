"""End to end on real images: does MAE pretraining beat random init for detection and segmentation?

    python tools/e2e.py --images /work/shared/data/imagenet-sample --out runs/e2e
    python tools/e2e.py --quick --generated-stamps --out runs/e2e-quick     # CI-sized, ~2 min
    python tools/e2e.py ... --pretrained-run runs/e2e/mae --det-channels 32  # ablation, same encoder
    python tools/e2e.py ... --mae-epochs 75 --baseline-run runs/e2e  # ablation of pretraining

Stages (each one the real entry point, run as a subprocess, its output in ``OUT/logs/``):

1. ``images``: the unlabelled photos (``--images``, default ``imagenet-sample`` in the data root:
   ``$MAE_TRANSFER_DATA``, else ``<repo>/../shared/data``) are shrunk once to a shorter side of ``--mae-size`` + 25% (``OUT/images/``). Why: on a CPU,
   decoding the full-size JPEGs costs ~15x more than the tiny ViT's training step;
2. ``dataset``: the annotated set, real cut-outs pasted on the real photos, plus ``--unlabelled``
   images made from the train split's cut-outs with no label written
   (``tools/make_paste_dataset.py``; ``--generated-stamps`` uses stand-in shapes for CI);
3. ``pretrain-images`` + ``pretrain``: MAE (``python -m mae_transfer.pretrain.main``) on the shrunk photos
   plus, with ``--mae-data photos+paste`` (the default), the paste set's train and unlabelled
   images (pixels only: in-domain pretraining); encoder export. ``--pretrained-run DIR`` skips
   both and fine-tunes from an earlier run's ``mae/`` folder; ``--baseline-run DIR`` takes over
   an earlier run's photos, annotated set and random-init fine-tunes (which do not depend on
   pretraining), so an ablation of pretraining trains only the MAE side;
4. fine-tunes, for every seed and both initialisations (``mae``: the exported encoder;
   ``random``: none), with the same recipe and seed: Mask R-CNN (``tools/train_det.py``,
   ``detection/configs/mask_rcnn_vit_mini_e2e.py``) and UperNet (``tools/train_seg.py``,
   ``segmentation/configs/upernet_vit-mini_e2e_paste-128x128.py``), ``--jobs`` at a time, each
   on one thread; all evaluated on the held-out val split (its cut-outs never occur in train).
   Their settings are data, dicts of config keys (``det_settings``, ``seg_settings``), that one
   function (``render_overrides``) writes as Detectron2 overrides and MMEngine ``--cfg-options``;
5. ``pictures``: reconstruction grid (``tools/visualize_mae.py``), detection and segmentation
   overlays of both initialisations (``tools/demo_det.py``, ``tools/demo_seg.py``) side by side.

Writes ``OUT/results.json`` and ``OUT/results.md`` (one table: pretraining loss start/end, box AP,
mask AP, mIoU and class-agnostic box AP50 per initialisation, mean and spread over seeds, margin,
"MAE wins" per metric and overall, frozen-encoder probe, wall time of each stage) and
``OUT/pictures/*.png``. A finished stage leaves ``OUT/stages/<name>.json``; ``--resume`` skips
those, so an interrupted run continues where it stopped. Exits 1, naming the stage and its log,
if a stage fails, and 3 if a metric is not finite.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional

REPO = Path(__file__).resolve().parents[1]

from PIL import Image

from mae_transfer.experiment.agnostic_ap import class_agnostic_ap50
from mae_transfer.tools.atomic import atomic_write
from mae_transfer.tools.image_inputs import data_root, is_image

DEFAULT_IMAGES = data_root() / "imagenet-sample"
DET_CONFIG = "detection/configs/mask_rcnn_vit_mini_e2e.py"
SEG_CONFIG = "segmentation/configs/upernet_vit-mini_e2e_paste-128x128.py"
INITS = ("mae", "random")
#: The claim: MAE init beats random init on each of these.
CLAIM_METRICS = ("box_AP", "mask_AP", "mIoU")
#: Also reported with margin and spread: does the detector find the objects at all?
METRICS = CLAIM_METRICS + ("box_AP50_agnostic",)
#: The fine-tune configs' training crop (both tasks); the probe sees the images at this size too.
FINETUNE_CROP = 128

#: Full run (about 70 minutes on 2 CPU cores) and the CI run (about two minutes).
PRESETS = {
    "full": dict(arch="vit_mini_patch16", photos=0, mae_size=128, mae_epochs=150, mae_batch=128,
                 mae_lr=1.5e-3, mae_warmup=10, mae_data="photos+paste", train=200, val=200,
                 unlabelled=1000, size=160, classes=8, det_iters=1200, det_channels=64,
                 det_fc=256, seg_iters=1000),
    "quick": dict(arch="vit_mini_patch16", photos=64, mae_size=64, mae_epochs=2, mae_batch=16,
                  mae_lr=1.5e-3, mae_warmup=1, mae_data="photos+paste", train=8, val=4,
                  unlabelled=4, size=64, classes=3, det_iters=4, det_channels=32, det_fc=64,
                  seg_iters=4),
}
#: What MAE pretrains on: the unlabelled photos only, or the photos plus the paste set's train and
#: unlabelled images (in-domain pixels: the train split's cut-outs on photos; no label is read).
MAE_DATA = ("photos", "photos+paste")
#: Settings that change only how MAE pretrains. Everything else in a preset shapes the photos,
#: the annotated set or the fine-tunes, so a --baseline-run must agree on it.
PRETRAIN_ONLY = ("mae_epochs", "mae_batch", "mae_lr", "mae_warmup", "mae_data")


class StageFailed(RuntimeError):
    pass


@dataclass
class Run:
    """Bookkeeping shared by the stages: where things go, what took how long."""
    out: Path
    resume: bool
    timings: Dict[str, float] = field(default_factory=dict)
    #: stages taken over from a --baseline-run: done, whether or not --resume is given
    reused: set = field(default_factory=set)

    @property
    def logs(self) -> Path:
        return self.out / "logs"

    def load_markers(self) -> None:
        """With ``--resume``, every finished stage's recorded time (also those inside stages
        that are skipped whole, like the fine-tunes)."""
        if self.resume:
            for marker in sorted((self.out / "stages").glob("*.json")):
                self.timings[marker.stem] = json.loads(marker.read_text())["seconds"]

    def done_marker(self, name: str) -> Path:
        return self.out / "stages" / f"{name}.json"

    def finished(self, name: str) -> bool:
        """True (and the recorded time restored) when ``--resume`` finds the stage done."""
        marker = self.done_marker(name)
        if (self.resume or name in self.reused) and marker.is_file():
            self.timings[name] = json.loads(marker.read_text())["seconds"]
            log(f"{name}: already done ({marker}), skipped")
            return True
        return False

    def record(self, name: str, seconds: float) -> None:
        self.timings[name] = seconds
        atomic_write(self.done_marker(name),
                     lambda tmp: tmp.write_text(json.dumps({"seconds": seconds})))

    def stage(self, name: str, cmd: List, threads: Optional[int] = None) -> None:
        """Run ``cmd`` from the repo root, output to ``logs/<name>.log``; time it; skip if done."""
        if self.finished(name):
            return
        self.logs.mkdir(parents=True, exist_ok=True)
        logfile = self.logs / f"{name}.log"
        env = dict(os.environ)
        if threads:
            env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
        log(f"{name}: {' '.join(map(str, cmd))}")
        start = time.time()
        with open(logfile, "w") as f:
            proc = subprocess.run([str(c) for c in cmd], cwd=REPO, stdout=f,
                                  stderr=subprocess.STDOUT, env=env)
        seconds = time.time() - start
        if proc.returncode != 0:
            tail = "".join(logfile.read_text().splitlines(keepends=True)[-15:])
            raise StageFailed(f"stage {name} failed (exit {proc.returncode}); log: {logfile}\n"
                              f"{tail}")
        self.record(name, seconds)
        log(f"{name}: done in {seconds:.1f} s")


def log(msg: str) -> None:
    print(f"[e2e {time.strftime('%H:%M:%S')}] {msg}", flush=True)


# ----------------------------------------------------------------------------------- stages

def shrink_images(run: Run, src: Path, short_side: int, limit: int = 0) -> Path:
    """Copy the unlabelled photos (``limit`` of them spread evenly over the name order, so
    ImageNet's classes stay mixed; 0: all) at a shorter side of ``short_side`` px (JPEG q92).

    Unreadable files are logged by name and left out; no readable image is an error."""
    dst = run.out / "images"
    if run.finished("images"):
        return dst
    if not src.is_dir():
        raise StageFailed(f"stage images: {src} is not a folder (pass --images DIR)")
    start = time.time()
    tmp = run.out / "images.partial"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    written = 0
    files = sorted(p for p in src.rglob("*") if is_image(p))
    if limit:
        files = files[::max(1, len(files) // limit)]
    for path in files:
        try:
            with Image.open(path) as im:
                im.draft("RGB", (short_side, short_side))  # DCT-scaled decode: much faster
                im = im.convert("RGB")
                scale = short_side / min(im.size)
                size = (max(short_side, round(im.width * scale)),
                        max(short_side, round(im.height * scale)))
                im.resize(size, Image.BICUBIC).save(tmp / f"{path.stem}.jpg", quality=92)
                written += 1
        except OSError as exc:
            log(f"images: skipped unreadable {path}: {exc}")
        if limit and written >= limit:
            break
    if not written:
        raise StageFailed(f"stage images: no readable image under {src}")
    shutil.rmtree(dst, ignore_errors=True)
    tmp.rename(dst)
    run.record("images", time.time() - start)
    log(f"images: {written} photos at shorter side {short_side} px in {dst}")
    return dst


def reuse_baseline(run: Run, baseline: Path, cfg: dict, seeds: List[int]) -> None:
    """Take over the photos, the annotated set and the random-init fine-tunes of an earlier run.

    Why: random init does not depend on pretraining, and every fine-tune is deterministic, so
    an ablation of pretraining (its data, its length) needs to train only the MAE-init side,
    which halves its cost. The earlier run must agree on every setting outside
    ``PRETRAIN_ONLY`` and hold every seed asked for; its photos and annotated set are copied too
    (this run's ``--images`` is then not read), so both sides see the very same data."""
    if baseline == run.out:
        raise StageFailed(f"--baseline-run {baseline} is this run's own --out: give the earlier "
                          f"run's folder and a new --out (its folders would be replaced by "
                          f"themselves)")
    results_file = baseline / "results.json"
    if not results_file.is_file():
        raise StageFailed(f"--baseline-run {baseline}: no results.json there (give the OUT folder "
                          f"of a finished e2e run)")
    before = json.loads(results_file.read_text())
    differ = [f"{key} {before['settings'].get(key)!r} (here {value!r})"
              for key, value in cfg.items()
              if key not in PRETRAIN_ONLY and before["settings"].get(key) != value]
    if differ:
        raise StageFailed(f"--baseline-run {baseline}: its random-init fine-tunes were made with "
                          f"other settings: {', '.join(differ)}")
    absent = [s for s in seeds if s not in before["seeds"]]
    if absent:
        raise StageFailed(f"--baseline-run {baseline}: no fine-tunes of seed(s) {absent} there "
                          f"(it has {before['seeds']})")
    folders = {"images": ["images"], "dataset": ["paste"]}
    for seed in seeds:
        folders[f"det-random-s{seed}"] = ["det", f"random-s{seed}"]
        folders[f"seg-random-s{seed}"] = ["seg", f"random-s{seed}"]
    for name, parts in folders.items():
        src, dst = baseline.joinpath(*parts), run.out.joinpath(*parts)
        marker = baseline / "stages" / f"{name}.json"
        if not (src.is_dir() and marker.is_file()):
            raise StageFailed(f"--baseline-run {baseline}: stage {name} is not finished there "
                              f"({src})")
        # a resumed ablation keeps what it took over before; otherwise (as every stage without
        # --resume) it is taken over afresh, never left from an earlier run in the same OUT
        if not (run.resume and run.done_marker(name).is_file()):
            shutil.rmtree(dst, ignore_errors=True)
            shutil.copytree(src, dst)
            run.done_marker(name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(marker, run.done_marker(name))
        run.reused.add(name)
    log(f"baseline: photos, annotated set and random-init fine-tunes (seeds {seeds}) taken over "
        f"from {baseline}")


def pretraining_images(run: Run, photos: Path, mae_data: str) -> Path:
    """The folder MAE trains on: ``photos`` itself, or (``photos+paste``) a folder holding the
    photos and the paste set's train and unlabelled images. Only image files are copied: the
    annotations stay where they are and pretraining never sees them."""
    if mae_data == "photos":
        return photos
    dst = run.out / "pretrain_images"
    if run.finished("pretrain-images"):
        return dst
    start = time.time()
    tmp = run.out / "pretrain_images.partial"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    paste = run.out / "paste"
    sources = {"photo": photos, "train": paste / "coco" / "images" / "train",
               "unlabelled": paste / "unlabelled"}
    for prefix, folder in sources.items():
        for path in sorted(folder.glob("*.jpg")) if folder.is_dir() else []:
            shutil.copyfile(path, tmp / f"{prefix}_{path.name}")
    shutil.rmtree(dst, ignore_errors=True)
    tmp.rename(dst)
    run.record("pretrain-images", time.time() - start)
    log(f"pretrain-images: {len(list(dst.glob('*.jpg')))} images in {dst}")
    return dst


def pretrain(run: Run, py: str, cfg: dict, images: Path, n_images: int, mae_dir: Path) -> None:
    """MAE on ``images`` (two threads; resumable: a killed run continues from its checkpoint)."""
    steps = max(1, n_images // cfg["mae_batch"])
    run.stage("pretrain", [
        py, "-m", "mae_transfer.pretrain.main", "--data_path", images, "--model", f"mae_{cfg['arch']}",
        "--input_size", cfg["mae_size"], "--batch_size", cfg["mae_batch"],
        "--epochs", cfg["mae_epochs"], "--warmup_epochs", cfg["mae_warmup"],
        "--lr", cfg["mae_lr"], "--mask_ratio", 0.75, "--norm_pix_loss", "--device", "cpu",
        "--num_workers", 1, "--log_every", max(1, steps * 10), "--seed", 0,
        "--save_every", cfg["mae_epochs"], "--vis_every", cfg["mae_epochs"],
        "--output_dir", mae_dir, "--resume", "auto"], threads=2)


def render_overrides(settings: Dict[str, object]) -> List[str]:
    """Settings as ``key=value`` strings, the form of both Detectron2's LazyConfig overrides and
    MMEngine's ``--cfg-options``.

    Keys are dotted config paths; a dict value nests (``{"train": {"seed": 0}}`` is
    ``train.seed=0``) and a list of dicts addresses the config's list items by position
    (``param_scheduler.1.end=...``). A list of plain values is one value, ``[a,b]`` (no spaces:
    each override is one argument); ``None`` is the empty value (``train.init_checkpoint=``: none).
    """
    rendered = []
    for key, value in settings.items():
        if isinstance(value, dict):
            rendered += [f"{key}.{item}" for item in render_overrides(value)]
        elif isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
            rendered += [f"{key}.{i}.{item}" for i, v in enumerate(value)
                         for item in render_overrides(v)]
        else:
            rendered.append(f"{key}={_override_value(value)}")
    return rendered


def _override_value(value) -> str:
    if value is None:
        return ""
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(_override_value(v) for v in value) + "]"
    return str(value)


def det_model_settings(cfg: dict, num_classes: int) -> Dict[str, object]:
    """The detector's shape, shared by training and the demo pictures (the model must be built
    the same way to load its weights): class count, ViT, pyramid and head widths. Detectron2's
    mask head takes its upsampling deconv's width as the last of ``conv_dims``."""
    ch = cfg["det_channels"]
    return {"model.roi_heads.num_classes": num_classes, "model.backbone.net.name": cfg["arch"],
            "model.backbone.out_channels": ch,
            "model.roi_heads.box_head.conv_dims": [ch, ch],
            "model.roi_heads.box_head.fc_dims": [cfg["det_fc"]],
            "model.roi_heads.mask_head.conv_dims": [ch, ch, ch]}


def det_settings(cfg: dict, seed: int, out: Path, num_classes: int,
                 init_checkpoint: Optional[Path]) -> Dict[str, object]:
    """One Mask R-CNN fine-tune: ``det_iters`` iterations, evaluated and saved once at the end;
    ``init_checkpoint`` None: random init."""
    n = cfg["det_iters"]
    return {"train.output_dir": out, "train.max_iter": n, "train.eval_period": n,
            "train.checkpointer.period": n, "train.seed": seed,
            **det_model_settings(cfg, num_classes), "train.init_checkpoint": init_checkpoint}


def seg_settings(cfg: dict, seed: int) -> Dict[str, object]:
    """One UperNet fine-tune: ``seg_iters`` iterations, validated and saved once at the end. The
    e2e config's two schedulers, in its order: linear warm-up over the first 4% of the
    iterations, then poly decay to the end."""
    n = cfg["seg_iters"]
    warmup = max(1, n // 25)
    return {"train_cfg.max_iters": n, "train_cfg.val_interval": n,
            "default_hooks.checkpoint.interval": n,
            "param_scheduler": [{"end": warmup}, {"begin": warmup, "end": n}],
            "randomness.seed": seed, "model.backbone.arch": cfg["arch"]}


def finetune_jobs(run: Run, py: str, cfg: dict, seeds: List[int], encoder: Path,
                  num_classes: int) -> List[tuple]:
    """(name, command) of every fine-tune: task x seed x init, same recipe for both inits."""
    jobs = []
    coco, ade = run.out / "paste" / "coco", run.out / "paste" / "ade" / "ADEChallengeData2016"
    for seed in seeds:
        for init in INITS:
            checkpoint = encoder if init == "mae" else None
            det_out = run.out / "det" / f"{init}-s{seed}"
            jobs.append((f"det-{init}-s{seed}", [
                py, "tools/train_det.py", "--config", DET_CONFIG, "--overwrite",
                "--dataset", f"paste={coco}",
                *render_overrides(det_settings(cfg, seed, det_out, num_classes, checkpoint))]))
            pretrained = ["--pretrained", checkpoint] if checkpoint else []
            jobs.append((f"seg-{init}-s{seed}", [
                py, "tools/train_seg.py", SEG_CONFIG, "--data-root", ade, *pretrained,
                "--work-dir", run.out / "seg" / f"{init}-s{seed}", "--overwrite",
                "--cfg-options", *render_overrides(seg_settings(cfg, seed))]))
    return jobs


def run_parallel(run: Run, jobs: List[tuple], workers: int) -> None:
    """Run the fine-tunes ``workers`` at a time (one thread each); the first failure stops all
    that have not started, and is raised after the running ones finish."""
    failures: List[Exception] = []

    def one(job):
        if failures:
            return
        try:
            run.stage(job[0], job[1], threads=1)
        except StageFailed as exc:
            failures.append(exc)

    with ThreadPoolExecutor(max_workers=workers) as pool:
        list(pool.map(one, jobs))
    if failures:
        raise failures[0]


def pictures(run: Run, py: str, mae_dir: Path, seed: int, workers: int, cfg: dict,
             count: int = 3) -> Dict[str, str]:
    """Reconstruction grid and side-by-side overlays (random init | MAE init) of ``count`` val
    images for both tasks, as PNGs in ``OUT/pictures``. Detections are drawn from a score of
    0.15: after a CPU-sized schedule the classifier's scores stay low (top scores ~0.2-0.35)."""
    pic = run.out / "pictures"
    pic.mkdir(parents=True, exist_ok=True)
    val_dir = run.out / "paste" / "coco" / "images" / "val"
    val = sorted(val_dir.glob("*.jpg"))[:count]
    photos = sorted((run.out / "images").glob("*.jpg"))
    photos = photos[::max(1, len(photos) // 6)][:6]
    jobs = [("pictures-recon", [py, "tools/visualize_mae.py", mae_dir / "checkpoint-last.pth",
                                *photos, "--out", pic / "reconstruction.png", "--device", "cpu"])]
    det_cfg = render_overrides(det_model_settings(cfg, num_classes_of(run.out)))
    coco = run.out / "paste" / "coco"
    for init in INITS:
        jobs.append((f"pictures-det-{init}", [
            py, "tools/demo_det.py", "--config", DET_CONFIG, "--device", "cpu",
            "--weights", run.out / "det" / f"{init}-s{seed}" / "model_final.pth",
            "--input", *val, "--output", pic / f"det-{init}", "--confidence", "0.15",
            "--dataset", f"paste={coco}", *det_cfg]))
        seg_dir = run.out / "seg" / f"{init}-s{seed}"
        ckpt = (seg_dir / "last_checkpoint").read_text().strip()
        seg_cfg = seg_dir / Path(SEG_CONFIG).name  # the run's own config, overrides included
        jobs.append((f"pictures-seg-{init}", [py, "tools/demo_seg.py", seg_cfg, ckpt, *val,
                                              "--out", pic / f"seg-{init}", "--device", "cpu"]))
    run_parallel(run, jobs, workers)
    files = {"reconstruction": str(pic / "reconstruction.png")}
    for task, suffix in (("det", ".jpg"), ("seg", ".png")):
        target = pic / f"{task}_random_vs_mae.png"
        side_by_side([[pic / f"{task}-{init}" / f"{v.stem}{suffix}" for init in INITS]
                      for v in val], target)
        files[task] = str(target)
    return files


def side_by_side(rows: List[List[Path]], target: Path) -> None:
    """One PNG: a row per image, a column per initialisation (random | MAE)."""
    images = [[Image.open(p).convert("RGB") for p in row] for row in rows]
    w = max(im.width for row in images for im in row)
    h = max(im.height for row in images for im in row)
    grid = Image.new("RGB", (w * len(images[0]) + 4 * (len(images[0]) - 1),
                             h * len(images) + 4 * (len(images) - 1)), "white")
    for r, row in enumerate(images):
        for c, im in enumerate(row):
            grid.paste(im, (c * (w + 4), r * (h + 4)))
    grid.save(target, optimize=True)


# ---------------------------------------------------------------------------------- results

def num_classes_of(out: Path) -> int:
    return len(json.loads((out / "paste" / "dataset.json").read_text())["classes"])


def pretrain_losses(mae_dir: Path) -> tuple:
    """First and last epoch loss from the pretraining log (a JSON line per epoch)."""
    rows = [json.loads(line) for line in (mae_dir / "log.txt").read_text().splitlines() if line]
    return rows[0]["train_loss"], rows[-1]["train_loss"]


def ap_or_zero(value: float) -> float:
    """COCO AP is NaN when a model predicts nothing at all: that is an AP of 0."""
    return 0.0 if value is None or (isinstance(value, float) and math.isnan(value)) else value


def finetune_metrics(out: Path, init: str, seed: int) -> Dict[str, float]:
    det_dir = out / "det" / f"{init}-s{seed}"
    det = json.loads((det_dir / "coco_eval.json").read_text())["results"]
    seg = json.loads((out / "seg" / f"{init}-s{seed}" / "val_results" / "latest.json")
                     .read_text())["metrics"]
    agnostic = class_agnostic_ap50(out / "paste" / "coco" / "annotations" / "instances_val.json",
                                   det_dir / "inference" / "coco_instances_results.json")
    return {"box_AP": ap_or_zero(det["bbox"]["AP"]), "mask_AP": ap_or_zero(det["segm"]["AP"]),
            "mIoU": seg["mIoU"], "box_AP50_agnostic": agnostic}


def summarise(values: List[float]) -> Dict[str, float]:
    """Mean, sample standard deviation (0 for one seed) and min/max over seeds."""
    return {"mean": statistics.fmean(values),
            "std": statistics.stdev(values) if len(values) > 1 else 0.0,
            "min": min(values), "max": max(values), "per_seed": values}


def compare(per_init: Dict[str, Dict[str, Dict]]) -> Dict[str, Dict]:
    """MAE minus random for each metric, against the spread over seeds (the larger of the two
    initialisations' standard deviations). ``mae_wins``: the margin is positive and larger than
    that spread; ``ranges_disjoint``: the worst MAE seed beats the best random seed."""
    verdict = {}
    for metric in (m for m in METRICS if m in per_init["mae"]):
        m, r = per_init["mae"][metric], per_init["random"][metric]
        margin = m["mean"] - r["mean"]
        spread = max(m["std"], r["std"])
        verdict[metric] = {"margin": margin, "spread": spread,
                           "mae_wins": margin > 0 and margin > spread,
                           "ranges_disjoint": m["min"] > r["max"]}
    return verdict


def markdown(results: dict) -> str:
    per, cmp_, sec = results["finetune"], results["comparison"], results["seconds"]
    seeds = results["seeds"]
    pre = results["pretrain"]
    if pre.get("from_run"):
        head = (f"MAE encoder ({pre['model']}) from the earlier run {pre['from_run']}: loss "
                f"{pre['loss_start']:.4f} -> {pre['loss_end']:.4f}")
    else:
        data = ("unlabelled photos" if pre["data"] == "photos" else
                "images: the unlabelled photos + the paste set's train and unlabelled images")
        head = (f"MAE pretraining ({pre['model']}, {pre['input_size']} px, {pre['epochs']} epochs "
                f"on {pre['images']} {data}): loss {pre['loss_start']:.4f} -> "
                f"{pre['loss_end']:.4f} ({sec['pretrain']:.0f} s)")
    lines = [head, ""]
    if results.get("baseline_run"):
        lines += [f"Photos, annotated set and random-init fine-tunes taken over from the earlier "
                  f"run {results['baseline_run']} (random init does not depend on pretraining; "
                  f"their seconds below are that run's).", ""]
    lines += [f"Fine-tunes on the held-out val split, mean ± std over seeds {seeds} "
             f"(per seed in brackets):", "",
             "| metric | random init | MAE init | margin | spread | MAE wins |",
             "|---|---|---|---|---|---|"]
    for metric in METRICS:
        cells = []
        for init in ("random", "mae"):
            s = per[init][metric]
            cells.append(f"{s['mean']:.1f} ± {s['std']:.1f} "
                         f"[{', '.join(f'{v:.1f}' for v in s['per_seed'])}]")
        c = cmp_[metric]
        lines.append(f"| {metric} | {cells[0]} | {cells[1]} | {c['margin']:+.1f} | "
                     f"{c['spread']:.1f} | {'yes' if c['mae_wins'] else 'no'} |")
    wins = [m for m in CLAIM_METRICS if cmp_[m]["mae_wins"]]
    lines += ["", f"MAE wins on {len(wins)} of {len(CLAIM_METRICS)} metrics"
              + (f" ({', '.join(wins)})" if wins else "")
              + ("" if len(wins) < len(CLAIM_METRICS) else ": MAE wins") + ". (box_AP50_agnostic: "
              "box AP at IoU 0.5 with the classes merged, whether the objects are found at all.)"]
    probe = results["probe"]
    lines += ["", "Frozen encoder, linear probe of instance features on the val split's unseen "
              "cut-outs (`tools/probe_instances.py`; accuracy ± standard error):", "",
              "| encoder | logistic acc (%) | nearest mean acc (%) | chance (%) | val instances |",
              "|---|---|---|---|---|"]
    for init in ("random", "mae"):
        r = probe[init]
        lines.append(f"| {init} | {r['logistic_acc']:.1f} ± {r['logistic_se']:.1f} | "
                     f"{r['centroid_acc']:.1f} ± {r['centroid_se']:.1f} | {r['chance_acc']:.1f} | "
                     f"{r['val_instances']} |")
    lines += ["", "| stage | seconds |", "|---|---|"]
    for name, value in sec.items():
        lines.append(f"| {name} | {value:.1f} |")
    return "\n".join(lines) + "\n"


def collect(run: Run, cfg: dict, seeds: List[int], mae_dir: Path, n_images: int,
            from_run: Optional[Path] = None, baseline: Optional[Path] = None) -> dict:
    loss_start, loss_end = pretrain_losses(mae_dir)
    per_init = {}
    for init in INITS:
        rows = [finetune_metrics(run.out, init, s) for s in seeds]
        per_init[init] = {k: summarise([row[k] for row in rows]) for k in rows[0]}
    t = run.timings
    stage_seconds = {"images": t.get("images", 0.0), "dataset": t.get("dataset", 0.0),
                     "pretrain-images": t.get("pretrain-images", 0.0),
                     "pretrain": t.get("pretrain", 0.0)}
    for task in ("det", "seg"):
        for init in INITS:
            stage_seconds[f"{task}-{init} (sum over seeds)"] = sum(
                t.get(f"{task}-{init}-s{s}", 0.0) for s in seeds)
    stage_seconds["finetunes (wall)"] = t.get("finetunes", 0.0)
    stage_seconds["probe"] = t.get("probe", 0.0)
    stage_seconds["pictures (wall)"] = t.get("pictures", 0.0)
    # the sum of the stages' wall times (stored in OUT/stages, so a --resume'd run reports the
    # time of the work it kept, not of the resume)
    stage_seconds["total (wall)"] = sum(t.get(k, 0.0) for k in (
        "images", "dataset", "pretrain-images", "pretrain", "finetunes", "probe", "pictures"))
    probe = json.loads((run.out / "probe.json").read_text())["results"]
    comparison = compare(per_init)
    return {
        "seeds": seeds, "settings": cfg,
        "pretrain": {"model": f"mae_{cfg['arch']}", "input_size": cfg["mae_size"],
                     "epochs": cfg["mae_epochs"], "images": n_images, "data": cfg["mae_data"],
                     "from_run": str(from_run) if from_run else None,
                     "loss_start": loss_start, "loss_end": loss_end},
        "baseline_run": str(baseline) if baseline else None,
        "finetune": per_init, "comparison": comparison,
        "mae_wins_all": all(comparison[m]["mae_wins"] for m in CLAIM_METRICS),
        "probe": {"random" if name == "random" else "mae": r for name, r in probe.items()},
        "seconds": {k: round(v, 1) for k, v in stage_seconds.items()},
    }


def all_finite(results: dict) -> bool:
    values = [results["pretrain"]["loss_start"], results["pretrain"]["loss_end"]]
    values += [r["logistic_acc"] for r in results["probe"].values()]
    for per_metric in results["finetune"].values():
        for s in per_metric.values():
            values += s["per_seed"]
    return all(isinstance(v, (int, float)) and math.isfinite(v) for v in values)


# ------------------------------------------------------------------------------------- main

def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--out", type=Path, default=REPO / "runs" / "e2e")
    ap.add_argument("--images", type=Path, default=DEFAULT_IMAGES,
                    help="unlabelled photos for pretraining and as paste backgrounds")
    ap.add_argument("--seeds", type=int, nargs="+", default=None,
                    help="fine-tune seeds (default: 0 1 2; --quick: 0)")
    ap.add_argument("--jobs", type=int, default=2, help="fine-tunes run at once (one thread each)")
    ap.add_argument("--quick", action="store_true", help="CI-sized run (tiny everything)")
    ap.add_argument("--generated-stamps", action="store_true",
                    help="stand-in shape cut-outs instead of the Tux Paint photos (no fetch)")
    ap.add_argument("--resume", action="store_true", help="skip the stages already done in OUT")
    ap.add_argument("--pretrained-run", type=Path, default=None, metavar="DIR",
                    help="skip pretraining and fine-tune from this earlier e2e run's MAE folder "
                         "(OUT/mae of it: encoder.safetensors, checkpoint-last.pth, log.txt), "
                         "e.g. to measure a fine-tuning change against the same encoder")
    ap.add_argument("--baseline-run", type=Path, default=None, metavar="DIR",
                    help="take over the photos, annotated set and random-init fine-tunes of this "
                         "earlier e2e run (its OUT folder; same settings except pretraining's), so "
                         "an ablation of pretraining trains only the MAE side; --images is not read")
    for key, value in PRESETS["full"].items():
        ap.add_argument(f"--{key.replace('_', '-')}", type=type(value), default=None,
                        choices=MAE_DATA if key == "mae_data" else None,
                        help=f"override the preset (full: {value}, quick: "
                             f"{PRESETS['quick'][key]})")
    return ap


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    cfg = dict(PRESETS["quick" if args.quick else "full"])
    cfg.update({k: getattr(args, k) for k in cfg if getattr(args, k) is not None})
    seeds = args.seeds if args.seeds is not None else ([0] if args.quick else [0, 1, 2])
    run = Run(out=args.out.resolve(), resume=args.resume)
    run.out.mkdir(parents=True, exist_ok=True)
    run.load_markers()
    py = sys.executable
    try:
        if args.baseline_run is not None:
            reuse_baseline(run, args.baseline_run.resolve(), cfg, seeds)
        photos = shrink_images(run, args.images, round(cfg["mae_size"] * 1.25), cfg["photos"])
        paste = [py, "tools/make_paste_dataset.py", "--out", run.out / "paste",
                 "--backgrounds", photos, "--train", cfg["train"], "--val", cfg["val"],
                 "--unlabelled", cfg["unlabelled"], "--size", cfg["size"],
                 "--classes", cfg["classes"], "--seed", 0]
        if args.generated_stamps:
            # stand-in shapes cannot be mistaken for the animals in ImageNet photos
            paste += ["--generated-stamps", run.out / "stamps", "--min-instances", 3,
                      "--keep-lookalike-backgrounds"]
        run.stage("dataset", paste)
        mae_dir, n_mae_images = run.out / "mae", None
        if args.pretrained_run is not None:
            mae_dir = args.pretrained_run.resolve()
            if not (mae_dir / "encoder.safetensors").is_file():
                raise StageFailed(f"--pretrained-run {mae_dir}: no encoder.safetensors there "
                                  f"(give the mae/ folder of an earlier e2e run)")
            log(f"pretrain: skipped, fine-tuning from {mae_dir}")
        else:
            mae_images = pretraining_images(run, photos, cfg["mae_data"])
            n_mae_images = len(list(mae_images.glob("*.jpg")))
            pretrain(run, py, cfg, mae_images, n_mae_images, mae_dir)
        encoder = mae_dir / "encoder.safetensors"
        jobs = finetune_jobs(run, py, cfg, seeds, encoder, num_classes_of(run.out))
        if not run.finished("finetunes"):  # wall time of all of them, --jobs at a time
            ft_start = time.time()
            run_parallel(run, jobs, args.jobs)
            run.record("finetunes", time.time() - ft_start)
        run.stage("probe", [py, "tools/probe_instances.py", "--coco", run.out / "paste" / "coco",
                            "--arch", cfg["arch"], "--size", FINETUNE_CROP, "--checkpoint",
                            "random", "--checkpoint", encoder, "--seed", 0,
                            "--out", run.out / "probe.json"], threads=2)
        pic_start = time.time()
        files = pictures(run, py, mae_dir, seeds[0], args.jobs, cfg)
        if not run.finished("pictures"):
            run.record("pictures", time.time() - pic_start)
    except StageFailed as exc:
        print(f"[e2e] FAILED: {exc}", file=sys.stderr)
        return 1
    results = collect(run, cfg, seeds, mae_dir, n_mae_images, args.pretrained_run,
                      args.baseline_run and args.baseline_run.resolve())
    results["files"] = {**files, "encoder": str(encoder)}
    (run.out / "results.json").write_text(json.dumps(results, indent=2))
    table = markdown(results)
    (run.out / "results.md").write_text(table)
    print("\n" + table)
    log(f"results: {run.out / 'results.json'}, {run.out / 'results.md'}; pictures in "
        f"{run.out / 'pictures'}")
    if not all_finite(results):
        print("[e2e] a metric is not finite", file=sys.stderr)
        return 3
    return 0


if __name__ == "__main__":
    sys.exit(main())
