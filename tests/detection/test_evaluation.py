"""The evaluation path: ground truth fed back as predictions must score AP 100 (box and mask), the
results JSON must carry the dataset's own category ids, and the AP we report must be the number
pycocotools' COCOeval gives for the same predictions, to 1e-12 (generated shapes, and real COCO
photos from ``../shared/data/coco-mini`` when present)."""
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from pycocotools import mask as mask_util
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from detectron2.config import LazyConfig
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.structures import BitMasks, Boxes, BoxMode, Instances, polygons_to_bitmask

from mae_transfer.detection.datasets import register_coco2017, register_from_spec
from mae_transfer.detection.evaluation import AP_COLUMNS, evaluate, format_ap_table

TINY = Path(__file__).resolve().parents[2] / "detection" / "configs" / "mask_rcnn_vit_mini_cpu.py"


def _mask(segmentation, height, width) -> np.ndarray:
    if isinstance(segmentation, dict):  # (compressed) RLE
        return mask_util.decode(segmentation).astype(bool)
    return polygons_to_bitmask([np.asarray(p) for p in segmentation], height, width)


class GroundTruthModel(torch.nn.Module):
    """Answers every image with fixed predictions, made once per image by ``predict``: here its
    own non-crowd annotations (score 1), like a perfect detector."""

    def __init__(self, dataset_name):
        super().__init__()
        records = DatasetCatalog.get(dataset_name)
        self.predictions = {r["image_id"]: self.predict(r) for r in records}
        self.sizes = {r["image_id"]: (r["height"], r["width"]) for r in records}

    def predict(self, record):
        """(boxes XYXY (N, 4), scores (N,), contiguous classes (N,), masks (N, H, W) bool)."""
        h, w = record["height"], record["width"]
        anns = [a for a in record["annotations"] if not a.get("iscrowd", 0)]
        boxes = [BoxMode.convert(a["bbox"], a["bbox_mode"], BoxMode.XYXY_ABS) for a in anns]
        masks = [_mask(a["segmentation"], h, w) for a in anns]
        return (torch.tensor(boxes, dtype=torch.float32), torch.ones(len(anns)),
                torch.tensor([a["category_id"] for a in anns]),
                torch.from_numpy(np.stack(masks)))

    def forward(self, inputs):
        outputs = []
        for item in inputs:
            boxes, scores, classes, masks = self.predictions[item["image_id"]]
            inst = Instances(self.sizes[item["image_id"]], pred_boxes=Boxes(boxes),
                             scores=scores, pred_classes=classes,
                             pred_masks=BitMasks(masks).tensor)
            outputs.append({"instances": inst})
        return outputs


def test_ground_truth_predictions_score_ap_100_and_are_written_as_json(shapes_dataset, tmp_path):
    register_from_spec(f"oracle={shapes_dataset['coco']}")
    cfg = LazyConfig.load(str(TINY))
    cfg.dataloader.test.dataset.names = "oracle_val"
    cfg.train.output_dir = str(tmp_path)
    results = evaluate(cfg, GroundTruthModel("oracle_val"), iteration=7)
    for task in ("bbox", "segm"):
        assert results[task]["AP"] == 100.0 and results[task]["AP50"] == 100.0
        assert results[task]["AP-disc"] == 100.0
    saved = json.loads((tmp_path / "coco_eval.json").read_text())
    assert saved == json.loads((tmp_path / "inference" / "coco_eval_iter0000007.json").read_text())
    assert saved["dataset"] == "oracle_val" and saved["iteration"] == 7
    assert saved["evaluator"].startswith("faster-coco-eval ")  # which implementation ran
    assert saved["results"]["segm"]["AP75"] == 100.0
    # no large objects in 128 px images: COCO reports -1 -> NaN -> null in strict JSON
    assert math.isnan(results["bbox"]["APl"]) and saved["results"]["bbox"]["APl"] is None
    assert (tmp_path / "inference" / "coco_instances_results.json").is_file()

    table = format_ap_table(results).splitlines()
    assert [c.strip() for c in table[0].split("|")[1:-1]] == ["task", *AP_COLUMNS]
    assert [c.strip() for c in table[2].split("|")[1:4]] == ["bbox", "100.000", "100.000"]


# ---------------------------------------------------------------------------- real COCO photos
def _coco_val_cfg(coco_mini, output_dir):
    register_coco2017(coco_mini.parent)  # coco_2017_{train,val}, ids 1..90 with gaps
    cfg = LazyConfig.load(str(TINY))
    cfg.dataloader.test.dataset.names = "coco_2017_val"
    cfg.model.roi_heads.num_classes = 80
    cfg.train.output_dir = str(output_dir)
    return cfg


def test_real_coco_ground_truth_scores_100_with_coco_category_ids_in_the_results(coco_mini,
                                                                                 tmp_path):
    cfg = _coco_val_cfg(coco_mini, tmp_path)
    results = evaluate(cfg, GroundTruthModel("coco_2017_val"))
    for task in ("bbox", "segm"):
        assert results[task]["AP"] == 100.0 and results[task]["AP75"] == 100.0
        assert results[task]["APs"] == results[task]["APl"] == 100.0
    # contiguous classes 0..79 in, the json's own ids (1..90, with gaps) out
    written = json.loads((tmp_path / "inference" / "coco_instances_results.json").read_text())
    truth = json.loads((coco_mini / "annotations" / "instances_val2017.json").read_text())
    def per_image(items):
        out = {}
        for item in items:
            out.setdefault(item["image_id"], []).append(item["category_id"])
        return {k: sorted(v) for k, v in out.items()}

    assert per_image(written) == per_image(a for a in truth["annotations"] if not a["iscrowd"])
    assert max(r["category_id"] for r in written) == 90  # a toothbrush: id 90 is class 79


class PerturbedModel(GroundTruthModel):
    """Imperfect predictions: shifted / resized boxes (whole pixels), box-shaped masks, random
    scores, some instances missed, some classes wrong, and extra false positives."""

    def __init__(self, dataset_name, num_classes=80, seed=0):
        self.rng = np.random.default_rng(seed)
        self.num_classes = num_classes
        super().__init__(dataset_name)

    def predict(self, record):
        boxes, _, classes, _ = super().predict(record)
        h, w = record["height"], record["width"]
        keep = self.rng.random(len(boxes)) > 0.2
        boxes, classes = boxes[keep], classes[keep].clone()
        size = (boxes[:, 2:] - boxes[:, :2]).repeat(1, 2).numpy()
        boxes = boxes.numpy() + self.rng.uniform(-0.15, 0.15, boxes.shape) * size
        wrong = self.rng.random(len(classes)) < 0.1
        classes[torch.from_numpy(wrong)] = torch.from_numpy(
            self.rng.integers(0, self.num_classes, int(wrong.sum())))
        corner = self.rng.uniform(0, 0.5, (3, 2)) * [w, h]  # three false positives
        extra = np.concatenate([corner, corner + self.rng.uniform(0.1, 0.5, (3, 2)) * [w, h]], 1)
        boxes = np.concatenate([boxes, extra])
        classes = torch.cat([classes, torch.from_numpy(self.rng.integers(0, self.num_classes, 3))])
        boxes = np.round(np.clip(boxes, 0, [w, h, w, h]))
        boxes[:, 2:] = np.maximum(boxes[:, 2:], boxes[:, :2] + 1)
        masks = np.zeros((len(boxes), h, w), dtype=bool)
        for mask, (x0, y0, x1, y1) in zip(masks, boxes.astype(int)):
            mask[y0:y1, x0:x1] = True
        scores = torch.from_numpy(self.rng.uniform(0.05, 1.0, len(boxes))).float()
        return (torch.from_numpy(boxes).float(), scores, classes, torch.from_numpy(masks))


def _pycocotools_ap(json_file, model, dataset_name, iou_type):
    """COCOeval's summary (AP, AP50, AP75, APs, APm, APl in percent), run directly on the
    model's predictions written by hand in the json's category ids."""
    to_coco = {v: k for k, v in
               MetadataCatalog.get(dataset_name).thing_dataset_id_to_contiguous_id.items()}
    detections = []
    for image_id, (boxes, scores, classes, masks) in model.predictions.items():
        for box, score, cls, mask in zip(boxes.tolist(), scores.tolist(), classes.tolist(),
                                         masks.numpy()):
            det = {"image_id": image_id, "category_id": to_coco[cls], "score": score}
            if iou_type == "bbox":
                det["bbox"] = [box[0], box[1], box[2] - box[0], box[3] - box[1]]
            else:
                det["segmentation"] = mask_util.encode(np.asfortranarray(mask.astype(np.uint8)))
            detections.append(det)
    gt = COCO(str(json_file))
    evaluator = COCOeval(gt, gt.loadRes(detections), iou_type)
    evaluator.evaluate()
    evaluator.accumulate()
    evaluator.summarize()
    return [100 * s for s in evaluator.stats[:6]]


def test_real_coco_reported_ap_is_pycocotools_ap_for_the_same_predictions(coco_mini, tmp_path):
    cfg = _coco_val_cfg(coco_mini, tmp_path)
    model = PerturbedModel("coco_2017_val")
    results = evaluate(cfg, model)
    json_file = coco_mini / "annotations" / "instances_val2017.json"
    for task in ("bbox", "segm"):
        direct = _pycocotools_ap(json_file, model, "coco_2017_val", task)
        ours = [results[task][c] for c in AP_COLUMNS]
        # pycocotools' numbers: faster-coco-eval computes them (its precision lacks
        # pycocotools' + eps, a difference of at most 2.3e-16 per value; coco_evaluator.py)
        assert ours == pytest.approx(direct, rel=0, abs=1e-12), task
        assert 2 < ours[0] < 90, (task, ours)  # a real test: neither perfect nor empty
