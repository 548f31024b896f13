"""LVIS v1 data: registration as Detectron2's (images through ``coco_url``, lazily), the category
metadata, ``--dataset`` recognition, one-line load errors, repeat-factor sampling, the converter."""
import argparse
import json
import math
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
import torch
from detectron2.config import LazyConfig, instantiate
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets.lvis import load_lvis_json
from PIL import Image

from mae_transfer.detection.cli import register_datasets
from mae_transfer.detection.datasets import DatasetError
from mae_transfer.detection.lvis_datasets import (is_lvis_json, load_lvis_instances,
                                                  register_lvis_spec, register_lvis_v1)
from mae_transfer.tools.make_lvis_dataset import main as make_lvis_main

REPO = Path(__file__).resolve().parents[2]
LOADER = REPO / "detection" / "configs" / "common" / "lvis_loader.py"


def _json(path):
    return json.loads(Path(path).read_text())


# -------------------------------------------------------------------------- registration
def test_lvis_v1_splits_resolve_coco_urls_and_keep_detectron2s_records(lvis_mini):
    root = lvis_mini["root"]
    assert register_lvis_v1(root) == ["lvis_v1_train", "lvis_v1_val"]
    gt = _json(root / "lvis" / "lvis_v1_val.json")
    records = DatasetCatalog.get("lvis_v1_val")
    assert [r["image_id"] for r in records] == sorted(i["id"] for i in gt["images"])
    images = {i["id"]: i for i in gt["images"]}
    folders = set()
    for record in records:
        image = images[record["image_id"]]
        folder, name = image["coco_url"].split("/")[-2:]
        folders.add(folder)
        assert record["file_name"] == str(root.resolve() / "coco" / folder / name)
        assert Path(record["file_name"]).is_file()
        assert record["neg_category_ids"] == image["neg_category_ids"]
        assert record["not_exhaustive_category_ids"] == image["not_exhaustive_category_ids"]
    assert folders == {"train2017", "val2017"}  # held-out train images keep their folder

    # the records are Detectron2's own, category ids made contiguous over the sorted json ids
    json_ids = sorted(c["id"] for c in gt["categories"])
    theirs = load_lvis_json(str(root / "lvis" / "lvis_v1_val.json"), str(root / "coco") + "/")
    assert len(theirs) == len(records)
    for ours, ref in zip(records, theirs):
        assert {k: v for k, v in ours.items() if k not in ("annotations", "file_name")} == \
               {k: v for k, v in ref.items() if k not in ("annotations", "file_name")}
        assert [json_ids[o["category_id"]] for o in ours["annotations"]] == \
               [r["category_id"] + 1 for r in ref["annotations"]]
        assert [o["segmentation"] for o in ours["annotations"]] == \
               [r["segmentation"] for r in ref["annotations"]]

    meta = MetadataCatalog.get("lvis_v1_val")
    cats = sorted(gt["categories"], key=lambda c: c["id"])
    assert meta.evaluator_type == "lvis"
    assert meta.thing_classes == [c["name"] for c in cats]
    assert meta.class_image_count == [{"id": c["id"], "image_count": c["image_count"]}
                                      for c in cats]
    assert meta.class_frequency == [c["frequency"] for c in cats]
    assert meta.thing_dataset_id_to_contiguous_id == {c["id"]: i for i, c in enumerate(cats)}


def test_metadata_is_read_on_first_use_before_any_load(lvis_mini):
    """A model built before the data (``--eval-only``) reads the class counts of the train json."""
    register_lvis_v1(lvis_mini["root"])
    meta = MetadataCatalog.get("lvis_v1_train")
    assert "class_image_count" not in meta.__dict__  # registration read nothing
    train = _json(lvis_mini["root"] / "lvis" / "lvis_v1_train.json")
    counts = defaultdict(set)
    for ann in train["annotations"]:
        counts[ann["category_id"]].add(ann["image_id"])
    assert meta.class_image_count == [{"id": c["id"], "image_count": len(counts[c["id"]])}
                                      for c in sorted(train["categories"], key=lambda c: c["id"])]
    assert len(meta.thing_classes) == lvis_mini["num_classes"]
    DatasetCatalog.get("lvis_v1_train")  # the load sets the same values: no conflict
    assert meta.get("class_frequency") == [c["frequency"] for c in
                                           sorted(train["categories"], key=lambda c: c["id"])]


def test_missing_lvis_errors_only_when_used_in_one_line(tmp_path):
    register_lvis_v1(tmp_path)  # nothing there: registering is fine
    for use in (lambda: DatasetCatalog.get("lvis_v1_train"),
                lambda: MetadataCatalog.get("lvis_v1_train").class_image_count):
        with pytest.raises(DatasetError) as err:
            use()
        text = str(err.value)
        assert "\n" not in text
        assert f"no annotation file at {tmp_path / 'lvis' / 'lvis_v1_train.json'}" in text
        assert "$DETECTRON2_DATASETS" in text


def test_dataset_flag_recognises_an_lvis_json(lvis_mini, shapes_dataset, tmp_path):
    lvis_json = lvis_mini["root"] / "lvis" / "lvis_v1_val.json"
    coco_json = shapes_dataset["coco"] / "annotations" / "instances_val.json"
    assert is_lvis_json(lvis_json) and not is_lvis_json(coco_json)
    assert not is_lvis_json(tmp_path / "absent.json")
    # a marker cut by a chunk boundary is still found
    marker_at = lvis_json.read_bytes().find(b'"neg_category_ids"')
    assert is_lvis_json(lvis_json, chunk_size=marker_at + 5)
    assert register_lvis_spec(f"shapes_val={coco_json}:{shapes_dataset['coco']}") is None

    args = argparse.Namespace(coco_root=str(tmp_path), invalid_annotations="detectron2", dataset=[
        f"mine_val={lvis_json}:{lvis_mini['root'] / 'coco'}", f"shapes={shapes_dataset['coco']}"])
    register_datasets(args)
    assert MetadataCatalog.get("mine_val").evaluator_type == "lvis"
    assert MetadataCatalog.get("shapes_val").evaluator_type == "coco"
    assert MetadataCatalog.get("lvis_v1_val").json_file == str(tmp_path / "lvis" /
                                                               "lvis_v1_val.json")
    records = DatasetCatalog.get("mine_val")
    assert len(records) == len(_json(lvis_json)["images"])
    with pytest.raises(DatasetError, match="image folder .*nowhere does not exist"):
        register_lvis_spec(f"bad={lvis_json}:{tmp_path / 'nowhere'}")
    # NAME=JSON alone: Detectron2's layout, coco/ beside the json's lvis/ folder
    assert register_lvis_spec(f"plain={lvis_json}") == ["plain"]
    assert MetadataCatalog.get("plain").image_root == str((lvis_mini["root"] / "coco").resolve())
    assert register_lvis_spec(f"plain={coco_json}") is None


# ----------------------------------------------------------------------------- load errors
SIZE = (48, 32)  # width, height
POLYGON = [4.0, 4.0, 20.0, 4.0, 20.0, 20.0, 4.0, 20.0]


def _lvis_set(tmp_path, edit=None, write_image=True):
    """One 48 x 32 train2017 image with one instance, LVIS format; ``edit(data, ann, image)``."""
    root = tmp_path / "root"
    (root / "coco" / "train2017").mkdir(parents=True, exist_ok=True)
    if write_image:
        Image.fromarray(np.full((SIZE[1], SIZE[0], 3), 90, np.uint8)).save(
            root / "coco" / "train2017" / "000000000007.jpg")
    image = {"id": 7, "width": SIZE[0], "height": SIZE[1],
             "coco_url": "http://images.cocodataset.org/train2017/000000000007.jpg",
             "neg_category_ids": [2], "not_exhaustive_category_ids": []}
    ann = {"id": 70, "image_id": 7, "category_id": 1, "area": 256.0,
           "bbox": [4.0, 4.0, 16.0, 16.0], "segmentation": [list(POLYGON)]}
    cats = [{"id": 1, "name": "thing", "frequency": "r", "image_count": 1},
            {"id": 2, "name": "other", "frequency": "f", "image_count": 0}]
    data = {"images": [image], "annotations": [ann], "categories": cats}
    if edit:
        edit(data, ann, image)
    path = root / "lvis" / "lvis_v1_train.json"
    path.parent.mkdir(exist_ok=True)
    path.write_text(json.dumps(data))
    return path, root / "coco"


def test_a_valid_lvis_json_loads(tmp_path):
    path, images = _lvis_set(tmp_path)
    (record,) = load_lvis_instances(path, images, on_invalid="error")
    assert record["file_name"] == str(images / "train2017" / "000000000007.jpg")
    assert record["annotations"][0]["category_id"] == 0
    assert record["neg_category_ids"] == [2]


ANNOTATION_FAULTS = [
    (lambda d, a, i: a.update(bbox=[40.0, 4.0, 16.0, 16.0]),
     r"bbox \[40.0, 4.0, 16.0, 16.0\] \(x, y, width, height\) lies outside the 48 x 32 image"),
    (lambda d, a, i: a.update(bbox=[-3.0, 4.0, 16.0, 16.0]), "lies outside the 48 x 32 image"),
    (lambda d, a, i: a.update(category_id=5), "category_id 5 is not among"),
    (lambda d, a, i: a.update(segmentation=[POLYGON[:5]]),
     "polygon 0 has an odd number of coordinates"),
    (lambda d, a, i: a.update(segmentation=[POLYGON[:4]]), "polygon 0 has 2 point"),
    (lambda d, a, i: a.update(segmentation=[]), "has no mask"),
    (lambda d, a, i: a.update(segmentation={"counts": "ab", "size": [32, 48]}),
     "segmentation is an RLE mask; LVIS masks are polygons"),
    (lambda d, a, i: a.pop("area"), "area None is not a number"),
    (lambda d, a, i: a.update(bbox=[4, 4, 16]), r"bbox \[4, 4, 16\] is not \[x, y, width"),
]


@pytest.mark.parametrize("mode", ["detectron2", "error"])
@pytest.mark.parametrize("edit, message", ANNOTATION_FAULTS)
def test_bad_annotations_stop_in_one_line_naming_json_image_annotation(tmp_path, edit, message,
                                                                       mode):
    path, images = _lvis_set(tmp_path, edit)
    with pytest.raises(DatasetError, match=message) as err:
        load_lvis_instances(path, images, on_invalid=mode)
    text = str(err.value)
    assert "\n" not in text
    assert text.startswith(f"{path}: image 'train2017/000000000007.jpg' (id 7): annotation 70: ")


@pytest.mark.parametrize("edit, message", [
    (lambda d, a, i: i.pop("coco_url"), r"image entry 0 .* lacks \['coco_url'\]"),
    (lambda d, a, i: i.pop("neg_category_ids"), "'neg_category_ids' is None, not a list"),
    (lambda d, a, i: i.update(not_exhaustive_category_ids="1"),
     "'not_exhaustive_category_ids' is '1', not a list"),
    (lambda d, a, i: d["categories"][0].pop("frequency"),
     "category 1 \\('thing'\\) has frequency None; LVIS needs 'r', 'c' or 'f'"),
    (lambda d, a, i: d["annotations"].append(dict(a)),
     "Detectron2's load_lvis_json stops: AssertionError: Annotation ids .* are not unique"),
])
def test_format_problems_stop_in_one_line_naming_the_json(tmp_path, edit, message):
    path, images = _lvis_set(tmp_path, edit)
    with pytest.raises(DatasetError, match=message) as err:
        load_lvis_instances(path, images)
    assert "\n" not in str(err.value) and str(err.value).startswith(str(path))


def test_missing_image_file_is_one_line_naming_json_and_image(tmp_path):
    path, images = _lvis_set(tmp_path, write_image=False)
    with pytest.raises(DatasetError) as err:
        load_lvis_instances(path, images)
    assert str(err.value) == (f"{path}: image 'train2017/000000000007.jpg' (id 7): file not "
                              f"found at {images / 'train2017' / '000000000007.jpg'}")


def test_skip_mode_drops_the_bad_annotation_and_warns(tmp_path, caplog):
    def two(data, ann, image):
        data["annotations"].append(dict(ann, id=71, bbox=[40.0, 4.0, 16.0, 16.0]))

    path, images = _lvis_set(tmp_path, two)
    (record,) = load_lvis_instances(path, images, on_invalid="skip")
    assert len(record["annotations"]) == 1 and record["annotations"][0]["bbox"][0] == 4.0
    assert "annotation 71: bbox [40.0, 4.0, 16.0, 16.0]" in caplog.text


# ---------------------------------------------------------------------- repeat-factor sampling
def _expected_repeat_factors(category_sets, thresh):
    """LVIS paper, appendix B.2, written out: f(c) = fraction of images with c,
    r(c) = max(1, sqrt(t / f(c))), r(image) = max over its categories (1 without any)."""
    n = len(category_sets)
    freq = {c: sum(c in s for s in category_sets) / n for s in category_sets for c in s}
    r_cat = {c: max(1.0, math.sqrt(thresh / f)) for c, f in freq.items()}
    return [max((r_cat[c] for c in s), default=1.0) for s in category_sets]


def test_repeat_factors_of_the_lvis_loader_equal_the_explicit_computation():
    """The config's sampler on a fixed set of 2000 images: category 0 everywhere, 1 in one image
    (f = 0.0005: r = sqrt(2)), 2 in two (f = 0.001: r = 1), 3 in 5 (r = 1), 4 in one image that
    also has category 1."""
    category_sets = [{0} for _ in range(2000)]
    category_sets[10] |= {1, 4}
    for i in (20, 21):
        category_sets[i] |= {2}
    for i in range(30, 35):
        category_sets[i] |= {3}
    dicts = [{"file_name": f"{i}.jpg", "image_id": i, "height": 8, "width": 8,
              "annotations": [{"category_id": c, "bbox": [0, 0, 4, 4], "bbox_mode": 1}
                              for c in sorted(s)]} for i, s in enumerate(category_sets)]
    name = "__lvis_repeat_factor_test__"
    if name in DatasetCatalog.list():
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)
    DatasetCatalog.register(name, lambda: dicts)
    MetadataCatalog.get(name).set(thing_classes=[str(c) for c in range(5)])

    cfg = LazyConfig.load(str(LOADER))
    cfg.dataloader.train.dataset.names = name
    assert cfg.dataloader.train.sampler.repeat_factors.repeat_thresh == 0.001
    sampler = instantiate(cfg.dataloader.train.sampler)
    factors = sampler._int_part + sampler._frac_part
    expected = torch.tensor(_expected_repeat_factors(category_sets, 0.001))
    assert torch.equal(factors, expected)
    assert factors[10] == pytest.approx(math.sqrt(2)) and factors[20] == 1.0
    assert int((factors > 1).sum()) == 1
    # over an epoch, the image repeated sqrt(2) times appears once or twice, the others once
    indices = sampler._get_epoch_indices(torch.Generator().manual_seed(0)).tolist()
    assert indices.count(10) in (1, 2) and indices.count(11) == 1


# ------------------------------------------------------------------------------ the converter
def test_converter_writes_lvis_fields_from_the_coco_json(shapes_dataset, tmp_path, capsys):
    coco = shapes_dataset["coco"]
    src = _json(coco / "annotations" / "instances_train.json")
    # one crowd region: its category becomes not exhaustive in that image, and it is left out
    crowd = dict(src["annotations"][0], id=999, iscrowd=1)
    src["annotations"].append(crowd)
    (tmp_path / "train.json").write_text(json.dumps(src))
    out = tmp_path / "out"
    args = [str(out), "--train", f"{tmp_path / 'train.json'}:{coco / 'images/train'}",
            "--val", f"{coco / 'annotations/instances_val.json'}:{coco / 'images/val'}",
            "--val-from-train", "3", "--rare-below", "6", "--common-below", "9"]
    # ids must stay unique in val, where held-out train images join the val json's
    val_src = _json(coco / "annotations" / "instances_val.json")
    last_train_id = max(i["id"] for i in src["images"])
    val_src["images"][0]["id"] = last_train_id
    for ann in val_src["annotations"]:
        ann["id"] += 1000
        ann["image_id"] = last_train_id if ann["image_id"] == 1 else ann["image_id"]
    (tmp_path / "val.json").write_text(json.dumps(val_src))
    args[4] = f"{tmp_path / 'val.json'}:{coco / 'images/val'}"
    assert make_lvis_main(args) == 2
    assert capsys.readouterr().err.strip() == (
        f"error: image id {last_train_id} occurs twice in the val split: ids must be unique "
        f"over the train and val jsons (as COCO's are) to move train images into val")
    val_src["images"][0]["id"] = 1000
    for ann in val_src["annotations"]:
        ann["image_id"] = 1000 if ann["image_id"] == last_train_id else ann["image_id"]
    (tmp_path / "val.json").write_text(json.dumps(val_src))
    assert make_lvis_main(args) == 0
    assert "export DETECTRON2_DATASETS=" in capsys.readouterr().out
    train, val = (_json(out / "lvis" / f"lvis_v1_{s}.json") for s in ("train", "val"))
    assert len(train["images"]) == len(src["images"]) - 3
    assert len(val["images"]) == 3 + len(_json(coco / "annotations/instances_val.json")["images"])
    assert train["categories"] == val["categories"]
    assert 999 not in {a["id"] for a in train["annotations"] + val["annotations"]}
    per_image = defaultdict(set)
    for ann in train["annotations"]:
        per_image[ann["category_id"]].add(ann["image_id"])
    for cat in train["categories"]:
        count = len(per_image[cat["id"]])
        assert cat["image_count"] == count
        assert cat["frequency"] == ("r" if count < 6 else "c" if count < 9 else "f")
    all_ids = {c["id"] for c in train["categories"]}
    for split, data in (("train", train), ("val", val)):
        present = defaultdict(set)
        for ann in data["annotations"]:
            present[ann["image_id"]].add(ann["category_id"])
        for image in data["images"]:
            folder, name = image["coco_url"].split("/")[-2:]
            assert (out / "coco" / folder / name).is_file() and "file_name" not in image
            expected_not_exhaustive = ({crowd["category_id"]} - present[image["id"]]
                                       if image["id"] == crowd["image_id"] else set())
            assert set(image["not_exhaustive_category_ids"]) == expected_not_exhaustive
            assert set(image["neg_category_ids"]) == (all_ids - present[image["id"]]
                                                      - expected_not_exhaustive)
    held_out = [i for i in val["images"] if "/train2017/" in i["coco_url"]]
    assert len(held_out) == 3


def test_synthetic_lvis_set_loads_as_lvis_v1(tmp_path, capsys):
    """The fallback without the COCO sample: the shapes set, its val ids moved past train's."""
    assert make_lvis_main([str(tmp_path), "--synthetic", "--val-from-train", "2"]) == 0
    register_lvis_v1(tmp_path)
    train, val = DatasetCatalog.get("lvis_v1_train"), DatasetCatalog.get("lvis_v1_val")
    assert (len(train), len(val)) == (14, 6)
    assert not {r["image_id"] for r in train} & {r["image_id"] for r in val}
    assert sum("/train2017/" in r["file_name"] for r in val) == 2
    assert MetadataCatalog.get("lvis_v1_train").thing_classes == ["disc", "square", "triangle"]
