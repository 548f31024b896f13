"""``SegResultsJSONHook``: write every evaluation's metrics (and per-class table) as JSON files.

After each validation: ``<work_dir>/val_results/iter_<N>.json`` and ``val_results/latest.json``;
after a test run: ``<work_dir>/test_results.json`` (or the path given as ``test_json``). Each file
holds the summary metrics (aAcc, mIoU, mAcc in %), the per-class table when the evaluator is a
``PerClassIoUMetric``, the iteration, the checkpoint evaluated (test) and the class names.
Writes are atomic (temp file + rename), so a crash never leaves a half-written result.
"""
from __future__ import annotations

import json
import os.path as osp
from typing import Dict, Optional

from mmengine.dist import master_only
from mmengine.hooks import Hook
from mmengine.registry import HOOKS

from mae_transfer.tools.atomic import atomic_write


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
    """See the module docstring; ``test_json`` overrides the test results path."""

    priority = "LOW"

    def __init__(self, test_json: Optional[str] = None):
        self.test_json = test_json

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
        runner.logger.info(f"validation results written to {path}")

    @master_only
    def after_test_epoch(self, runner, metrics=None) -> None:
        record = self._record(runner, metrics, runner.test_evaluator)
        record["checkpoint"] = runner.cfg.get("load_from") if runner.cfg else None
        path = write_json_atomic(record, self.test_json or osp.join(runner.work_dir,
                                                                     "test_results.json"))
        runner.logger.info(f"test results written to {path}")
