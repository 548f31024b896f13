"""Real COCO jsons (``../shared/data/coco-mini``) load as Detectron2 loads them (issue #10.5).

The default mode must give exactly the records of Detectron2's own ``load_coco_json``: on the
official jsons (crowd RLE, category ids 1..90 with gaps), and on a copy with the polygons
Detectron2 repairs (fewer than 3 points, odd length): such a polygon is dropped, its instance
kept while another polygon remains, and skipped (and counted) when none does.
"""
import json
import logging

import pytest

from detectron2.data import MetadataCatalog
from detectron2.data.datasets import load_coco_json

from mae_transfer.detection.datasets import DatasetError, load_coco_instances

SPLITS = {"train2017": 1678, "val2017": 624}  # instances in each json, crowd regions included


@pytest.fixture
def coco(coco_mini):
    return coco_mini


def _json(coco, split):
    return coco / "annotations" / f"instances_{split}.json"


@pytest.mark.parametrize("split", sorted(SPLITS))
def test_default_mode_gives_detectron2s_records_on_the_official_json(coco, split):
    reference = load_coco_json(str(_json(coco, split)), str(coco / split), f"d2_ref_{split}")
    ours = load_coco_instances(_json(coco, split), coco / split, dataset_name=f"ours_{split}")
    assert ours == reference
    assert sum(len(r["annotations"]) for r in ours) == SPLITS[split]
    assert sum(a["iscrowd"] for r in ours for a in r["annotations"]) > 0  # RLE crowd regions
    ref_meta, meta = MetadataCatalog.get(f"d2_ref_{split}"), MetadataCatalog.get(f"ours_{split}")
    assert meta.thing_classes == ref_meta.thing_classes and len(meta.thing_classes) == 80
    id_map = meta.thing_dataset_id_to_contiguous_id
    assert id_map == ref_meta.thing_dataset_id_to_contiguous_id
    # COCO's ids 1..90 with gaps (12, 26, 29, 30, 45, 66, 68, 69, 71, 83 unused) -> 0..79
    assert (id_map[1], id_map[11], id_map[13], id_map[90]) == (0, 10, 11, 79)
    assert sorted(id_map.values()) == list(range(80))


def _with_bad_polygons(coco, tmp_path):
    """The val json with three edited instances; returns (json path, their annotation ids)."""
    data = json.loads(_json(coco, "val2017").read_text())
    multi = [a for a in data["annotations"]
             if not a["iscrowd"] and len(a["segmentation"]) > 1]
    single = [a for a in data["annotations"]
              if not a["iscrowd"] and len(a["segmentation"]) == 1]
    multi[0]["segmentation"][1] = multi[0]["segmentation"][1][:4]  # 2 points: polygon dropped
    multi[1]["segmentation"].append([5.0, 5.0, 9.0, 9.0, 5.0])  # odd length: dropped
    single[0]["segmentation"] = [[10.0, 10.0, 20.0, 20.0]]  # no valid polygon left: skipped
    path = tmp_path / "instances_val2017.json"
    path.write_text(json.dumps(data))
    return path, (multi[0]["id"], multi[1]["id"], single[0]["id"]), data


def test_invalid_polygons_are_dropped_as_detectron2_drops_them(coco, tmp_path, caplog):
    path, (kept_a, kept_b, skipped), data = _with_bad_polygons(coco, tmp_path)
    reference = load_coco_json(str(path), str(coco / "val2017"))
    with caplog.at_level(logging.WARNING, logger="mae_transfer.detection"):
        ours = load_coco_instances(path, coco / "val2017")  # default mode
    # load_coco_json without a dataset name keeps the json's category ids: compare on those
    inverse = {i: c for i, c in enumerate(sorted(c["id"] for c in data["categories"]))}
    for rec in ours:
        for obj in rec["annotations"]:
            obj["category_id"] = inverse[obj["category_id"]]
    assert ours == reference
    assert sum(len(r["annotations"]) for r in ours) == SPLITS["val2017"] - 1
    by_id = {a["id"]: a for a in data["annotations"]}
    objs = {(r["image_id"], tuple(o["bbox"])): o for r in ours for o in r["annotations"]}
    for ann_id in (kept_a, kept_b):  # kept, with one polygon less than in the json
        ann = by_id[ann_id]
        polygons = objs[(ann["image_id"], tuple(ann["bbox"]))]["segmentation"]
        assert polygons == [p for p in ann["segmentation"] if len(p) >= 6 and len(p) % 2 == 0]
        assert len(polygons) == len(ann["segmentation"]) - 1
    assert (by_id[skipped]["image_id"], tuple(by_id[skipped]["bbox"])) not in objs
    assert "dropped 3 polygons" in caplog.text and "filtered out 1 instances" in caplog.text
    assert f"annotation {skipped}" in caplog.text


def test_strict_mode_still_stops_at_the_first_bad_polygon(coco, tmp_path):
    path, (first, _, _), _ = _with_bad_polygons(coco, tmp_path)
    with pytest.raises(DatasetError, match=f"annotation {first}: polygon 1 has 2 point"):
        load_coco_instances(path, coco / "val2017", on_invalid="error")
