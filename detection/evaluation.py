"""COCO box / mask evaluation of a detector: the AP table in the log, the numbers as JSON.

Runs the config's test loader and evaluator (the COCO configs:
``mae_transfer.detection.coco_evaluator.FastCOCOEvaluator``, Detectron2's ``COCOEvaluator`` whose
AP is faster-coco-eval's, equal to pycocotools'; pycocotools itself when asked or when
faster-coco-eval is missing), or for an LVIS dataset ``LVISEvaluator``
(``detection/lvis_evaluation.py``; chosen for an LVIS dataset whatever the config names; the table
and the JSON then have APr, APc, APf too), then

- logs the usual AP table (rows bbox / segm; AP, AP50, AP75, APs, APm, APl, in percent) and
  which COCO implementation computed it;
- writes ``<output_dir>/inference/coco_eval_<tag>.json`` and, as the latest result,
  ``<output_dir>/coco_eval.json``: dataset, iteration, evaluator (that implementation), and every
  metric (per category too); NaN (e.g. no predictions, no small objects) becomes ``null`` so the
  file is strict JSON.
"""
from __future__ import annotations

import json
import logging
import math
import os
from typing import Dict, Optional

import torch

from mae_transfer.detection import compat

compat.setup()  # Detectron2 v0.6 cannot be imported without it (no compiled _C, Image.LINEAR)
from detectron2.config import instantiate  # noqa: E402
from detectron2.evaluation import LVISEvaluator, inference_on_dataset  # noqa: E402
from detectron2.utils import comm  # noqa: E402
from tabulate import tabulate  # noqa: E402

from mae_transfer.tools.atomic import atomic_write  # noqa: E402
from mae_transfer.detection.coco_evaluator import describe_evaluator  # noqa: E402
from mae_transfer.detection.datasets import check_num_classes  # noqa: E402
from mae_transfer.detection.lvis_evaluation import (FREQUENCY_COLUMNS,  # noqa: E402
                                                    evaluator_for_dataset)

logger = logging.getLogger("mae_transfer.detection")

#: The summary columns of the AP table (COCOEvaluator's standard metrics).
AP_COLUMNS = ("AP", "AP50", "AP75", "APs", "APm", "APl")


def format_ap_table(results: Dict[str, Dict[str, float]]) -> str:
    """A markdown table, one row per task (bbox, segm), the ``AP_COLUMNS`` in percent (and
    LVIS's ``FREQUENCY_COLUMNS`` when the results have them)."""
    rows = []
    tasks = {t: m for t, m in results.items() if isinstance(m, dict)}
    lvis = any(c in m for m in tasks.values() for c in FREQUENCY_COLUMNS)
    columns = AP_COLUMNS + (FREQUENCY_COLUMNS if lvis else ())
    for task, metrics in tasks.items():
        rows.append([task] + [metrics.get(c, float("nan")) for c in columns])
    return tabulate(rows, headers=("task",) + columns, tablefmt="pipe", floatfmt=".3f",
                    missingval="nan")


def _json_safe(value):
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if hasattr(value, "item"):  # numpy / torch scalars
        return _json_safe(value.item())
    return value


def write_results_json(results: dict, output_dir: str, dataset: str,
                       iteration: Optional[int], evaluator: Optional[str] = None) -> str:
    """Write the results (see the module docstring) atomically; returns the per-run file path."""
    payload = _json_safe({"dataset": dataset, "iteration": iteration, "evaluator": evaluator,
                          "results": results})
    tag = "final" if iteration is None else f"iter{iteration:07d}"
    folder = os.path.join(output_dir, "inference")
    os.makedirs(folder, exist_ok=True)
    paths = [os.path.join(folder, f"coco_eval_{tag}.json"),
             os.path.join(output_dir, "coco_eval.json")]
    def write(tmp: str) -> None:
        with open(tmp, "w") as f:
            json.dump(payload, f, indent=2)

    for path in paths:
        atomic_write(path, write)
    return paths[0]


def evaluate(cfg, model: torch.nn.Module, iteration: Optional[int] = None) -> dict:
    """Evaluate ``model`` on ``cfg.dataloader.test``; returns ``{task: {metric: value}}``."""
    names = cfg.dataloader.test.dataset.names
    if not isinstance(names, str):
        if len(names) != 1:
            raise ValueError(f"evaluate one test dataset at a time, got {list(names)}")
        names = names[0]
    loader = instantiate(cfg.dataloader.test)  # loading the json sets the dataset's classes
    check_num_classes(names, cfg.model.roi_heads.num_classes)
    output_dir = cfg.train.output_dir
    cfg.dataloader.evaluator.output_dir = os.path.join(output_dir, "inference")
    evaluator = instantiate(evaluator_for_dataset(cfg.dataloader.evaluator, names))
    results = inference_on_dataset(model, loader, evaluator)
    if comm.is_main_process():
        when = "final" if iteration is None else f"iteration {iteration}"
        kind = "LVIS" if isinstance(evaluator, LVISEvaluator) else "COCO"
        used = describe_evaluator(evaluator)
        logger.info("%s evaluation on %s (%s), computed by %s:\n%s", kind, names, when, used,
                    format_ap_table(results))
        if not results:
            logger.warning("no AP for %s: its json has no 'annotations' (a test split); the "
                           "predictions are in %s", names, cfg.dataloader.evaluator.output_dir)
        path = write_results_json(dict(results), output_dir, names, iteration, used)
        logger.info("evaluation results written to %s", path)
    return results
