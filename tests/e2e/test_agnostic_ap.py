"""Class-agnostic box AP50 (experiment.agnostic_ap): classes merged, IoU 0.5, pycocotools' rules."""
import json

import pytest
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from mae_transfer.experiment.agnostic_ap import class_agnostic_ap50


def _gt(path):
    images = [{"id": i, "width": 100, "height": 100, "file_name": f"{i}.jpg"} for i in (1, 2)]
    boxes = {1: [10, 10, 30, 30], 2: [50, 50, 40, 30], 3: [5, 60, 20, 20]}
    anns = [{"id": k, "image_id": 1 if k < 3 else 2, "category_id": k, "bbox": b,
             "area": b[2] * b[3], "iscrowd": 0} for k, b in boxes.items()]
    cats = [{"id": k, "name": f"c{k}"} for k in (1, 2, 3)]
    path.write_text(json.dumps({"images": images, "annotations": anns, "categories": cats}))
    return boxes


def _write(path, predictions):
    path.write_text(json.dumps(predictions))
    return path


def test_right_boxes_with_wrong_classes_score_zero_per_class_but_full_agnostic(tmp_path):
    gt_json = tmp_path / "gt.json"
    boxes = _gt(gt_json)
    # every box found, every class wrong (1 -> 2, 2 -> 3, 3 -> 1)
    wrong = [{"image_id": 1 if k < 3 else 2, "category_id": k % 3 + 1, "bbox": b, "score": 0.9}
             for k, b in boxes.items()]
    preds = _write(tmp_path / "wrong.json", wrong)
    assert class_agnostic_ap50(gt_json, preds) == pytest.approx(100.0)
    gt = COCO(str(gt_json))
    per_class = COCOeval(gt, gt.loadRes(str(preds)), "bbox")
    per_class.evaluate(); per_class.accumulate(); per_class.summarize()
    assert per_class.stats[1] == pytest.approx(0.0)


def test_agnostic_ap50_equals_pycocotools_on_merged_categories(tmp_path):
    """Same number as renaming every category to one and scoring per class."""
    gt_json = tmp_path / "gt.json"
    boxes = _gt(gt_json)
    preds = [{"image_id": 1, "category_id": 2, "bbox": [12, 11, 30, 30], "score": 0.4},   # hit
             {"image_id": 1, "category_id": 1, "bbox": [0, 0, 15, 15], "score": 0.95},    # miss
             {"image_id": 2, "category_id": 3, "bbox": [5, 60, 20, 20], "score": 0.6},    # hit
             {"image_id": 1, "category_id": 3, "bbox": [80, 80, 10, 10], "score": 0.7}]   # miss
    got = class_agnostic_ap50(gt_json, _write(tmp_path / "p.json", preds))
    merged = json.loads(gt_json.read_text())
    for a in merged["annotations"]:
        a["category_id"] = 1
    merged["categories"] = [{"id": 1, "name": "object"}]
    (tmp_path / "merged.json").write_text(json.dumps(merged))
    gt = COCO(str(tmp_path / "merged.json"))
    ref = COCOeval(gt, gt.loadRes([dict(p, category_id=1) for p in preds]), "bbox")
    ref.evaluate(); ref.accumulate(); ref.summarize()
    assert got == pytest.approx(ref.stats[1] * 100)
    assert 0 < got < 100          # two of three found, behind two higher-scored misses


def test_no_prediction_is_zero(tmp_path):
    gt_json = tmp_path / "gt.json"
    _gt(gt_json)
    assert class_agnostic_ap50(gt_json, _write(tmp_path / "none.json", [])) == 0.0
