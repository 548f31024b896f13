"""COCO-format instance datasets for Detectron2: loaded by Detectron2, checked on top.

The records always come from Detectron2's own ``load_coco_json``, so the official COCO jsons
train exactly as in ViTDet. Before it reads the json, a validation pass (one extra parse of the
json) does what ``on_invalid`` (``--invalid-annotations`` of the entry points) asks:

- ``"detectron2"`` (default): Detectron2's rules only (v0.6 and the current release): a polygon
  with an odd number of coordinates or fewer than 3 points is dropped; an instance whose polygons
  are all dropped is skipped (one warning here with the counts, naming the first instances, read
  off Detectron2's records); an instance with no ``segmentation`` at all is kept, without a
  mask; uncompressed RLE is compressed; annotations of image ids missing from ``images`` are
  ignored with a warning; a negative or empty box is kept (the train mapper recomputes boxes
  from the masks; an empty instance is filtered there). What Detectron2 would stop on (a
  ``category_id`` not among the categories, an empty ``bbox``) with a traceback, or fail on
  later inside a data-loader worker (a bbox that is not 4 numbers, e.g. strings; an RLE mask of
  another size than its image; a segmentation that is neither polygons nor RLE), stops here,
  at load time, with one line naming the json, the image and the annotation.

Every mode then reads each image file's header (``detection/image_files.py``: a missing, empty or
unreadable file, or one whose size after its EXIF orientation is not the json's ``width`` /
``height``): one line naming the json and the image (``"skip"``: the image is dropped). What only
decoding finds (a truncated JPEG) is named by the dataset mapper (``detection/mapper.py``). A json
without annotations (no ``annotations`` key, or an empty list) loads, with a warning: it can be a
test split, not a training split (``no_training_data``).
- ``"error"``: every annotation is checked and the first problem stops the run in one line:

    <json>: image 'train_0003.jpg' (id 3): annotation 17: bbox [10, 10, -4, 8] has a negative ...

- ``"skip"``: the same checks, but bad annotations / images are dropped whole, with a warning
  (Detectron2 then reads a copy of the json without them, in a temporary folder).

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
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from mae_transfer.detection import compat
from mae_transfer.detection.image_files import image_file_problems

compat.setup()  # Detectron2 v0.6 cannot be imported without it (no compiled _C, Image.LINEAR)
from detectron2.data import DatasetCatalog, MetadataCatalog  # noqa: E402
from detectron2.data.datasets import load_coco_json  # noqa: E402

logger = logging.getLogger("mae_transfer.detection")

#: The two COCO 2017 splits Detectron2's configs name, and their folder / json names.
COCO2017_SPLITS = {"coco_2017_train": ("train2017", "instances_train2017.json"),
                   "coco_2017_val": ("val2017", "instances_val2017.json")}
_REQUIRED_IMAGE_KEYS = ("id", "file_name", "height", "width")
#: What to do with annotations that cannot be trained on (module docstring); first: default.
INVALID_MODES = ("detectron2", "error", "skip")
DEFAULT_ON_INVALID = INVALID_MODES[0]
#: The dataset name Detectron2's loader gets when the caller gives none (removed after the load).
_UNNAMED = "__mae_transfer_unnamed_coco__"


class DatasetError(ValueError):
    """A dataset that cannot be used; the message is one line naming the file and the image.

    Raised in a data-loader worker, torch re-raises it in the main process as
    ``DatasetError(<the worker's whole traceback>)``; the one line is its last line, kept here.
    """

    def __init__(self, message: str = ""):
        text = str(message).strip()
        if "\n" in text:
            text = text.splitlines()[-1].split(f"{type(self).__name__}: ", 1)[-1]
        super().__init__(text)


# ------------------------------------------------------------------------------------ checks
def is_number(v) -> bool:
    """A finite JSON number (not a bool): what a bbox, polygon, area or count must be."""
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _bbox_form_problem(bbox) -> Optional[str]:
    if not isinstance(bbox, (list, tuple)) or len(bbox) != 4 or not all(map(is_number, bbox)):
        return f"bbox {bbox!r} is not [x, y, width, height] with 4 finite numbers"
    return None


def _bbox_problem(bbox) -> Optional[str]:
    problem = _bbox_form_problem(bbox)
    if not problem and (bbox[2] < 0 or bbox[3] < 0):
        return f"bbox {list(bbox)} has a negative width or height"
    return problem


def _segmentation_form_problem(segm, height: int, width: int) -> Optional[str]:
    """What no mode can read: an RLE not of the image's size, a polygon that is not a list of
    numbers, a segmentation that is neither. (None, ``[]`` and short polygons are read.)"""
    if segm is None:
        return None
    if isinstance(segm, dict):  # RLE
        counts, size = segm.get("counts"), segm.get("size")
        if not isinstance(size, (list, tuple)) or list(size) != [height, width]:
            return (f"RLE mask has size {segm.get('size')!r}; the image is [{height}, {width}] "
                    f"(size is [height, width])")
        if not isinstance(counts, (str, bytes, list)) or not counts:
            return f"RLE mask has no 'counts' (a string or a list of run lengths): {counts!r}"
        return None
    if not isinstance(segm, list):
        return (f"segmentation of type {type(segm).__name__} is neither polygons (a list of "
                f"[x1, y1, x2, y2, ...] lists) nor RLE (a dict with 'counts' and 'size')")
    for k, poly in enumerate(segm):
        if not isinstance(poly, list) or not all(map(is_number, poly)):
            return f"polygon {k} is not a flat list of numbers"
    return None


def segmentation_problem(segm, height: int, width: int) -> Optional[str]:
    problem = _segmentation_form_problem(segm, height, width)
    if problem or isinstance(segm, dict):
        return problem
    if not segm:
        return ("has no mask (empty or missing 'segmentation'); Mask R-CNN needs one per "
                "non-crowd instance")
    for k, poly in enumerate(segm):
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
    return segmentation_problem(segm, image["height"], image["width"])


# ----------------------------------------------------------------------------------- loading
def read_json(json_file: Path, hint: str = "") -> dict:
    """The parsed instances json (COCO or LVIS format): a JSON object with ``images`` and
    ``categories`` lists, or one ``DatasetError`` line naming the file (``hint`` follows a
    missing file's path)."""
    if not json_file.is_file():
        raise DatasetError(f"no annotation file at {json_file}{hint}")
    try:
        with open(json_file) as f:
            data = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DatasetError(f"{json_file} is not valid JSON ({exc})") from exc
    if not isinstance(data, dict):
        raise DatasetError(f"{json_file} is not a COCO instances file (not a JSON object)")
    # no "annotations" key: an image-info file (a test split); training refuses it, in one line
    for key in ("images", "annotations", "categories"):
        absent = key not in data and key != "annotations"
        if absent or not isinstance(data.get(key, []), list):
            raise DatasetError(f"{json_file} is not a COCO instances file: no '{key}' list")
    for key in ("categories", "images"):
        if not data[key]:
            raise DatasetError(f"{json_file} has no {key}")
    return data


def detectron2_stop_reason(ann: dict, image: dict, category_ids) -> Optional[str]:
    """Why Detectron2 would stop on ``ann``, or None: its loader raises on an unknown category or
    an empty bbox; its data loader fails, later and with a traceback, on a missing bbox, one
    that is not 4 numbers (e.g. strings), an RLE mask of another size than the image, and a
    segmentation that is neither polygons nor RLE."""
    if ann.get("category_id") not in category_ids:
        return f"category_id {ann.get('category_id')!r} is not among the json's categories"
    if not ann.get("bbox"):
        return "has no bbox (missing or empty)"
    return (_bbox_form_problem(ann["bbox"])
            or _segmentation_form_problem(ann.get("segmentation"), image["height"],
                                          image["width"]))


def image_label(image: dict) -> str:
    """How errors name an image entry: its ``file_name``, else (LVIS v1, which has none) the
    ``<split folder>/<file name>`` end of its ``coco_url``."""
    if image.get("file_name"):
        return str(image["file_name"])
    return "/".join(str(image.get("coco_url", "?")).split("/")[-2:])


def _where(json_file: Path, image: dict, ann_id) -> str:
    return f"{json_file}: image '{image_label(image)}' (id {image['id']}): annotation {ann_id}"


@dataclass(frozen=True)
class JsonRules:
    """What the validation pass checks in one json format: COCO's (``COCO_RULES``) here; LVIS's
    (``mae_transfer.detection.lvis_datasets``) reuses these checks and adds its own."""

    required_image_keys: Tuple[str, ...] = _REQUIRED_IMAGE_KEYS
    #: ``(ann, image, category_ids) -> problem``: where Detectron2's loader stops ("detectron2")
    detectron2_stop: Callable = detectron2_stop_reason
    #: ``(ann, image, category_ids) -> problem``: what cannot be trained on ("error" / "skip")
    annotation_problem: Callable = annotation_problem
    #: ``(data) -> problem``: format problems outside the annotations; stop in every mode
    json_problem: Optional[Callable] = None


COCO_RULES = JsonRules()


@dataclass
class _Checked:
    """What the validation pass leaves for the load: the json Detectron2 should read, and what to
    report afterwards (the json itself is not kept: COCO train's is gigabytes in memory)."""

    source: Path
    categories: List[dict] = field(default_factory=list)  # the json's categories, as they are
    skipped: List[str] = field(default_factory=list)  # "skip" mode: what was dropped, and why
    #: "detectron2" mode: annotation id -> (its image entry, number of polygons in the json)
    polygons: Dict[int, tuple] = field(default_factory=dict)


def validate_json(json_file: Path, on_invalid: str, missing_hint: str, scratch: Path,
                  rules: JsonRules = COCO_RULES) -> _Checked:
    """The validation pass over the json, before Detectron2 reads it (module docstring).

    ``"detectron2"``: stop, in one line, where Detectron2 would stop; note every polygon list (to
    report what Detectron2 drops). ``"error"``: stop at the first problem. ``"skip"``: collect
    the problems and, if there are any, write the json without them to ``scratch`` (Detectron2
    reads only files) under the same file name. ``rules``: the checks of the json's format.
    """
    data = read_json(json_file, missing_hint)
    problem = rules.json_problem(data) if rules.json_problem else None
    if problem:
        raise DatasetError(f"{json_file}: {problem}")
    category_ids = {c["id"] for c in data["categories"]}
    images: Dict[int, dict] = {}
    for i, img in enumerate(data["images"]):
        missing = [k for k in rules.required_image_keys if k not in img]
        if missing:
            raise DatasetError(f"{json_file}: image entry {i} ({image_label(img)!r}) "
                               f"lacks {missing}")
        if not all(is_number(img[k]) and img[k] > 0 and float(img[k]).is_integer()
                   for k in ("height", "width")):
            raise DatasetError(f"{json_file}: image '{image_label(img)}' (id {img['id']}): "
                               f"height {img['height']!r} and width {img['width']!r} are not "
                               f"both positive whole numbers")
        images[img["id"]] = img
    checked = _Checked(source=json_file, categories=data["categories"])
    rejected = set()  # Python ids of the annotations "skip" mode drops
    for ann in data.get("annotations", []):
        img = images.get(ann.get("image_id"))
        if on_invalid == "detectron2":
            if img is None:
                continue  # Detectron2 ignores them, with a warning
            problem = rules.detectron2_stop(ann, img, category_ids)
            if problem:
                raise DatasetError(f"{_where(json_file, img, ann.get('id'))}: {problem}")
            if isinstance(ann.get("segmentation"), list) and ann["segmentation"]:
                checked.polygons[ann.get("id")] = (img, len(ann["segmentation"]))
            continue
        if img is None:
            problem = (f"{json_file}: annotation {ann.get('id')} refers to image id "
                       f"{ann.get('image_id')!r}, which is not in 'images'")
        else:
            problem = rules.annotation_problem(ann, img, category_ids)
            if problem:
                problem = f"{_where(json_file, img, ann.get('id'))}: {problem}"
        if problem and on_invalid == "error":
            raise DatasetError(problem)
        if problem:
            checked.skipped.append(problem)
            rejected.add(id(ann))
    if rejected:
        data["annotations"] = [a for a in data["annotations"] if id(a) not in rejected]
        checked.source = scratch / json_file.name  # same name: Detectron2 reads it ("minival")
        with open(checked.source, "w") as f:
            json.dump(data, f)
    return checked


def _detectron2_records(source: Path, json_file: Path, image_root: Path,
                        dataset_name: Optional[str]) -> Tuple[List[dict], Dict[int, dict]]:
    """Detectron2's ``load_coco_json`` records, and their annotations by json ``id``.

    Always under a dataset name, so that Detectron2 maps category ids to contiguous ones and
    sets the metadata (a private name, removed again, when the caller gives none). The ids are
    loaded as an extra annotation key and taken out again: the records stay Detectron2's. What
    it still stops on (e.g. duplicate annotation ids) becomes one line naming the json.
    """
    name = dataset_name or _UNNAMED
    try:
        records = load_coco_json(str(source), str(image_root), name, extra_annotation_keys=["id"])
    except (AssertionError, KeyError, TypeError, ValueError) as exc:
        reason = " ".join(str(exc).split())
        raise DatasetError(f"{json_file}: Detectron2's load_coco_json stops: "
                           f"{type(exc).__name__}: {reason}") from exc
    finally:
        if dataset_name is None:
            MetadataCatalog.remove(name)
    return records, {obj.pop("id"): obj for r in records for obj in r["annotations"]}


def _report_detectron2_repairs(json_file: Path, polygons: Dict[int, tuple],
                               kept: Dict[int, dict]) -> None:
    """Warn, naming instances, about the polygons Detectron2 dropped (read off its records)."""
    dropped, emptied = 0, []
    for ann_id, (image, count) in polygons.items():
        obj = kept.get(ann_id)
        dropped += count - len(obj["segmentation"]) if obj else count
        if obj is None:
            emptied.append(_where(json_file, image, ann_id))
    if dropped:
        logger.warning("%s: dropped %d polygons with an odd number of coordinates or fewer than "
                       "3 points; filtered out %d instances left without a valid polygon "
                       "(Detectron2's rule)%s", json_file, dropped, len(emptied),
                       ", e.g.: " + " | ".join(emptied[:3]) if emptied else "")


def image_file_errors(records: List[dict], image_root: Path,
                      json_file: Path) -> Dict[int, str]:
    """``image_id -> one-line problem`` for every record whose file is missing, no image, or not
    the json's size (``detection/image_files.py``), naming the json and the image."""
    by_id = {r["image_id"]: r for r in records}
    return {image_id: f"{json_file}: image "
                      f"'{os.path.relpath(by_id[image_id]['file_name'], image_root)}' "
                      f"(id {image_id}): {problem}"
            for image_id, problem in image_file_problems(records).items()}


def load_coco_instances(json_file, image_root, dataset_name: Optional[str] = None,
                        check_images: bool = True, on_invalid: str = DEFAULT_ON_INVALID,
                        missing_hint: str = "") -> List[dict]:
    """Detectron2 dataset dicts from a COCO instances json (see the module docstring).

    The records are always those of Detectron2's ``load_coco_json`` (contiguous category ids,
    also without ``dataset_name``); with ``dataset_name`` it sets that dataset's metadata
    (``thing_classes``, ``thing_dataset_id_to_contiguous_id``). A validation pass reads the json
    first (one extra parse): ``on_invalid="detectron2"`` (default) stops in one line where
    Detectron2 would stop and names the instances its polygon rule drops; ``"error"`` raises
    ``DatasetError`` at the first bad annotation or missing image; ``"skip"`` drops them and
    warns. ``missing_hint`` is appended to the error for a missing json (where the data should
    be).
    """
    if on_invalid not in INVALID_MODES:
        raise ValueError(f"on_invalid must be one of {INVALID_MODES}, got {on_invalid!r}")
    json_file, image_root = Path(json_file), Path(image_root)
    with tempfile.TemporaryDirectory(prefix="coco-checked-") as scratch:
        checked = validate_json(json_file, on_invalid, missing_hint, Path(scratch))
        records, kept = _detectron2_records(checked.source, json_file, image_root, dataset_name)
    if on_invalid == "detectron2":
        _report_detectron2_repairs(json_file, checked.polygons, kept)
    return finish_records(records, checked, json_file, image_root, check_images, on_invalid)


def finish_records(records: List[dict], checked: _Checked, json_file: Path, image_root: Path,
                   check_images: bool, on_invalid: str) -> List[dict]:
    """The last steps of every checked load (COCO here, LVIS in ``lvis_datasets``): the image
    files' headers (stop in one line, or drop them in "skip" mode), a warning for what was
    skipped and for a json without annotations, the counts in the log."""
    bad_files = image_file_errors(records, image_root, json_file) if check_images else {}
    if bad_files and on_invalid != "skip":
        raise DatasetError(next(iter(bad_files.values())))
    if bad_files:
        checked.skipped.extend(bad_files.values())
        records = [r for r in records if r["image_id"] not in bad_files]
    if checked.skipped:
        logger.warning("%s: skipped %d invalid annotations / images, e.g.: %s", json_file,
                       len(checked.skipped), " | ".join(checked.skipped[:3]))
    num_annotations = sum(len(r["annotations"]) for r in records)
    if not num_annotations:
        logger.warning("%s has no annotations: it can be a test split (predictions are written; "
                       "COCO AP needs annotations), not a training split", json_file)
    logger.info("loaded %d images, %d annotations from %s", len(records), num_annotations,
                json_file)
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


def no_training_data(dataset_names: Sequence[str] | str) -> DatasetError:
    """The error for training splits without one annotated (non-crowd) image: one line naming
    their json files (Detectron2's train loader drops images without annotations)."""
    names = [dataset_names] if isinstance(dataset_names, str) else list(dataset_names)
    files = ", ".join(str(MetadataCatalog.get(n).get("json_file", n)) for n in names)
    return DatasetError(f"{files}: no annotations to train on in {', '.join(names)} (the json's "
                        f"'annotations' is missing or empty, or holds only crowd regions); a "
                        f"training split needs annotated images")


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
