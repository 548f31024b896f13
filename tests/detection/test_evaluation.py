"""The evaluation path: ground truth fed back as predictions must score AP 100 (box and mask)."""
import json
import math
from pathlib import Path

import numpy as np
import torch

import detection.compat  # noqa: F401
from detectron2.config import LazyConfig
from detectron2.data import DatasetCatalog
from detectron2.structures import BitMasks, Boxes, BoxMode, Instances, polygons_to_bitmask

from detection.datasets import register_from_spec
from detection.evaluation import AP_COLUMNS, evaluate, format_ap_table

TINY = Path(__file__).resolve().parents[2] / "detection" / "configs" / "mask_rcnn_vit_mini_cpu.py"


class GroundTruthModel(torch.nn.Module):
    """Answers every image with its own annotations (score 1), like a perfect detector."""

    def __init__(self, dataset_name):
        super().__init__()
        self.records = {r["image_id"]: r for r in DatasetCatalog.get(dataset_name)}

    def forward(self, inputs):
        outputs = []
        for item in inputs:
            rec = self.records[item["image_id"]]
            h, w = rec["height"], rec["width"]
            anns = rec["annotations"]
            boxes = [BoxMode.convert(a["bbox"], a["bbox_mode"], BoxMode.XYXY_ABS) for a in anns]
            masks = [polygons_to_bitmask([np.asarray(p) for p in a["segmentation"]], h, w)
                     for a in anns]
            inst = Instances((h, w), pred_boxes=Boxes(torch.tensor(boxes, dtype=torch.float32)),
                             scores=torch.ones(len(anns)),
                             pred_classes=torch.tensor([a["category_id"] for a in anns]),
                             pred_masks=BitMasks(torch.from_numpy(np.stack(masks))).tensor)
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
    assert saved["results"]["segm"]["AP75"] == 100.0
    # no large objects in 128 px images: COCO reports -1 -> NaN -> null in strict JSON
    assert math.isnan(results["bbox"]["APl"]) and saved["results"]["bbox"]["APl"] is None
    assert (tmp_path / "inference" / "coco_instances_results.json").is_file()

    table = format_ap_table(results).splitlines()
    assert [c.strip() for c in table[0].split("|")[1:-1]] == ["task", *AP_COLUMNS]
    assert [c.strip() for c in table[2].split("|")[1:4]] == ["bbox", "100.000", "100.000"]
