"""``PerClassIoUMetric``: MMSeg's ``IoUMetric`` that also keeps the per-class table as numbers.

``IoUMetric`` prints the per-class IoU / Acc table but returns only the means (aAcc, mIoU, mAcc),
so the table would be lost to anything but the log. This subclass computes the same numbers from
the same accumulated areas and keeps them in ``self.per_class`` for ``SegResultsJSONHook`` to
write; the returned metrics (and the log) are exactly ``IoUMetric``'s.
"""
from __future__ import annotations

import math
from typing import Dict, Optional

from mmseg.evaluation import IoUMetric
from mmseg.registry import METRICS


def _percent(value) -> Optional[float]:
    value = float(value)
    return None if math.isnan(value) else round(value * 100, 2)


@METRICS.register_module()
class PerClassIoUMetric(IoUMetric):
    """``IoUMetric``; after each evaluation ``per_class = {class: {"IoU": %, "Acc": %, ...}}``.

    A class absent from both the predictions and the labels has ``None`` (NaN in MMSeg's table).
    """

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.per_class: Dict[str, Dict[str, Optional[float]]] = {}

    def compute_metrics(self, results: list) -> Dict[str, float]:
        metrics = super().compute_metrics(results)
        if self.format_only or not results:
            return metrics
        intersect, union, pred, label = (sum(parts) for parts in zip(*results))
        per_metric = self.total_area_to_metrics(intersect, union, pred, label, self.metrics,
                                                self.nan_to_num, self.beta)
        per_metric.pop("aAcc", None)
        names = self.dataset_meta["classes"]
        self.per_class = {name: {key: _percent(values[i]) for key, values in per_metric.items()}
                          for i, name in enumerate(names)}
        return metrics
