"""The tiny LVIS config end to end through ``tools/train_det.py`` on the CPU: trains on
``lvis_v1_train`` (repeat-factor sampler, sigmoid + federated loss) and evaluates ``lvis_v1_val``
with the LVIS evaluator; and its model can be built before any data is loaded (``--eval-only``)."""
import json
from pathlib import Path

import pytest
import torch
from detectron2.config import LazyConfig, instantiate

from mae_transfer.detection.lvis_datasets import register_lvis_v1
from mae_transfer.tools import train_det

TINY = "detection/configs/mask_rcnn_vit_lvis_mini_cpu.py"
REPO = Path(__file__).resolve().parents[2]


def test_model_builds_before_the_data_with_the_train_sets_class_weights(lvis_mini):
    register_lvis_v1(lvis_mini["root"])
    cfg = LazyConfig.load(str(REPO / TINY))
    cfg.model.roi_heads.num_classes = lvis_mini["num_classes"]
    predictor = instantiate(cfg.model).roi_heads.box_predictor
    train = json.loads((lvis_mini["root"] / "lvis" / "lvis_v1_train.json").read_text())
    counts = [c["image_count"] for c in sorted(train["categories"], key=lambda c: c["id"])]
    assert torch.equal(predictor.fed_loss_cls_weights, torch.tensor(counts).float() ** 0.5)
    assert predictor.use_sigmoid_ce and predictor.test_topk_per_image == 300


@pytest.mark.slow
def test_tiny_lvis_config_trains_and_evaluates_end_to_end(lvis_mini, tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)
    out = tmp_path / "run"
    status = train_det.main(["--config", TINY, "--coco-root", str(lvis_mini["root"]),
                             f"train.output_dir={out}", "train.max_iter=4",
                             "train.eval_period=4", "train.log_period=2",
                             f"model.roi_heads.num_classes={lvis_mini['num_classes']}"])
    assert status == 0
    result = json.loads((out / "coco_eval.json").read_text())
    assert result["dataset"] == "lvis_v1_val" and result["iteration"] == 4
    for task in ("bbox", "segm"):
        metrics = result["results"][task]
        assert set(metrics) == {"AP", "AP50", "AP75", "APs", "APm", "APl", "APr", "APc", "APf"}
        assert all(v is None or 0 <= v <= 100 for v in metrics.values())
    log = (out / "log.txt").read_text()
    assert "LVIS evaluation on lvis_v1_val (iteration 4)" in log
    assert "|   APr |   APc |   APf |" in log
    config = (out / "config.yaml").read_text()
    assert "RepeatFactorTrainingSampler" in config and "repeat_thresh: 0.001" in config
    assert "use_fed_loss: true" in config and "max_dets_per_image: 300" in config
    losses = [json.loads(line) for line in (out / "metrics.json").read_text().splitlines()]
    assert [m["iteration"] for m in losses if "loss_cls" in m] == [1, 3]
    assert (out / "model_final.pth").is_file()
    # the predictions file the LVIS evaluator writes, in the json's category ids
    predictions = json.loads((out / "inference" / "lvis_instances_results.json").read_text())
    val = json.loads((lvis_mini["root"] / "lvis" / "lvis_v1_val.json").read_text())
    assert {p["category_id"] for p in predictions} <= {c["id"] for c in val["categories"]}


def test_a_broken_lvis_annotation_ends_train_det_with_one_line(lvis_mini, tmp_path, monkeypatch,
                                                               capsys):
    monkeypatch.chdir(REPO)
    (tmp_path / "lvis").mkdir()
    (tmp_path / "coco").symlink_to(lvis_mini["root"] / "coco")
    for split in ("train", "val"):
        data = json.loads((lvis_mini["root"] / "lvis" / f"lvis_v1_{split}.json").read_text())
        if split == "train":
            ann = data["annotations"][5]
            image = next(i for i in data["images"] if i["id"] == ann["image_id"])
            ann["bbox"] = [image["width"] - 2.0, 0.0, 10.0, 10.0]
        (tmp_path / "lvis" / f"lvis_v1_{split}.json").write_text(json.dumps(data))
    status = train_det.main(["--config", TINY, "--coco-root", str(tmp_path),
                             f"train.output_dir={tmp_path / 'run'}",
                             f"model.roi_heads.num_classes={lvis_mini['num_classes']}"])
    err = capsys.readouterr().err.strip().splitlines()
    assert status == 2 and not any("Traceback" in line for line in err)
    assert err[-1] == (
        f"error: {tmp_path / 'lvis' / 'lvis_v1_train.json'}: image "
        f"'{'/'.join(image['coco_url'].split('/')[-2:])}' (id {image['id']}): annotation "
        f"{ann['id']}: bbox {ann['bbox']} (x, y, width, height) lies outside the "
        f"{image['width']} x {image['height']} image")
