"""Detectron2's ``COCOEvaluator`` with the AP computed by faster-coco-eval, pycocotools' numbers.

Why: the Detectron2 that installs here (0.6, pure Python) has no compiled fast evaluator, so
every evaluation ran pycocotools' Python ``COCOeval`` (about 25 s per task on 5k images).
faster-coco-eval's ``COCOeval_faster`` does the per-image matching and the accumulation in C++:
6.6x (bbox) and 4.0x (segm) less CPU time on a generated 5k-image set (``bench/coco_eval_speed.py``,
docs/benchmarks.md).

How: ``FastCOCOEvaluator`` is ``COCOEvaluator`` itself (same ``process``, gathering, category
mapping, written predictions, per-category table, results dict); only the COCOeval class that
Detectron2's ``_evaluate_predictions_on_coco`` builds is faster-coco-eval's, and only while this
evaluator evaluates (the name ``COCOeval`` in ``detectron2.evaluation.coco_evaluation`` is
swapped under a lock and put back; Detectron2 0.6 and later builds look it up there at call
time). Everything else stays pycocotools': the ground-truth ``COCO``, ``loadRes`` (so the
detections' areas and boxes are pycocotools'), the parameters.
faster-coco-eval's ``init_as_pycocotools()`` is not used: it would replace pycocotools in the
whole process, ``loadRes`` and mask encoding included.

Equal numbers: recall and the score arrays are identical to pycocotools'; precision differs
only where pycocotools divides by ``tp + fp + np.spacing(1)`` with ``tp + fp == 1`` (1 - 2**-52
instead of 1.0; for ``tp + fp >= 2`` the epsilon vanishes in rounding), so every summary number
differs by at most 2.3e-16 (``tests/detection/test_fast_coco_eval.py`` checks all 12 ``stats``,
bbox and segm, on real COCO photos and on generated data, and the full evaluator's results dict).

pycocotools runs instead (Detectron2's own path, ``use_fast_impl=False``) when
``backend="pycocotools"`` (config: ``dataloader.evaluator.backend=pycocotools``), when
faster-coco-eval cannot be imported (``backend="auto"``), and for what was not checked equal:
keypoints, or ``max_dets_per_image`` other than 100. ``backend_used`` says which one ran; the
evaluation log and ``coco_eval.json`` (``mae_transfer.detection.evaluation``) report it.
"""
from __future__ import annotations

import contextlib
import itertools
import logging
import threading
from typing import Iterable, List, Optional

from mae_transfer.detection import compat

compat.setup()  # Detectron2 v0.6 cannot be imported without it (no compiled _C, np.int)
from detectron2.evaluation import COCOEvaluator  # noqa: E402
from detectron2.evaluation import coco_evaluation as d2_coco_evaluation  # noqa: E402

from mae_transfer.detection.cli import UsageError  # noqa: E402

logger = logging.getLogger(__name__)

#: ``backend`` values: faster-coco-eval when importable / always (an error when not) / never.
BACKENDS = ("auto", "faster_coco_eval", "pycocotools")
#: The tasks whose numbers are checked equal to pycocotools' (keypoints are not).
FAST_TASKS = frozenset({"bbox", "segm"})
#: COCO's detections per image; other limits make Detectron2 use its own ``COCOevalMaxDets``.
COCO_MAX_DETS = [1, 10, 100]

_SWAP_LOCK = threading.Lock()


def faster_coco_eval_version() -> Optional[str]:
    """The installed faster-coco-eval's version, or None when it cannot be imported."""
    try:
        import faster_coco_eval
        from faster_coco_eval import COCOeval_faster  # noqa: F401  (the class we need)
    except ImportError:
        return None
    return str(getattr(faster_coco_eval, "__version__", "unknown"))


def pycocotools_label() -> str:
    """``pycocotools <version>``: the reference evaluator, as the logs and JSON name it."""
    try:
        from importlib.metadata import version
        return f"pycocotools {version('pycocotools')}"
    except Exception:  # an unusual install without metadata
        return "pycocotools"


def describe_evaluator(evaluator) -> str:
    """Which COCO implementation computed the numbers, for the log and ``coco_eval.json``."""
    used = getattr(evaluator, "backend_used", None)
    if used:
        return used
    if isinstance(evaluator, FastCOCOEvaluator):
        return "none (no predictions evaluated)"
    if isinstance(evaluator, COCOEvaluator):
        if getattr(evaluator, "_use_fast_impl", False):
            return "detectron2 COCOeval_opt (compiled)"
        return pycocotools_label()
    return type(evaluator).__name__


def fast_cocoeval_class(evaluated: List[str]):
    """faster-coco-eval's ``COCOeval_faster`` built as Detectron2 builds COCOeval (``cocoGt,
    cocoDt, iouType``); logs its summary as pycocotools prints it and records each task in
    ``evaluated`` (proof that it, not pycocotools, ran)."""
    from faster_coco_eval import COCOeval_faster

    class FasterCOCOeval(COCOeval_faster):
        def __init__(self, cocoGt=None, cocoDt=None, iouType="segm"):
            super().__init__(cocoGt, cocoDt, iouType, print_function=logger.info)
            evaluated.append(iouType)

    return FasterCOCOeval


@contextlib.contextmanager
def _detectron2_cocoeval(cls):
    """Detectron2's evaluation builds ``cls`` instead of pycocotools' ``COCOeval`` inside."""
    with _SWAP_LOCK:
        original = d2_coco_evaluation.COCOeval
        d2_coco_evaluation.COCOeval = cls
        try:
            yield
        finally:
            d2_coco_evaluation.COCOeval = original


class FastCOCOEvaluator(COCOEvaluator):
    """``COCOEvaluator`` computing bbox / segm AP with faster-coco-eval (see the module
    docstring); ``backend`` is one of ``BACKENDS``; the other arguments are COCOEvaluator's."""

    def __init__(self, dataset_name, tasks=None, distributed=True, output_dir=None, *,
                 max_dets_per_image=None, kpt_oks_sigmas=(), backend: str = "auto"):
        if backend not in BACKENDS:
            raise UsageError(f"COCO evaluator backend must be one of {', '.join(BACKENDS)}; "
                             f"got {backend!r} (dataloader.evaluator.backend)")
        if backend == "faster_coco_eval" and faster_coco_eval_version() is None:
            raise UsageError("dataloader.evaluator.backend=faster_coco_eval, but faster-coco-eval "
                             "cannot be imported: pip install faster-coco-eval, or use "
                             "backend=auto / pycocotools")
        super().__init__(dataset_name, tasks=tasks, distributed=distributed,
                         output_dir=output_dir, max_dets_per_image=max_dets_per_image,
                         use_fast_impl=False, kpt_oks_sigmas=kpt_oks_sigmas)
        self.backend = backend
        self.backend_used: Optional[str] = None

    def reset(self):
        super().reset()
        self.backend_used = None

    def fast_backend_reason(self, tasks: Iterable[str]) -> Optional[str]:
        """None when faster-coco-eval evaluates ``tasks``; else why pycocotools does."""
        tasks = set(tasks)
        if self.backend == "pycocotools":
            return "backend=pycocotools"
        if faster_coco_eval_version() is None:
            return "faster-coco-eval cannot be imported"
        if not tasks <= FAST_TASKS:
            return f"tasks {sorted(tasks - FAST_TASKS)} are not checked against pycocotools"
        if list(self._max_dets_per_image) != COCO_MAX_DETS:
            return (f"max_dets_per_image={self._max_dets_per_image[-1]} (only COCO's 100 is "
                    f"checked against pycocotools)")
        return None

    def _eval_predictions(self, predictions, img_ids=None):
        tasks = self._tasks or self._tasks_from_predictions(
            itertools.chain.from_iterable(p["instances"] for p in predictions))
        reason = self.fast_backend_reason(tasks)
        if reason is not None:
            self.backend_used = pycocotools_label()
            logger.info("COCO evaluation (%s) with %s: %s", ", ".join(sorted(tasks)),
                        self.backend_used, reason)
            return super()._eval_predictions(predictions, img_ids=img_ids)

        evaluated: List[str] = []
        with _detectron2_cocoeval(fast_cocoeval_class(evaluated)):
            super()._eval_predictions(predictions, img_ids=img_ids)
        if evaluated:
            self.backend_used = f"faster-coco-eval {faster_coco_eval_version()}"
        elif self._do_evaluation and any(p["instances"] for p in predictions):
            # this Detectron2 no longer builds COCOeval by that name: it ran pycocotools
            logger.warning("Detectron2 did not use faster-coco-eval; pycocotools evaluated")
            self.backend_used = pycocotools_label()
        logger.info("COCO evaluation (%s) with %s", ", ".join(sorted(tasks)),
                    self.backend_used or "nothing (no annotations or no detections)")
