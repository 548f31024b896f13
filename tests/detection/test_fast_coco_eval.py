"""faster-coco-eval gives pycocotools' numbers (``mae_transfer.detection.coco_evaluator``).

On the same detections, pycocotools' ``COCOeval`` and ours must agree on all 12 summary numbers
(``stats``), bbox and segm, to 1e-12; in fact the per-threshold arrays agree exactly (recall,
scores) except one documented float: pycocotools' precision ``tp / (tp + fp + eps)`` is
``1 / (1 + eps)`` where ``tp + fp == 1`` and faster-coco-eval's is 1.0. Detections: made from the
ground truth by ``mae_transfer.tools.synthetic_detections`` (jittered boxes, jittered polygons or
shifted / eroded / dilated masks, misses, wrong classes, duplicates, false positives, tied
scores), on the real COCO photos' annotations of ``../shared/data/coco-mini`` (skipped where it
is absent) and on generated annotations (always).
"""
from __future__ import annotations

import contextlib
import copy
import io
import json
import math
import sys

import numpy as np
import pytest
import torch
from pycocotools import mask as mask_util
from pycocotools.cocoeval import COCOeval

from detectron2.data import MetadataCatalog
from detectron2.evaluation import COCOEvaluator
from detectron2.evaluation import coco_evaluation as d2_coco_evaluation
from detectron2.structures import Boxes, Instances

from mae_transfer.detection.cli import UsageError
from mae_transfer.detection.coco_evaluator import (FastCOCOEvaluator, _detectron2_cocoeval,
                                                   fast_cocoeval_class, describe_evaluator)
from mae_transfer.tools.synthetic_detections import (coco_api, perturbed_detections,
                                                     synthetic_ground_truth)

#: pycocotools' precision where tp + fp == 1 (it adds np.spacing(1) to the denominator).
PYCOCOTOOLS_ONE = 1.0 / (1.0 + np.spacing(1))



def _run(cocoeval_class, dataset: dict, detections: list, iou_type: str):
    """Detectron2's per-task evaluation (``_evaluate_predictions_on_coco``): mask AP without the
    boxes (mask areas), pycocotools' ``loadRes``, evaluate, accumulate, summarize."""
    gt = coco_api(dataset)
    results = copy.deepcopy(detections)
    if iou_type == "segm":
        for r in results:
            r.pop("bbox")
    with contextlib.redirect_stdout(io.StringIO()):
        evaluation = cocoeval_class(gt, gt.loadRes(results), iou_type)
        evaluation.evaluate()
        evaluation.accumulate()
        evaluation.summarize()
    return evaluation


def _assert_pycocotools_numbers(dataset, detections, iou_type):
    ran = []
    ours = _run(fast_cocoeval_class(ran), dataset, detections, iou_type)
    reference = _run(COCOeval, dataset, detections, iou_type)
    assert ran == [iou_type]  # faster-coco-eval did run
    assert len(ours.stats) == len(reference.stats) == 12
    np.testing.assert_allclose(ours.stats, reference.stats, rtol=0, atol=1e-12)
    for key in ("recall", "scores"):
        assert np.array_equal(ours.eval[key], reference.eval[key]), key
    precision = reference.eval["precision"]
    assert np.array_equal(ours.eval["precision"],
                          np.where(precision == PYCOCOTOOLS_ONE, 1.0, precision))
    return np.asarray(reference.stats)


def _assert_not_trivial(stats):
    assert 0.05 < stats[0] < 0.9, stats  # AP: neither empty nor perfect
    assert all(0 < s < 1 for s in stats), stats  # every area range populated


@pytest.fixture(scope="module")
def generated():
    """40 generated images, 80 categories (ids with gaps), polygons + crowd RLE; detections."""
    dataset = synthetic_ground_truth(40, seed=3)
    return dataset, perturbed_detections(dataset, seed=4)


@pytest.fixture(scope="module")
def real(coco_mini):
    """coco-mini's val2017 annotations (79 photos, 80 categories, 5 crowd RLE); detections."""
    dataset = json.loads((coco_mini / "annotations" / "instances_val2017.json").read_text())
    return dataset, perturbed_detections(dataset, seed=0)


@pytest.mark.parametrize("iou_type", ["bbox", "segm"])
def test_generated_detections_get_pycocotools_numbers(generated, iou_type):
    dataset, detections = generated
    assert any(a["iscrowd"] for a in dataset["annotations"])
    assert len({d["score"] for d in detections}) < len(detections)  # tied scores
    _assert_not_trivial(_assert_pycocotools_numbers(dataset, detections, iou_type))


@pytest.mark.parametrize("iou_type", ["bbox", "segm"])
def test_real_coco_detections_get_pycocotools_numbers(real, iou_type):
    dataset, detections = real
    assert len({d["category_id"] for d in detections}) > 50
    _assert_not_trivial(_assert_pycocotools_numbers(dataset, detections, iou_type))


# ------------------------------------------------------ the evaluator, as Detectron2 drives it
@pytest.fixture
def registered(tmp_path, request):
    """``register(dataset) -> name``: a Detectron2 metadata entry for a COCO json (contiguous
    classes in the json's category order), removed after the test."""
    names = []

    def register(dataset: dict) -> str:
        name = f"fast_eval_{request.node.name}_{len(names)}"
        path = tmp_path / f"{name}.json"
        path.write_text(json.dumps(dataset))
        cats = sorted(dataset["categories"], key=lambda c: c["id"])
        MetadataCatalog.get(name).set(
            json_file=str(path), thing_classes=[c["name"] for c in cats],
            thing_dataset_id_to_contiguous_id={c["id"]: i for i, c in enumerate(cats)})
        names.append(name)
        return name

    yield register
    for name in names:
        MetadataCatalog.remove(name)


def _model_outputs(dataset: dict, detections: list, name: str):
    """(inputs, outputs) pairs as ``inference_on_dataset`` hands them to ``process``."""
    to_contiguous = MetadataCatalog.get(name).thing_dataset_id_to_contiguous_id
    per_image = {img["id"]: [] for img in dataset["images"]}
    for det in detections:
        per_image[det["image_id"]].append(det)
    sizes = {img["id"]: (img["height"], img["width"]) for img in dataset["images"]}
    for image_id, dets in per_image.items():
        boxes = torch.tensor([[x, y, x + w, y + h] for x, y, w, h in (d["bbox"] for d in dets)],
                             dtype=torch.float32).reshape(-1, 4)
        masks = np.stack([mask_util.decode(d["segmentation"]) for d in dets]) if dets else \
            np.zeros((0, *sizes[image_id]), dtype=np.uint8)
        instances = Instances(sizes[image_id], pred_boxes=Boxes(boxes),
                              scores=torch.tensor([d["score"] for d in dets]),
                              pred_classes=torch.tensor([to_contiguous[d["category_id"]]
                                                         for d in dets], dtype=torch.int64),
                              pred_masks=torch.from_numpy(masks.astype(bool)))
        yield [{"image_id": image_id}], [{"instances": instances}]


def _evaluate(evaluator, pairs):
    evaluator.reset()
    for inputs, outputs in pairs:
        evaluator.process(inputs, outputs)
    return evaluator.evaluate()


def _assert_same_results(ours: dict, reference: dict, atol: float = 1e-12):
    assert list(ours) == list(reference) == ["bbox", "segm"]
    for task in reference:
        assert list(ours[task]) == list(reference[task]), task  # AP..APl, then AP-<class>
        for metric, value in reference[task].items():
            if math.isnan(value):
                assert math.isnan(ours[task][metric]), (task, metric)
            else:
                assert abs(ours[task][metric] - value) <= atol, (task, metric)


def _compare_evaluators(dataset, detections, name, tmp_path):
    pairs = list(_model_outputs(dataset, detections, name))
    reference = COCOEvaluator(name, tasks=("bbox", "segm"), distributed=False,
                              output_dir=str(tmp_path / "pycocotools"), use_fast_impl=False)
    ours = FastCOCOEvaluator(name, tasks=("bbox", "segm"), distributed=False,
                             output_dir=str(tmp_path / "ours"))
    expected = _evaluate(reference, pairs)
    got = _evaluate(ours, pairs)
    _assert_same_results(got, expected)
    assert ours.backend_used.startswith("faster-coco-eval ")
    assert describe_evaluator(ours) == ours.backend_used
    assert describe_evaluator(reference).startswith("pycocotools")
    # Detectron2's module is left as it was: pycocotools' COCOeval
    assert d2_coco_evaluation.COCOeval is COCOeval
    written = [json.loads((tmp_path / side / "coco_instances_results.json").read_text())
               for side in ("pycocotools", "ours")]
    assert written[0] == written[1]
    return got


def test_evaluator_equals_pycocotools_evaluator_on_generated_data(generated, registered,
                                                                  tmp_path):
    dataset, detections = generated
    got = _compare_evaluators(dataset, detections, registered(dataset), tmp_path)
    assert 5 < got["segm"]["AP"] < 90


def test_evaluator_equals_pycocotools_evaluator_on_real_coco(real, registered, tmp_path):
    dataset, detections = real
    got = _compare_evaluators(dataset, detections, registered(dataset), tmp_path)
    assert 5 < got["bbox"]["AP"] < 90
    assert len(got["segm"]) == 6 + 80  # AP..APl and one AP per COCO class


# ------------------------------------------------------------------------------- fallbacks
@pytest.fixture
def small(registered):
    dataset = synthetic_ground_truth(4, num_categories=5, seed=1, size=(96, 128), max_objects=4)
    name = registered(dataset)
    return name, list(_model_outputs(dataset, perturbed_detections(dataset, seed=2), name))


def test_backend_pycocotools_runs_pycocotools(small, monkeypatch):
    name, pairs = small
    ran = []
    monkeypatch.setattr(sys.modules["mae_transfer.detection.coco_evaluator"],
                        "fast_cocoeval_class", lambda *a: ran.append(1))
    evaluator = FastCOCOEvaluator(name, tasks=("bbox", "segm"), distributed=False,
                                  backend="pycocotools")
    expected = _evaluate(COCOEvaluator(name, tasks=("bbox", "segm"), distributed=False,
                                       use_fast_impl=False), pairs)
    got = _evaluate(evaluator, pairs)
    _assert_same_results(got, expected, atol=0)  # pycocotools itself: identical numbers
    assert not ran and evaluator.backend_used.startswith("pycocotools")


def test_without_faster_coco_eval_auto_falls_back_and_explicit_request_is_one_line(small,
                                                                                    monkeypatch):
    name, pairs = small
    monkeypatch.setitem(sys.modules, "faster_coco_eval", None)  # import fails
    evaluator = FastCOCOEvaluator(name, tasks=("bbox",), distributed=False)
    assert evaluator.fast_backend_reason(["bbox"]) == "faster-coco-eval cannot be imported"
    assert 0 <= _evaluate(evaluator, pairs)["bbox"]["AP"] <= 100
    assert evaluator.backend_used.startswith("pycocotools")
    with pytest.raises(UsageError, match="cannot be imported") as info:
        FastCOCOEvaluator(name, distributed=False, backend="faster_coco_eval")
    assert "\n" not in str(info.value)


def test_unchecked_settings_use_pycocotools_and_bad_backend_is_one_line(small):
    name, _ = small
    evaluator = FastCOCOEvaluator(name, distributed=False)
    assert evaluator.fast_backend_reason(["bbox", "segm"]) is None
    assert "keypoints" in evaluator.fast_backend_reason(["bbox", "keypoints"])
    more = FastCOCOEvaluator(name, distributed=False, max_dets_per_image=300)
    assert "max_dets_per_image=300" in more.fast_backend_reason(["bbox"])
    with pytest.raises(UsageError, match="dataloader.evaluator.backend") as info:
        FastCOCOEvaluator(name, distributed=False, backend="fast")
    assert "\n" not in str(info.value)


def test_swap_is_undone_when_the_evaluation_fails():
    class Boom(Exception):
        pass

    with pytest.raises(Boom):
        with _detectron2_cocoeval(object):
            assert d2_coco_evaluation.COCOeval is object
            raise Boom
    assert d2_coco_evaluation.COCOeval is COCOeval
