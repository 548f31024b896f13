"""LVIS box / mask AP: Detectron2's ``LVISEvaluator`` (the ``lvis`` package's ``LVISEval``).

What Detectron2's evaluator computes, unchanged: predictions in LVIS's result format (category ids
of the json), at most ``max_dets_per_image`` (300, LVIS's rule) per image kept by score
(``LVISResults``), ``LVISEval`` for bbox and for segm (mask areas, not box areas, for
small / medium / large), the federated rules (a detection of a category neither annotated nor in
the image's ``neg_category_ids`` is not counted; one of a ``not_exhaustive_category_ids``
category is not a false positive). Metrics per task: AP, AP50, AP75, APs, APm, APl and APr, APc,
APf (AP over the rare / common / frequent categories), in percent. Ours on top:

- ``tasks`` default ``("bbox", "segm")``, ``max_dets_per_image`` default 300;
- a json that is not in LVIS format stops in one line naming it, when the evaluator is made
  (``LVISEval`` would stop at its first image with a ``KeyError``);
- a metric ``LVISEval`` cannot compute (its -1: e.g. no rare category among the ground truth, no
  small object) is NaN, not -100, as ``COCOEvaluator`` reports an empty area range.

``evaluator_for_dataset`` gives an LVIS dataset this evaluator when a config names another one
(e.g. a COCO config pointed at an LVIS json).
"""
from __future__ import annotations

import importlib.metadata
import logging
import math

from mae_transfer.detection import compat

compat.setup()  # Detectron2 v0.6 cannot be imported without it (no compiled _C, Image.LINEAR)
from detectron2.config import LazyCall as L  # noqa: E402
from detectron2.data import MetadataCatalog  # noqa: E402
from detectron2.evaluation.lvis_evaluation import \
    LVISEvaluator as Detectron2LVISEvaluator  # noqa: E402
from detectron2.utils.registry import locate  # noqa: E402

from mae_transfer.detection.datasets import DatasetError  # noqa: E402
from mae_transfer.detection.lvis_datasets import lvis_format_problem  # noqa: E402

logger = logging.getLogger("mae_transfer.detection")

#: LVIS's limit on detections per image (``LVISResults``' default, ViTDet's LVIS configs).
MAX_DETS_PER_IMAGE = 300
#: The AP columns LVIS adds to COCO's: AP over the rare / common / frequent categories.
FREQUENCY_COLUMNS = ("APr", "APc", "APf")


class LVISEvaluator(Detectron2LVISEvaluator):
    """Detectron2's ``LVISEvaluator`` with the defaults and checks of the module docstring."""

    def __init__(self, dataset_name: str, tasks=("bbox", "segm"), distributed: bool = True,
                 output_dir=None, *, max_dets_per_image: int = MAX_DETS_PER_IMAGE):
        super().__init__(dataset_name, tasks, distributed, output_dir,
                         max_dets_per_image=max_dets_per_image)
        #: what computed the numbers, for the log and ``coco_eval.json`` (as FastCOCOEvaluator's)
        self.backend_used = f"lvis {importlib.metadata.version('lvis')} LVISEval"
        problem = lvis_format_problem(self._lvis_api.dataset)
        if problem:
            raise DatasetError(f"{self._metadata.json_file}: not an LVIS json, which "
                               f"LVISEvaluator needs ({problem})")

    def evaluate(self):
        results = super().evaluate()
        if not results:
            return results
        return {task: {k: (v if not isinstance(v, float) or v >= 0 else math.nan)
                       for k, v in metrics.items()} if isinstance(metrics, dict) else metrics
                for task, metrics in results.items()}


def _is_lvis_evaluator(evaluator_cfg) -> bool:
    target = evaluator_cfg.get("_target_") if hasattr(evaluator_cfg, "get") else None
    if isinstance(target, str):
        try:
            target = locate(target)
        except Exception:  # an unimportable target: instantiate reports it
            return False
    return isinstance(target, type) and issubclass(target, Detectron2LVISEvaluator)


def evaluator_for_dataset(evaluator_cfg, dataset_name: str):
    """The evaluator config for ``dataset_name``: ``evaluator_cfg`` itself, except for an LVIS
    dataset (``evaluator_type == "lvis"``) under a non-LVIS evaluator: then ``LVISEvaluator``
    (bbox + segm, 300 detections, the same ``output_dir``), with a log line saying so."""
    if MetadataCatalog.get(dataset_name).get("evaluator_type") != "lvis":
        return evaluator_cfg
    if _is_lvis_evaluator(evaluator_cfg):
        return evaluator_cfg
    logger.info("%s is an LVIS dataset: evaluating it with LVISEvaluator (LVISEval, %d "
                "detections per image) instead of the config's evaluator", dataset_name,
                MAX_DETS_PER_IMAGE)
    return L(LVISEvaluator)(dataset_name=dataset_name, output_dir=evaluator_cfg.get("output_dir"))
