"""LVIS evaluation: the numbers ``evaluate`` reports (log table and results JSON) for the LVIS
config's evaluator are the ``lvis`` package's ``LVISEval`` run directly on the same detections
(300 per image, federated rules, APr / APc / APf); an LVIS dataset gets the LVIS evaluator under
a COCO config; a COCO json under the LVIS evaluator is one line."""
import copy
import json
import logging
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from detectron2.config import LazyConfig, instantiate
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.evaluation.coco_evaluation import instances_to_coco_json
from detectron2.structures import Boxes, BoxMode, Instances, polygons_to_bitmask
from lvis import LVIS, LVISEval, LVISResults

from mae_transfer.detection.datasets import DatasetError, register_from_spec
from mae_transfer.detection.evaluation import AP_COLUMNS, evaluate, format_ap_table
from mae_transfer.detection.lvis_datasets import register_lvis_instances, register_lvis_v1
from mae_transfer.detection.lvis_evaluation import (FREQUENCY_COLUMNS, LVISEvaluator,
                                                    evaluator_for_dataset)

CONFIGS = Path(__file__).resolve().parents[2] / "detection" / "configs"
LVIS_TINY = CONFIGS / "mask_rcnn_vit_lvis_mini_cpu.py"
COCO_TINY = CONFIGS / "mask_rcnn_vit_mini_cpu.py"
METRICS = AP_COLUMNS + FREQUENCY_COLUMNS
#: False positives of the first image, all scoring above its true detections: with LVIS's limit
#: of 300 detections per image, they push its true detections out.
CROWDING = 300


class FixedModel(torch.nn.Module):
    """Answers every image with fixed ``Instances`` made from its ground truth: boxes shifted
    by up to 15%, masks of the shifted polygons, random scores, 10% wrong classes, 20% missed,
    three false positives (one of a category in ``neg_category_ids``) per image, and
    ``CROWDING`` high-scoring false positives on the first image."""

    def __init__(self, dataset_name: str, num_classes: int, seed: int = 0):
        super().__init__()
        rng = np.random.default_rng(seed)
        to_contiguous = MetadataCatalog.get(dataset_name).thing_dataset_id_to_contiguous_id
        self.outputs = {}
        for n, record in enumerate(DatasetCatalog.get(dataset_name)):
            h, w = record["height"], record["width"]
            boxes, masks, classes = [], [], []
            for ann in record["annotations"]:
                if rng.random() < 0.2:
                    continue
                x0, y0, x1, y1 = BoxMode.convert(ann["bbox"], ann["bbox_mode"], BoxMode.XYXY_ABS)
                dx, dy = rng.uniform(-0.15, 0.15, 2) * [x1 - x0, y1 - y0]
                boxes.append([x0 + dx, y0 + dy, x1 + dx, y1 + dy])
                polygons = [np.asarray(p, float) + np.tile([dx, dy], len(p) // 2)
                            for p in ann["segmentation"]]
                masks.append(polygons_to_bitmask(polygons, h, w))
                wrong = rng.random() < 0.1
                classes.append(int(rng.integers(num_classes)) if wrong else ann["category_id"])
            negatives = [to_contiguous[c] for c in record["neg_category_ids"]]
            extra = 3 + (CROWDING if n == 0 else 0)
            for k in range(extra):
                x0, y0 = rng.uniform(0, 0.5, 2) * [w, h]
                x1, y1 = [x0, y0] + rng.uniform(0.1, 0.5, 2) * [w, h]
                boxes.append([x0, y0, x1, y1])
                mask = np.zeros((h, w), bool)
                mask[int(y0):int(y1) + 1, int(x0):int(x1) + 1] = True
                masks.append(mask)
                classes.append(negatives[k % len(negatives)] if negatives and k % 3 == 0
                               else int(rng.integers(num_classes)))
            scores = rng.uniform(0.05, 0.5, len(boxes))
            if n == 0:
                scores[-CROWDING:] = rng.uniform(0.6, 1.0, CROWDING)
            self.outputs[record["image_id"]] = Instances(
                (h, w), pred_boxes=Boxes(torch.tensor(boxes, dtype=torch.float32)),
                scores=torch.tensor(scores, dtype=torch.float32),
                pred_classes=torch.tensor(classes), pred_masks=torch.from_numpy(np.stack(masks)))

    def forward(self, inputs):
        return [{"instances": self.outputs[item["image_id"]]} for item in inputs]


def _lvis_eval_directly(json_file, model, dataset_name, max_dets=300):
    """``LVISEval`` on the model's detections (in the json's category ids), for bbox and segm;
    as Detectron2 does for segm, without the boxes (mask areas for APs / APm / APl)."""
    to_json = {v: k for k, v in
               MetadataCatalog.get(dataset_name).thing_dataset_id_to_contiguous_id.items()}
    detections = []
    for image_id, instances in model.outputs.items():
        for det in instances_to_coco_json(instances, image_id):
            detections.append(dict(det, category_id=to_json[det["category_id"]]))
    gt = LVIS(str(json_file))
    results = {}
    for task in ("bbox", "segm"):
        dets = copy.deepcopy(detections)
        if task == "segm":
            for det in dets:
                det.pop("bbox")
        lvis_eval = LVISEval(gt, LVISResults(gt, dets, max_dets=max_dets), task)
        lvis_eval.run()
        results[task] = {k: lvis_eval.get_results()[k] * 100 for k in METRICS}
    return results


def _same(ours: float, direct: float) -> bool:
    """Equal; LVISEval's -1 (nothing to average) is our NaN."""
    return math.isnan(ours) if direct < 0 else ours == pytest.approx(direct, rel=1e-12)


@pytest.fixture
def lvis_val(lvis_mini, tmp_path):
    """The LVIS config on ``lvis_v1_val``, and a copy of that split without rare categories."""
    register_lvis_v1(lvis_mini["root"])
    data = json.loads((lvis_mini["root"] / "lvis" / "lvis_v1_val.json").read_text())
    for cat in data["categories"]:
        cat["frequency"] = "c" if cat["frequency"] == "r" else cat["frequency"]
    (tmp_path / "no_rare.json").write_text(json.dumps(data))
    register_lvis_instances("lvis_no_rare_val", tmp_path / "no_rare.json",
                            lvis_mini["root"] / "coco")
    cfg = LazyConfig.load(str(LVIS_TINY))
    cfg.model.roi_heads.num_classes = lvis_mini["num_classes"]
    cfg.train.output_dir = str(tmp_path / "out")
    return cfg


@pytest.mark.parametrize("dataset", ["lvis_v1_val", "lvis_no_rare_val"])
def test_reported_lvis_ap_is_lvis_eval_on_the_same_detections(lvis_val, lvis_mini, dataset,
                                                               caplog):
    cfg = lvis_val
    cfg.dataloader.test.dataset.names = dataset
    model = FixedModel(dataset, lvis_mini["num_classes"])
    with caplog.at_level(logging.INFO, logger="mae_transfer.detection"):
        results = evaluate(cfg, model, iteration=3)
    json_file = MetadataCatalog.get(dataset).json_file
    direct = _lvis_eval_directly(json_file, model, dataset)
    saved = json.loads((Path(cfg.train.output_dir) / "coco_eval.json").read_text())
    assert saved["dataset"] == dataset and saved["iteration"] == 3
    for task in ("bbox", "segm"):
        assert set(results[task]) == set(METRICS)
        for metric in METRICS:
            assert _same(results[task][metric], direct[task][metric]), (task, metric)
            written = saved["results"][task][metric]
            expected = None if direct[task][metric] < 0 else results[task][metric]
            assert written == expected, (task, metric)
        assert 1 < results[task]["AP"] < 90  # neither empty nor perfect
    if dataset == "lvis_no_rare_val":  # no rare category: APr is NaN (null), not -100
        assert saved["results"]["bbox"]["APr"] is None
    elif lvis_mini["real"]:
        assert all(results["bbox"][c] > 0 for c in FREQUENCY_COLUMNS)
    # 300 detections per image: without the limit, the first image's true detections count
    unlimited = _lvis_eval_directly(json_file, model, dataset, max_dets=-1)
    assert unlimited["bbox"]["AP50"] != direct["bbox"]["AP50"]
    header = next(line for line in caplog.text.splitlines() if line.startswith("| task"))
    assert [c.strip() for c in header.split("|")[1:-1]] == ["task", *METRICS]
    assert f"LVIS evaluation on {dataset} (iteration 3)" in caplog.text


def test_an_lvis_dataset_gets_the_lvis_evaluator_under_a_coco_config(lvis_mini, tmp_path):
    register_lvis_v1(lvis_mini["root"])
    cfg = LazyConfig.load(str(COCO_TINY))
    cfg.dataloader.test.dataset.names = "lvis_v1_val"
    cfg.dataloader.evaluator.output_dir = str(tmp_path)
    evaluator = instantiate(evaluator_for_dataset(cfg.dataloader.evaluator, "lvis_v1_val"))
    assert isinstance(evaluator, LVISEvaluator)
    assert evaluator._max_dets_per_image == 300 and evaluator._tasks == ("bbox", "segm")
    assert evaluator._output_dir == str(tmp_path)
    lvis_cfg = LazyConfig.load(str(LVIS_TINY))
    assert evaluator_for_dataset(lvis_cfg.dataloader.evaluator, "lvis_v1_val") is \
        lvis_cfg.dataloader.evaluator


def test_a_coco_json_under_the_lvis_evaluator_is_one_line(shapes_dataset):
    register_from_spec(f"shapes={shapes_dataset['coco']}")
    with pytest.raises(DatasetError) as err:
        LVISEvaluator("shapes_val")
    text = str(err.value)
    assert "\n" not in text and "instances_val.json: not an LVIS json" in text
    assert evaluator_for_dataset("unchanged", "shapes_val") == "unchanged"  # COCO stays COCO


def test_ap_table_has_frequency_columns_only_for_lvis():
    coco = {"bbox": dict.fromkeys(AP_COLUMNS, 1.0)}
    lvis = {"bbox": dict.fromkeys(METRICS, 1.0), "segm": dict.fromkeys(METRICS, 2.0)}
    assert "APr" not in format_ap_table(coco)
    lines = format_ap_table(lvis).splitlines()
    assert [c.strip() for c in lines[0].split("|")[1:-1]] == ["task", *METRICS]
    assert [c.strip() for c in lines[3].split("|")[1:-1]] == ["segm"] + ["2.000"] * 9
