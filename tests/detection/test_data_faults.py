"""Broken detection data in the default mode: each fault works correctly or is one line naming
the json, the image (and the annotation); found before training where cheap (json, image
headers), else when the data loader reads the image (``CheckedDatasetMapper``)."""
import io
import json

import numpy as np
import pytest
import torch
from detectron2.config import LazyConfig
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.evaluation import COCOEvaluator
from detectron2.structures import Boxes, Instances
from PIL import Image

from mae_transfer.detection.datasets import (DatasetError, load_coco_instances,
                                             register_coco_instances)
from mae_transfer.detection.image_files import EXIF_ORIENTATION
from mae_transfer.detection.mapper import CheckedDatasetMapper
from mae_transfer.detection.training import build_train_loader

SIZE = (48, 32)  # width, height of the stored images
POLYGON = [4.0, 4.0, 20.0, 4.0, 20.0, 20.0, 4.0, 20.0]


def _rgb(size=SIZE) -> Image.Image:
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8))


def _jpeg_bytes(img: Image.Image, **kwargs) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="JPEG", **kwargs)
    return buf.getvalue()


def _exif_rotated() -> bytes:
    exif = Image.Exif()
    exif[EXIF_ORIENTATION] = 6  # stored 48 x 32, displayed 32 x 48
    return _jpeg_bytes(_rgb(), exif=exif.tobytes())


def _truncated(data: bytes) -> bytes:
    return data[: len(data) * 2 // 3]  # the header and part of the pixel data


def _png_bytes() -> bytes:
    buf = io.BytesIO()
    _rgb().save(buf, format="PNG")
    return buf.getvalue()


#: name -> (file bytes, the (width, height) the json gives)
IMAGES = {
    "good": (lambda: _jpeg_bytes(_rgb()), SIZE),
    "zero_byte": (lambda: b"", SIZE),
    "wrong_size": (lambda: _jpeg_bytes(_rgb()), (SIZE[0] + 10, SIZE[1])),
    "not_an_image": (lambda: b"width,height\n48,32\n", SIZE),
    "exif_stored_size": (_exif_rotated, SIZE),  # the json gives the size before rotation
    "truncated": (lambda: _truncated(_jpeg_bytes(_rgb())), SIZE),
    "png_as_jpg": (_png_bytes, SIZE),
    "grayscale": (lambda: _jpeg_bytes(_rgb().convert("L")), SIZE),
    "cmyk": (lambda: _jpeg_bytes(_rgb().convert("CMYK")), SIZE),
    "exif_rotated": (_exif_rotated, (SIZE[1], SIZE[0])),  # the displayed size: right
}


def _dataset(tmp_path, kind: str, edit=None, write_file=True):
    """One image of ``kind`` (``IMAGES``) with one annotation; ``edit(data, ann, image)``
    changes the json. Returns (json path, image folder, image entry, annotation)."""
    folder = tmp_path / "images"
    folder.mkdir(exist_ok=True)
    content, (width, height) = IMAGES[kind]
    if write_file:
        (folder / f"{kind}.jpg").write_bytes(content())
    image = {"id": 7, "file_name": f"{kind}.jpg", "width": width, "height": height}
    ann = {"id": 70, "image_id": 7, "category_id": 1, "iscrowd": 0, "area": 256.0,
           "bbox": [4.0, 4.0, 16.0, 16.0], "segmentation": [list(POLYGON)]}
    data = {"images": [image], "annotations": [ann],
            "categories": [{"id": 1, "name": "thing"}]}
    if edit:
        edit(data, ann, image)
    path = tmp_path / "instances.json"
    path.write_text(json.dumps(data))
    return path, folder, image, ann


def _mapper(is_train=True, **kwargs):
    return CheckedDatasetMapper(is_train=is_train, augmentations=[], image_format="RGB",
                                use_instance_mask=True, recompute_boxes=is_train, **kwargs)


def _one_line(err, *names):
    text = str(err.value)
    assert "\n" not in text
    for name in names:
        assert str(name) in text, (name, text)
    return text


# ------------------------------------------------------------------ annotation faults (json)
@pytest.mark.parametrize("edit, message", [
    (lambda d, a, i: a.update(segmentation={"counts": "abc", "size": [3, 3]}),
     r"RLE mask has size \[3, 3\]; the image is \[32, 48\]"),
    (lambda d, a, i: a.update(segmentation={"size": [32, 48]}), "RLE mask has no 'counts'"),
    (lambda d, a, i: a.update(bbox=["4", "4", "16", "16"]),
     r"bbox \['4', '4', '16', '16'\] is not \[x, y, width, height\] with 4 finite numbers"),
    (lambda d, a, i: a.update(bbox=[4, 4, 16]), r"bbox \[4, 4, 16\] is not \[x, y, width"),
    (lambda d, a, i: a.update(bbox=[4, 4, float("nan"), 16]), "4 finite numbers"),
    (lambda d, a, i: a.update(segmentation="polygon"), "segmentation of type str is neither"),
    (lambda d, a, i: a.update(segmentation=5), "segmentation of type int is neither"),
    (lambda d, a, i: a.update(segmentation=POLYGON), "polygon 0 is not a flat list of numbers"),
    (lambda d, a, i: a.update(category_id=3), "category_id 3 is not among"),
    (lambda d, a, i: a.pop("bbox"), "has no bbox"),
])
def test_default_mode_stops_on_annotations_training_cannot_read(tmp_path, edit, message):
    path, folder, image, ann = _dataset(tmp_path, "good", edit)
    with pytest.raises(DatasetError, match=message) as err:
        load_coco_instances(path, folder)
    _one_line(err, path, "image 'good.jpg' (id 7): annotation 70:")


@pytest.mark.parametrize("bbox", [[4.0, 4.0, -16.0, 16.0], [4.0, 4.0, 0.0, 0.0]])
def test_negative_or_empty_bbox_trains_on_the_box_of_its_mask(tmp_path, bbox):
    """Detectron2 keeps the box; the train mapper (``recompute_boxes``) replaces it by the
    mask's box, so the instance trains correctly."""
    path, folder, _, _ = _dataset(tmp_path, "good", lambda d, a, i: a.update(bbox=bbox))
    (record,) = load_coco_instances(path, folder)
    assert record["annotations"][0]["bbox"] == bbox
    instances = _mapper()(record)["instances"]
    assert instances.gt_boxes.tensor.tolist() == [[4.0, 4.0, 20.0, 20.0]]


def test_odd_polygon_is_dropped_as_detectron2_does(tmp_path, caplog):
    def edit(data, ann, image):
        ann["segmentation"] = [POLYGON + [1.0], list(POLYGON)]

    path, folder, _, _ = _dataset(tmp_path, "good", edit)
    (record,) = load_coco_instances(path, folder)
    assert record["annotations"][0]["segmentation"] == [POLYGON]
    assert "dropped 1 polygons" in caplog.text


# ------------------------------------------------------------------------ image files
@pytest.mark.parametrize("kind, message", [
    ("zero_byte", r"zero_byte.jpg is empty \(0 bytes\)"),
    ("wrong_size", "the json says width 58, height 32 but .*wrong_size.jpg is 48 x 32"),
    ("not_an_image", "is not an image Pillow can read"),
    ("exif_stored_size", "the json says width 48, height 32 but .* is 32 x 48 .*EXIF"),
])
def test_image_faults_are_found_before_training(tmp_path, kind, message):
    path, folder, _, _ = _dataset(tmp_path, kind)
    with pytest.raises(DatasetError, match=message) as err:
        load_coco_instances(path, folder)
    _one_line(err, path, f"image '{kind}.jpg' (id 7): ")


@pytest.mark.parametrize("size", [("48", "32"), (0, 32), (48.5, 32)])
def test_image_size_in_the_json_must_be_whole_numbers(tmp_path, size):
    path, folder, _, _ = _dataset(tmp_path, "good",
                                  lambda d, a, i: i.update(width=size[0], height=size[1]))
    with pytest.raises(DatasetError, match="are not both positive whole numbers") as err:
        load_coco_instances(path, folder)
    _one_line(err, path, "image 'good.jpg' (id 7)")


def test_missing_image_file_is_one_line(tmp_path):
    path, folder, _, _ = _dataset(tmp_path, "good", write_file=False)
    with pytest.raises(DatasetError, match="file not found at") as err:
        load_coco_instances(path, folder)
    _one_line(err, path, "image 'good.jpg' (id 7)")


def test_skip_mode_drops_an_image_of_the_wrong_size(tmp_path):
    path, folder, _, _ = _dataset(tmp_path, "wrong_size")
    assert load_coco_instances(path, folder, on_invalid="skip") == []


@pytest.mark.parametrize("kind", ["png_as_jpg", "grayscale", "cmyk", "exif_rotated"])
@pytest.mark.parametrize("is_train", [True, False])
def test_unusual_but_valid_images_load_as_rgb_of_the_json_size(tmp_path, kind, is_train):
    path, folder, image, _ = _dataset(tmp_path, kind)
    (record,) = load_coco_instances(path, folder)
    tensor = _mapper(is_train)(record)["image"]
    assert tuple(tensor.shape) == (3, image["height"], image["width"])
    if kind == "cmyk":
        assert tensor.float().std() > 10  # real pixels, not a blank conversion


def test_truncated_jpeg_is_named_when_the_data_loader_reads_it(tmp_path):
    path, folder, _, _ = _dataset(tmp_path, "truncated")
    (record,) = load_coco_instances(path, folder)  # the header is fine
    with pytest.raises(DatasetError, match=r"cannot be read \(OSError: .*truncated") as err:
        _mapper()(record)
    _one_line(err, folder / "truncated.jpg", "(id 7)")


def test_an_image_changed_since_the_check_is_named(tmp_path):
    path, folder, _, _ = _dataset(tmp_path, "good")
    (record,) = load_coco_instances(path, folder)
    record["width"] += 1
    with pytest.raises(DatasetError, match=r"cannot be read \(SizeMismatchError: ") as err:
        _mapper()(record)
    _one_line(err, folder / "good.jpg")


def test_a_worker_process_error_stays_one_line(tmp_path):
    """torch re-raises a worker's exception with the worker's traceback as its message."""
    path, folder, _, _ = _dataset(tmp_path, "truncated")
    records = load_coco_instances(path, folder)
    loader = torch.utils.data.DataLoader(records, batch_size=None, num_workers=1,
                                         collate_fn=_mapper())
    with pytest.raises(DatasetError) as err:
        next(iter(loader))
    assert _one_line(err, folder / "truncated.jpg").startswith("image ")


def test_rle_masks_under_the_polygon_format_name_the_fix(tmp_path):
    from pycocotools import mask as mask_util
    rle = mask_util.encode(np.asfortranarray(np.ones((32, 48), dtype=np.uint8)))
    rle["counts"] = rle["counts"].decode()
    path, folder, _, _ = _dataset(tmp_path, "good", lambda d, a, i: a.update(segmentation=rle))
    (record,) = load_coco_instances(path, folder)
    with pytest.raises(DatasetError, match="instance_mask_format=bitmask") as err:
        _mapper()(record)
    _one_line(err, "good.jpg")
    masks = _mapper(instance_mask_format="bitmask")(record)["instances"].gt_masks.tensor
    assert masks.shape == (1, 32, 48) and bool(masks.all())


# ------------------------------------------------------------------ json without annotations
def _without_annotations(how):
    def edit(data, ann, image):
        if how == "missing":
            del data["annotations"]
        else:
            data["annotations"] = []
    return edit


@pytest.mark.parametrize("how", ["missing", "empty"])
def test_json_without_annotations_loads_as_a_test_split_but_cannot_train(tmp_path, how,
                                                                         caplog):
    path, folder, _, _ = _dataset(tmp_path, "good", _without_annotations(how))
    (record,) = load_coco_instances(path, folder)
    assert record["annotations"] == [] and record["image_id"] == 7
    assert "has no annotations" in caplog.text
    register_coco_instances("t_noann_train", path, folder)
    cfg = LazyConfig.load("detection/configs/mask_rcnn_vit_mini_cpu.py")
    cfg.dataloader.train.dataset.names = "t_noann_train"
    with pytest.raises(DatasetError, match="no annotations to train on in t_noann_train") as err:
        build_train_loader(cfg)
    _one_line(err, path.resolve())


@pytest.mark.parametrize("how, expected", [("missing", {}), ("empty", "nan")])
def test_coco_evaluator_on_a_split_without_annotations(tmp_path, how, expected):
    """No 'annotations' key: COCOEvaluator writes the predictions and computes no AP; an empty
    list: it evaluates against no ground truth, every AP NaN."""
    path, folder, _, _ = _dataset(tmp_path, "good", _without_annotations(how))
    name = f"t_noann_eval_{how}"
    register_coco_instances(name, path, folder)
    DatasetCatalog.get(name)
    evaluator = COCOEvaluator(name, tasks=("bbox",), distributed=False,
                              output_dir=str(tmp_path / "out"), use_fast_impl=False)
    evaluator.reset()
    pred = Instances((32, 48), pred_boxes=Boxes(torch.tensor([[4.0, 4.0, 20.0, 20.0]])),
                     scores=torch.tensor([0.9]), pred_classes=torch.tensor([0]))
    evaluator.process([{"image_id": 7}], [{"instances": pred}])
    results = evaluator.evaluate()
    written = json.loads((tmp_path / "out" / "coco_instances_results.json").read_text())
    assert [(p["image_id"], p["category_id"]) for p in written] == [(7, 1)]
    if expected == "nan":
        assert np.isnan(results["bbox"]["AP"])
    else:
        assert results == expected
    MetadataCatalog.remove(name)
