"""COCO-format datasets: checked loading, registration by path, clear errors naming the image."""
import json
import shutil

import pytest

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets import load_coco_json
from detectron2.structures import BoxMode

from mae_transfer.detection.datasets import (DatasetError, check_num_classes, load_coco_instances,
                                register_coco2017, register_from_spec)


def _coco(shapes_dataset):
    root = shapes_dataset["coco"]
    return root, json.loads((root / "annotations" / "instances_train.json").read_text())


def _write_broken(tmp_path, data, edit):
    """A copy of the train json with ``edit(data)`` applied; returns (json path, edited image)."""
    data = json.loads(json.dumps(data))
    ann = data["annotations"][5]
    image = next(i for i in data["images"] if i["id"] == ann["image_id"])
    edit(data, ann, image)
    path = tmp_path / "broken.json"
    path.write_text(json.dumps(data))
    return path, image, ann


def test_valid_json_loads_with_contiguous_classes_and_absolute_paths(shapes_dataset):
    root, data = _coco(shapes_dataset)
    records = load_coco_instances(root / "annotations" / "instances_train.json",
                                  root / "images" / "train", dataset_name="t_valid")
    assert len(records) == len(data["images"]) == 16
    assert sum(len(r["annotations"]) for r in records) == len(data["annotations"])
    assert MetadataCatalog.get("t_valid").thing_classes == ["disc", "square", "triangle"]
    first = data["annotations"][0]
    rec = next(r for r in records if r["image_id"] == first["image_id"])
    obj = rec["annotations"][0]
    assert obj["category_id"] == first["category_id"] - 1
    assert obj["bbox"] == first["bbox"] and obj["bbox_mode"] == BoxMode.XYWH_ABS
    assert obj["segmentation"] == first["segmentation"]
    assert all((root / "images" / "train" / r["file_name"].split("/")[-1]).is_file()
               for r in records)


@pytest.mark.parametrize("edit, message", [
    (lambda d, a, i: a.update(bbox=[10, 10, -4, 8]), r"bbox \[10, 10, -4, 8\] has a negative"),
    (lambda d, a, i: a.update(segmentation=[[1, 1, 5, 5]]),
     "polygon 0 has 2 point\\(s\\); a polygon needs at least 3"),
    (lambda d, a, i: a.update(segmentation=[[1, 1, 5, 5, 7]]), "odd number of coordinates"),
    (lambda d, a, i: a.update(category_id=99), "category_id 99 is not among"),
    (lambda d, a, i: a.update(segmentation={"counts": "abc", "size": [3, 3]}),
     r"RLE mask has size \[3, 3\]"),
    (lambda d, a, i: i.update(file_name="gone.jpg"), "file not found"),
])
def test_strict_mode_error_names_the_json_image_and_annotation(shapes_dataset, tmp_path, edit,
                                                                message):
    root, data = _coco(shapes_dataset)
    path, image, ann = _write_broken(tmp_path, data, edit)
    with pytest.raises(DatasetError, match=message) as err:
        load_coco_instances(path, root / "images" / "train", on_invalid="error")
    text = str(err.value)
    assert "\n" not in text and str(path) in text
    assert f"image '{image['file_name']}' (id {image['id']})" in text
    if "file not found" not in message:
        assert f"annotation {ann['id']}:" in text


@pytest.mark.parametrize("split", ["train", "val"])
def test_default_mode_records_are_detectron2s(shapes_dataset, split):
    root = shapes_dataset["coco"]
    js, images = root / "annotations" / f"instances_{split}.json", root / "images" / split
    reference = load_coco_json(str(js), str(images), f"t_d2_{split}")
    assert load_coco_instances(js, images, dataset_name=f"t_ours_{split}") == reference
    assert sum(len(r["annotations"]) for r in reference) > len(reference)
    # without a name: the same (contiguous) records, and no metadata left behind
    before = set(MetadataCatalog.list())
    assert load_coco_instances(js, images) == reference
    assert set(MetadataCatalog.list()) == before


def test_what_detectron2_still_stops_on_is_one_line(shapes_dataset, tmp_path):
    root, data = _coco(shapes_dataset)
    path, _, _ = _write_broken(tmp_path, data,
                               lambda d, a, i: a.update(id=d["annotations"][0]["id"]))
    with pytest.raises(DatasetError, match="are not unique") as err:
        load_coco_instances(path, root / "images" / "train")
    assert str(path) in str(err.value) and "\n" not in str(err.value)


def test_skip_mode_drops_only_the_broken_annotation(shapes_dataset, tmp_path, caplog):
    root, data = _coco(shapes_dataset)
    path, image, ann = _write_broken(tmp_path, data,
                                     lambda d, a, i: a.update(bbox=[0, 0, 3, -1]))
    records = load_coco_instances(path, root / "images" / "train", on_invalid="skip")
    assert sum(len(r["annotations"]) for r in records) == len(data["annotations"]) - 1
    assert len(records) == 16
    assert f"image '{image['file_name']}'" in caplog.text and "skipped 1" in caplog.text
    # = Detectron2's records of the json without that annotation
    data["annotations"] = [a for a in data["annotations"] if a["id"] != ann["id"]]
    clean = tmp_path / "clean.json"
    clean.write_text(json.dumps(data))
    reference = load_coco_json(str(clean), str(root / "images" / "train"), "t_skip_ref")
    assert records == reference


def test_json_problems_outside_annotations(tmp_path):
    with pytest.raises(DatasetError, match="no annotation file"):
        load_coco_instances(tmp_path / "none.json", tmp_path)
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(DatasetError, match="not valid JSON"):
        load_coco_instances(tmp_path / "bad.json", tmp_path)
    (tmp_path / "x.json").write_text(json.dumps({"images": [], "annotations": []}))
    with pytest.raises(DatasetError, match="no 'categories' list"):
        load_coco_instances(tmp_path / "x.json", tmp_path)


def test_register_folder_and_json_specs(shapes_dataset, tmp_path):
    root = shapes_dataset["coco"]
    assert register_from_spec(f"t_dir={root}") == ["t_dir_train", "t_dir_val"]
    assert len(DatasetCatalog.get("t_dir_val")) == 4
    meta = MetadataCatalog.get("t_dir_val")
    assert meta.json_file.endswith("instances_val.json") and meta.evaluator_type == "coco"
    js = root / "annotations" / "instances_train.json"
    assert register_from_spec(f"t_one={js}:{root / 'images' / 'train'}") == ["t_one"]
    assert len(DatasetCatalog.get("t_one")) == 16
    # registering again replaces the old entry instead of failing
    assert register_from_spec(f"t_one={js}:{root / 'images' / 'train'}") == ["t_one"]
    for bad, msg in [("noequals", "NAME=JSON:IMAGES"),
                     (f"x={js}:{tmp_path / 'missing'}", "image folder"),
                     (f"x={tmp_path / 'nothing'}", "neither JSON:IMAGES nor a folder")]:
        with pytest.raises(DatasetError, match=msg):
            register_from_spec(bad)


def test_coco2017_is_registered_from_the_given_root(shapes_dataset, tmp_path):
    coco = tmp_path / "coco"
    (coco / "annotations").mkdir(parents=True)
    shutil.copytree(shapes_dataset["coco"] / "images" / "val", coco / "val2017")
    shutil.copy(shapes_dataset["coco"] / "annotations" / "instances_val.json",
                coco / "annotations" / "instances_val2017.json")
    assert register_coco2017(tmp_path) == ["coco_2017_train", "coco_2017_val"]
    assert len(DatasetCatalog.get("coco_2017_val")) == 4
    with pytest.raises(DatasetError, match="instances_train2017.json"):
        DatasetCatalog.get("coco_2017_train")


def test_class_count_mismatch_is_reported_with_the_override(shapes_dataset):
    register_from_spec(f"t_cls={shapes_dataset['coco']}")
    DatasetCatalog.get("t_cls_val")
    check_num_classes("t_cls_val", 3)
    with pytest.raises(DatasetError, match="model.roi_heads.num_classes=3"):
        check_num_classes(["t_cls_val"], 80)


def test_default_mode_stops_only_where_detectron2_would(shapes_dataset, tmp_path):
    """Detectron2's loader raises on an unknown category and an empty bbox (one line here, naming
    the annotation) and accepts what it does not check, e.g. a negative box width."""
    root, data = _coco(shapes_dataset)
    images = root / "images" / "train"
    for edit, message in [(lambda d, a, i: a.update(category_id=99), "category_id 99"),
                          (lambda d, a, i: a.update(bbox=[]), "has no bbox")]:
        path, image, ann = _write_broken(tmp_path, data, edit)
        with pytest.raises(DatasetError, match=message) as err:
            load_coco_instances(path, images)
        assert f"annotation {ann['id']}:" in str(err.value)
    path, image, ann = _write_broken(tmp_path, data, lambda d, a, i: a.update(bbox=[1, 1, -4, 8]))
    records = load_coco_instances(path, images)
    assert sum(len(r["annotations"]) for r in records) == len(data["annotations"])
