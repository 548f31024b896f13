"""Our MMEngine hooks: ``SegResultsJSONHook`` (results as JSON) and ``FiniteLossHook`` (NaN stop).

``SegResultsJSONHook`` writes every evaluation's metrics (and per-class table) as JSON files.

After each validation: ``<work_dir>/val_results/iter_<N>.json`` and ``val_results/latest.json``;
after a test run: ``<work_dir>/test_results.json`` (or the path given as ``test_json``). Each file
holds the summary metrics (aAcc, mIoU, mAcc in %), the per-class table when the evaluator is a
``PerClassIoUMetric``, the iteration, the checkpoint evaluated (test), the class names, and for
a test what the entry point adds (``test_info``: the test-time augmentation used, or None).
Writes are atomic (temp file + rename), so a crash never leaves a half-written result.
Only rank 0 writes, and it keeps the last record in memory (``last_val`` / ``last_test``), which
is what the entry points print: no rank reads a results file (one another rank wrote, or a stale
one from an earlier run); the other ranks' records stay ``None``.

``FiniteLossHook``: MMEngine trains on through a NaN loss, saves NaN weights, points
``last_checkpoint`` at them and validates them. This hook stops the run at the first non-finite
loss, before the ``CheckpointHook`` (priority VERY_LOW) of that iteration saves anything, and
refuses to save non-finite weights (a step with a finite loss can still overflow the weights);
``last_checkpoint`` keeps naming the last good checkpoint. The ``tools.divergence.TrainingDiverged``
it raises is one line: the iteration, the loss values and the last good checkpoint.
"""
from __future__ import annotations

import json
import math
import os.path as osp
from typing import Dict, Mapping, Optional

from mmengine.dist import master_only
from mmengine.hooks import Hook
from mmengine.registry import HOOKS

from mae_transfer.tools.atomic import atomic_write
from mae_transfer.tools.divergence import diverged, first_non_finite


def write_json_atomic(obj, path: str) -> str:
    """JSON to ``path``, all or nothing (``tools.atomic.atomic_write``)."""
    atomic_write(path, lambda tmp: tmp.write_text(json.dumps(obj, indent=2), encoding="utf-8"))
    return path


def _per_class(evaluator) -> Dict:
    for metric in getattr(evaluator, "metrics", []):
        if getattr(metric, "per_class", None):
            return metric.per_class
    return {}


def _plain(metrics: Optional[Dict]) -> Dict:
    return {k: float(v) for k, v in (metrics or {}).items()
            if isinstance(v, (int, float)) or hasattr(v, "item")}


@HOOKS.register_module()
class SegResultsJSONHook(Hook):
    """See the module docstring; ``test_json`` overrides the test results path; ``test_info``
    (plain JSON values, e.g. ``{"tta": ...}``) is added to the test record."""

    priority = "LOW"

    def __init__(self, test_json: Optional[str] = None, test_info: Optional[Dict] = None):
        self.test_json = test_json
        self.test_info = dict(test_info or {})
        self.last_val: Optional[Dict] = None
        self.last_test: Optional[Dict] = None

    def _record(self, runner, metrics, evaluator) -> Dict:
        per_class = _per_class(evaluator)
        return {"iter": runner.iter, "metrics": _plain(metrics), "per_class": per_class,
                "classes": list(per_class),
                "config": osp.basename(runner.cfg.filename or "") if runner.cfg else ""}

    @master_only
    def after_val_epoch(self, runner, metrics=None) -> None:
        record = self._record(runner, metrics, runner.val_evaluator)
        folder = osp.join(runner.work_dir, "val_results")
        path = write_json_atomic(record, osp.join(folder, f"iter_{runner.iter}.json"))
        write_json_atomic(record, osp.join(folder, "latest.json"))
        self.last_val = record
        runner.logger.info(f"validation results written to {path}")

    @master_only
    def after_test_epoch(self, runner, metrics=None) -> None:
        record = self._record(runner, metrics, runner.test_evaluator)
        record["checkpoint"] = runner.cfg.get("load_from") if runner.cfg else None
        record.update(self.test_info)
        path = write_json_atomic(record, self.test_json or osp.join(runner.work_dir,
                                                                     "test_results.json"))
        self.last_test = record
        runner.logger.info(f"test results written to {path}")


def non_finite_losses(outputs: Optional[Mapping]) -> Dict[str, float]:
    """``{name: value}`` of the non-finite ``*loss*`` entries of a train step's outputs."""
    values = {k: float(v) for k, v in (outputs or {}).items()
              if "loss" in k and (isinstance(v, (int, float)) or hasattr(v, "item"))}
    return {k: v for k, v in values.items() if not math.isfinite(v)}


@HOOKS.register_module()
class FiniteLossHook(Hook):
    """See the module docstring. Runs after each train step, before the checkpoint hook."""

    priority = "ABOVE_NORMAL"

    def after_train_iter(self, runner, batch_idx: int, data_batch=None, outputs=None) -> None:
        bad = non_finite_losses(outputs)
        if bad:
            values = ", ".join(f"{k}={v}" for k, v in bad.items())
            raise diverged(f"iteration {runner.iter + 1}", values, runner.work_dir)

    def before_save_checkpoint(self, runner, checkpoint: dict) -> None:
        name = first_non_finite(checkpoint.get("state_dict", {}))
        if name is not None:
            step = checkpoint.get("meta", {}).get("iter", runner.iter)
            raise diverged(f"iteration {step}", f"weight {name} is not finite", runner.work_dir)
