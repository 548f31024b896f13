"""What "an entry point ran" means in ``bench/acceptance.py``: read the files a short run left and
check them (finite losses, checkpoints written, evaluation done). Each check returns the figures
it found, or raises with the reason."""
from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Dict, List


class CheckFailed(AssertionError):
    """An entry point exited 0 but did not leave what a training run must leave."""


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise CheckFailed(message)


def _finite(values: List[float], what: str) -> None:
    _require(bool(values), f"no {what} logged")
    bad = [v for v in values if not math.isfinite(v)]
    _require(not bad, f"non-finite {what}: {bad[:3]}")


def check_pretrain(out: Path) -> Dict:
    """``tools/pretrain.sh``: epoch losses, training checkpoint, encoder export, picture."""
    epochs = [json.loads(line) for line in (out / "log.txt").read_text().splitlines()]
    losses = [e["train_loss"] for e in epochs]
    _finite(losses, "epoch loss")
    for name in ("checkpoint-last.pth", "encoder.safetensors"):
        _require((out / name).is_file(), f"{name} not written")
    pictures = sorted((out / "vis").glob("*.png"))
    _require(bool(pictures), "no reconstruction picture written")
    log = (out / "train.log").read_text()
    return {"loss": losses[-1], "images_per_s": epochs[-1].get("images_per_s"),
            "compiled": "--compile True" in log, "picture": pictures[-1].name}


def check_det(out: Path) -> Dict:
    """``tools/train_det.py``: per-iteration losses, final checkpoint, COCO evaluation."""
    lines = [json.loads(line) for line in (out / "metrics.json").read_text().splitlines()]
    losses = [m["total_loss"] for m in lines if "total_loss" in m]
    _finite(losses, "total_loss")
    _require((out / "model_final.pth").is_file(), "model_final.pth not written")
    _require((out / "coco_eval.json").is_file(), "no evaluation (coco_eval.json)")
    evaluation = json.loads((out / "coco_eval.json").read_text())
    log = (out / "log.txt").read_text() if (out / "log.txt").is_file() else ""
    autocast = re.search(r"\(autocast (torch\.\w+)\)", log)
    return {"loss": losses[-1], "iterations": len(losses),
            "autocast": autocast.group(1) if autocast else None,
            "evaluation": evaluation}


def check_seg(out: Path) -> Dict:
    """``tools/train_seg.py``: logged losses, iteration checkpoint, validation JSON."""
    scalars = [json.loads(line) for p in out.glob("*/vis_data/scalars.json")
               for line in p.read_text().splitlines()]
    losses = [s["loss"] for s in scalars if "loss" in s]
    _finite(losses, "loss")
    last = (out / "last_checkpoint")
    _require(last.is_file(), "no checkpoint written")
    results = sorted((out / "val_results").glob("iter_*.json"))
    _require(bool(results), "no validation results")
    # The config the run used (MMEngine dumps it into the work dir): which optimizer wrapper.
    dumped = "\n".join(p.read_text() for p in out.glob("*.py"))
    wrapper = ("AmpOptimWrapper" if "AmpOptimWrapper" in dumped
               else "OptimWrapper (AmpOptimWrapper is GPU-only in MMEngine)")
    return {"loss": losses[-1], "iterations": len(losses), "optim_wrapper": wrapper,
            "metrics": json.loads(results[-1].read_text()).get("metrics")}


ENTRY_CHECKS = {"pretrain": check_pretrain, "det": check_det, "seg": check_seg}
