"""Class-agnostic box AP50: does the detector find the objects, whatever class it calls them?

The e2e run's detectors are scored with COCO AP per class; when that is low, this number tells
apart "finds the pasted objects but confuses their classes" from "does not find them". It is
pycocotools' own evaluation with ``params.useCats = 0`` (every detection may match every ground
truth box), on the predictions Detectron2's ``COCOEvaluator`` wrote
(``<run>/inference/coco_instances_results.json``).
"""
from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval


def class_agnostic_ap50(gt_json: Path, predictions_json: Path) -> float:
    """Box AP at IoU 0.5 over all classes merged, in percent; 0 when there is no prediction."""
    predictions = json.loads(Path(predictions_json).read_text())
    if not predictions:
        return 0.0
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its progress
        gt = COCO(str(gt_json))
        evaluation = COCOeval(gt, gt.loadRes(predictions), "bbox")
        evaluation.params.useCats = 0
        evaluation.evaluate()
        evaluation.accumulate()
        evaluation.summarize()
    return float(evaluation.stats[1]) * 100.0
