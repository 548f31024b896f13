"""COCO-format instance datasets for Detectron2: loaded as Detectron2 does, or strictly checked.

Three ways to treat a json (``on_invalid``; ``--invalid-annotations`` of the entry points):

- ``"detectron2"`` (default): the records Detectron2's own ``load_coco_json`` makes, so the
  official COCO jsons train exactly as in ViTDet. Its rules (v0.6 and the current release): a
  polygon with an odd number of coordinates or fewer than 3 points is dropped; an instance whose
  polygons are all dropped is skipped and counted (one warning with the count, naming the first
  ones); an instance with no ``segmentation`` at all is kept, without a mask; uncompressed RLE is
  compressed; annotations of image ids missing from ``images`` are ignored with a warning. What
  Detectron2 would stop on (a ``category_id`` not among the categories, an empty ``bbox``), or
  fail on later inside a data-loader worker (an image file that is not there), stops here, at
  load time, with one line naming the json, the image and the annotation.
- ``"error"``: every annotation is checked and the first problem stops the run in one line:

    <json>: image 'train_0003.jpg' (id 3): annotation 17: bbox [10, 10, -4, 8] has a negative ...

- ``"skip"``: the same checks, but bad annotations / images are dropped whole, with a warning.

Ways to register a dataset (see ``register_from_spec``, used by ``tools/train_det.py --dataset``):

- ``NAME=JSON:IMAGES``  one split: a COCO json and the folder its ``file_name``s are relative to;
- ``NAME=DIR``          every ``DIR/annotations/instances_<split>.json`` as ``NAME_<split>``, with
                        images in ``DIR/images/<split>``, ``DIR/<split>`` or ``DIR/<split>2017``;
- ``register_coco2017(root)``: ``coco_2017_{train,val}`` from ``root/coco/{train,val}2017`` and
  ``root/coco/annotations/instances_{train,val}2017.json`` (root: ``$DETECTRON2_DATASETS``).
"""
from __future__ import annotations

import json
import logging
import math
import os
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from mae_transfer.detection import compat

compat.setup()  # Detectron2 v0.6 cannot be imported without it (no compiled _C, Image.LINEAR)
from detectron2.data import DatasetCatalog, MetadataCatalog  # noqa: E402
from detectron2.structures import BoxMode  # noqa: E402

logger = logging.getLogger("mae_transfer.detection")

#: The two COCO 2017 splits Detectron2's configs name, and their folder / json names.
COCO2017_SPLITS = {"coco_2017_train": ("train2017", "instances_train2017.json"),
                   "coco_2017_val": ("val2017", "instances_val2017.json")}
_REQUIRED_IMAGE_KEYS = ("id", "file_name", "height", "width")
#: What to do with annotations that cannot be trained on (module docstring); first: default.
INVALID_MODES = ("detectron2", "error", "skip")
DEFAULT_ON_INVALID = INVALID_MODES[0]


class DatasetError(ValueError):
    """A dataset that cannot be used; the message is one line naming the file and the image."""


# ------------------------------------------------------------------------------------ checks
def _number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _bbox_problem(bbox) -> Optional[str]:
    if not isinstance(bbox, (list, tuple)) or len(bbox) != 4 or not all(map(_number, bbox)):
        return f"bbox {bbox!r} is not [x, y, width, height] with 4 finite numbers"
    if bbox[2] < 0 or bbox[3] < 0:
        return f"bbox {list(bbox)} has a negative width or height"
    return None


def _segmentation_problem(segm, height: int, width: int) -> Optional[str]:
    if isinstance(segm, dict):  # RLE
        if "counts" not in segm or list(segm.get("size", [])) != [height, width]:
            return (f"RLE mask has size {segm.get('size')!r} (and counts: {'counts' in segm}); "
                    f"the image is [{height}, {width}]")
        return None
    if not isinstance(segm, list) or not segm:
        return ("has no mask (empty or missing 'segmentation'); Mask R-CNN needs one per "
                "non-crowd instance")
    for k, poly in enumerate(segm):
        if not isinstance(poly, list) or not all(map(_number, poly)):
            return f"polygon {k} is not a flat list of numbers"
        if len(poly) % 2:
            return f"polygon {k} has an odd number of coordinates ({len(poly)})"
        if len(poly) < 6:
            return (f"polygon {k} has {len(poly) // 2} point(s); a polygon needs at least 3 "
                    f"(x, y) points")
    return None


def annotation_problem(ann: dict, image: dict, category_ids) -> Optional[str]:
    """Why ``ann`` (a COCO annotation of ``image``) cannot be trained on, or None if it can."""
    if ann.get("category_id") not in category_ids:
        return f"category_id {ann.get('category_id')!r} is not among the json's categories"
    problem = _bbox_problem(ann.get("bbox"))
    if problem:
        return problem
    segm = ann.get("segmentation")
    if ann.get("iscrowd", 0) and segm is None:
        return None  # crowd regions are ignored in training; evaluation reads the json itself
    return _segmentation_problem(segm, image["height"], image["width"])


# ----------------------------------------------------------------------------------- loading
def _read_json(json_file: Path, hint: str = "") -> dict:
    if not json_file.is_file():
        raise DatasetError(f"no annotation file at {json_file}{hint}")
    try:
        with open(json_file) as f:
            data = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DatasetError(f"{json_file} is not valid JSON ({exc})") from exc
    for key in ("images", "annotations", "categories"):
        if not isinstance(data.get(key), list):
            raise DatasetError(f"{json_file} is not a COCO instances file: no '{key}' list")
    if not data["categories"]:
        raise DatasetError(f"{json_file} has no categories")
    return data


def detectron2_polygons(polygons: list) -> list:
    """The polygons Detectron2's ``load_coco_json`` keeps: even length, at least 3 points."""
    return [poly for poly in polygons if len(poly) % 2 == 0 and len(poly) >= 6]


def _detectron2_stop(ann: dict, category_ids) -> Optional[str]:
    """Why Detectron2 would stop on ``ann`` (its loader raises on an unknown category or an empty
    bbox; a missing one fails in the data loader), or None."""
    if ann.get("category_id") not in category_ids:
        return f"category_id {ann.get('category_id')!r} is not among the json's categories"
    if not ann.get("bbox"):
        return "has no bbox (missing or empty)"
    return None


def _to_record_annotation(ann: dict, segm, id_map: Dict[int, int]) -> dict:
    """A Detectron2 record annotation (contiguous class id, compressed RLE), as Detectron2's."""
    obj = {"bbox": list(ann["bbox"]), "bbox_mode": BoxMode.XYWH_ABS,
           "category_id": id_map[ann["category_id"]], "iscrowd": int(ann.get("iscrowd", 0))}
    if isinstance(segm, dict) and isinstance(segm.get("counts"), list):
        from pycocotools import mask as mask_util  # uncompressed RLE -> compressed, as expected

        segm = mask_util.frPyObjects(segm, *segm["size"])
    if segm:  # Detectron2 keeps an instance without a mask when it has no segmentation
        obj["segmentation"] = segm
    return obj


def load_coco_instances(json_file, image_root, dataset_name: Optional[str] = None,
                        check_images: bool = True, on_invalid: str = DEFAULT_ON_INVALID,
                        missing_hint: str = "") -> List[dict]:
    """Detectron2 dataset dicts from a COCO instances json (see the module docstring).

    With ``dataset_name``, sets its metadata: ``thing_classes`` (categories sorted by id) and
    ``thing_dataset_id_to_contiguous_id``. ``on_invalid``: ``"detectron2"`` (default) gives the
    records of Detectron2's ``load_coco_json`` (invalid polygons dropped, instances left without
    one skipped and counted); ``"error"`` raises ``DatasetError`` at the first bad annotation or
    missing image; ``"skip"`` drops them and warns. ``missing_hint`` is appended to the error
    for a missing json (where the data should be).
    """
    if on_invalid not in INVALID_MODES:
        raise ValueError(f"on_invalid must be one of {INVALID_MODES}, got {on_invalid!r}")
    as_detectron2 = on_invalid == "detectron2"
    json_file, image_root = Path(json_file), Path(image_root)
    data = _read_json(json_file, missing_hint)
    categories = sorted(data["categories"], key=lambda c: c["id"])
    id_map = {c["id"]: i for i, c in enumerate(categories)}
    if dataset_name is not None:
        meta = MetadataCatalog.get(dataset_name)
        meta.thing_classes = [c["name"] for c in categories]
        meta.thing_dataset_id_to_contiguous_id = id_map

    images: Dict[int, dict] = {}
    for i, img in enumerate(data["images"]):
        missing = [k for k in _REQUIRED_IMAGE_KEYS if k not in img]
        if missing:
            raise DatasetError(f"{json_file}: image entry {i} ({img.get('file_name', '?')!r}) "
                               f"lacks {missing}")
        images[img["id"]] = img
    per_image: Dict[int, List[dict]] = {i: [] for i in images}
    skipped: List[str] = []  # strict "skip" mode: what was dropped
    orphans = 0  # annotations of images not in the json ("detectron2" mode ignores them)
    dropped_polygons, no_polygon_left = 0, []  # "detectron2" mode

    def reject(message: str) -> None:
        if on_invalid == "skip":
            skipped.append(message)
        else:
            raise DatasetError(message)

    for ann in data["annotations"]:
        img = images.get(ann.get("image_id"))
        if img is None:
            if as_detectron2:
                orphans += 1
            else:
                reject(f"{json_file}: annotation {ann.get('id')} refers to image id "
                       f"{ann.get('image_id')!r}, which is not in 'images'")
            continue
        where = (f"{json_file}: image '{img['file_name']}' (id {img['id']}): "
                 f"annotation {ann.get('id')}")
        segm = ann.get("segmentation")
        if as_detectron2:
            problem = _detectron2_stop(ann, id_map)
            if problem:
                raise DatasetError(f"{where}: {problem}")
            if segm and isinstance(segm, list):
                kept = detectron2_polygons(segm)
                dropped_polygons += len(segm) - len(kept)
                if not kept:
                    no_polygon_left.append(where)
                    continue
                segm = kept
        else:
            problem = annotation_problem(ann, img, id_map)
            if problem:
                reject(f"{where}: {problem}")
                continue
        per_image[img["id"]].append(_to_record_annotation(ann, segm, id_map))

    records = []
    for image_id in sorted(images):
        img = images[image_id]
        path = image_root / img["file_name"]
        if check_images and not path.is_file():
            reject(f"{json_file}: image '{img['file_name']}' (id {image_id}): file not found "
                   f"at {path}")
            continue
        records.append({"file_name": str(path), "height": img["height"], "width": img["width"],
                        "image_id": image_id, "annotations": per_image[image_id]})
    if skipped:
        logger.warning("%s: skipped %d invalid annotations / images, e.g.: %s", json_file,
                       len(skipped), " | ".join(skipped[:3]))
    if orphans:
        logger.warning("%s: ignored %d annotations whose image id is not in 'images'",
                       json_file, orphans)
    if dropped_polygons:
        logger.warning("%s: dropped %d polygons with an odd number of coordinates or fewer than "
                       "3 points; filtered out %d instances left without a valid polygon "
                       "(Detectron2's rule)%s", json_file, dropped_polygons,
                       len(no_polygon_left),
                       ", e.g.: " + " | ".join(no_polygon_left[:3]) if no_polygon_left else "")
    logger.info("loaded %d images, %d annotations, %d categories from %s", len(records),
                sum(len(r["annotations"]) for r in records), len(categories), json_file)
    return records


# ------------------------------------------------------------------------------ registration
def register_coco_instances(name: str, json_file, image_root,
                            on_invalid: str = DEFAULT_ON_INVALID, missing_hint: str = "") -> str:
    """Register ``name`` (replacing an earlier registration) as a checked COCO json + folder."""
    json_file, image_root = Path(json_file).resolve(), Path(image_root).resolve()
    if name in DatasetCatalog.list():
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)
    DatasetCatalog.register(name, lambda: load_coco_instances(
        json_file, image_root, name, on_invalid=on_invalid, missing_hint=missing_hint))
    MetadataCatalog.get(name).set(json_file=str(json_file), image_root=str(image_root),
                                  evaluator_type="coco")
    return name


def _image_folder_for(root: Path, split: str) -> Path:
    for candidate in (root / "images" / split, root / split, root / f"{split}2017",
                      root / "images"):
        if candidate.is_dir():
            return candidate
    raise DatasetError(f"no image folder for split '{split}' under {root} "
                       f"(looked for images/{split}, {split}, {split}2017, images)")


def register_coco_folder(prefix: str, root, on_invalid: str = DEFAULT_ON_INVALID) -> List[str]:
    """Register every ``root/annotations/instances_<split>.json`` as ``<prefix>_<split>``."""
    root = Path(root)
    jsons = sorted((root / "annotations").glob("instances_*.json"))
    if not jsons:
        raise DatasetError(f"no annotations/instances_<split>.json under {root}")
    names = []
    for js in jsons:
        split = js.stem[len("instances_"):]
        names.append(register_coco_instances(f"{prefix}_{split}", js,
                                             _image_folder_for(root, split), on_invalid))
    return names


def default_datasets_root() -> Path:
    """``$DETECTRON2_DATASETS``, else ``./datasets`` (Detectron2's own convention)."""
    return Path(os.path.expanduser(os.environ.get("DETECTRON2_DATASETS", "datasets")))


def register_coco2017(root=None, on_invalid: str = DEFAULT_ON_INVALID) -> List[str]:
    """(Re-)register ``coco_2017_train`` / ``coco_2017_val`` from ``root/coco`` (checked loader).

    Registration reads nothing; a missing file is reported when the split is first loaded.
    """
    coco = Path(root if root is not None else default_datasets_root()) / "coco"
    hint = (" (COCO 2017 is read from $DETECTRON2_DATASETS/coco, else ./datasets/coco; "
            "--coco-root DIR reads DIR/coco)")
    return [register_coco_instances(name, coco / "annotations" / js, coco / folder, on_invalid,
                                    missing_hint=hint)
            for name, (folder, js) in COCO2017_SPLITS.items()]


def register_from_spec(spec: str, on_invalid: str = DEFAULT_ON_INVALID) -> List[str]:
    """Register ``NAME=JSON:IMAGES`` or ``NAME=DIR`` (COCO layout); returns the names made."""
    name, sep, value = spec.partition("=")
    if not sep or not name or not value:
        raise DatasetError(f"dataset spec {spec!r} is not NAME=JSON:IMAGES or NAME=DIR")
    cut = value.find(".json:")
    if cut >= 0:
        json_file, image_root = value[:cut + len(".json")], value[cut + len(".json:"):]
        if not Path(image_root).is_dir():
            raise DatasetError(f"dataset {name}: image folder {image_root} does not exist")
        return [register_coco_instances(name, json_file, image_root, on_invalid)]
    if Path(value).is_dir():
        return register_coco_folder(name, value, on_invalid)
    raise DatasetError(f"dataset {name}: {value!r} is neither JSON:IMAGES nor a folder")


def check_num_classes(dataset_names: Sequence[str] | str, num_classes: int) -> None:
    """Raise if a loaded dataset's class count differs from the model's ``num_classes``."""
    names = [dataset_names] if isinstance(dataset_names, str) else list(dataset_names)
    for name in names:
        classes = MetadataCatalog.get(name).get("thing_classes")
        if classes is not None and len(classes) != num_classes:
            raise DatasetError(
                f"dataset {name} has {len(classes)} classes ({', '.join(classes[:5])}"
                f"{', ...' if len(classes) > 5 else ''}) but the model predicts {num_classes}: "
                f"pass model.roi_heads.num_classes={len(classes)}")
