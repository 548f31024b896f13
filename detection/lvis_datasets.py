"""LVIS v1 instance datasets for Detectron2: loaded by Detectron2, checked as COCO's are.

LVIS jsons are COCO-like with three differences that matter here: an image has no ``file_name``
but a ``coco_url`` (``http://images.cocodataset.org/<split folder>/<file name>``, found at
``<image root>/<split folder>/<file name>``: LVIS v1 val holds COCO train2017 images too); every
image lists ``neg_category_ids`` (verified absent) and ``not_exhaustive_category_ids``; every
category has a ``frequency`` (``r``are / ``c``ommon / ``f``requent, by the number of training
images) and an ``image_count``. Masks are polygons only.

- The records are Detectron2's ``load_lvis_json`` (``not_exhaustive_category_ids`` and
  ``neg_category_ids`` kept, in json ids), with contiguous category ids (json ids in sorted order;
  LVIS v1's 1..1203 stay ``id - 1``).
- The validation pass, the modes (``--invalid-annotations``), the image-file checks and the
  one-line errors are COCO's (``mae_transfer.detection.datasets``) with LVIS's rules on top, in
  every mode ("skip" drops what fails them): the box inside the image (1 pixel of tolerance),
  every polygon valid and at least one per instance (Detectron2's LVIS loader asserts it), no
  RLE, an ``area`` (LVIS evaluation reads it); images need ``coco_url`` and the two
  category-id lists, categories ``frequency`` in r/c/f.
- Metadata, read from the json's categories (``LVISJsonMetadata``: on first use, so that a model
  built before any data is loaded, e.g. ``--eval-only``, still finds them): ``thing_classes``,
  ``thing_dataset_id_to_contiguous_id``, ``class_image_count`` (``[{"id", "image_count"}]`` as
  Detectron2's ``get_fed_loss_cls_weights`` reads it), ``class_frequency`` (``r``/``c``/``f`` per
  contiguous class), ``evaluator_type="lvis"``.

Registration: ``register_lvis_v1(root)`` names ``lvis_v1_{train,val}`` from
``root/lvis/lvis_v1_{train,val}.json`` with images under ``root/coco`` (root:
``$DETECTRON2_DATASETS``, else ``./datasets``), as Detectron2's ``builtin.py`` does; nothing is read
until a split is used. ``register_lvis_spec("NAME=JSON:IMAGES")`` registers an LVIS json (recognised
by its keys, ``is_lvis_json``) with IMAGES the folder that holds the split folders (``NAME=JSON``:
``coco/`` beside the json's folder, Detectron2's layout).
"""
from __future__ import annotations

import logging
import os
import tempfile
from collections import defaultdict
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Tuple

from mae_transfer.detection import compat

compat.setup()  # Detectron2 v0.6 cannot be imported without it (no compiled _C, Image.LINEAR)
from detectron2.data import DatasetCatalog, MetadataCatalog  # noqa: E402
from detectron2.data.catalog import Metadata  # noqa: E402
from detectron2.data.datasets.lvis import load_lvis_json  # noqa: E402

from mae_transfer.detection.datasets import (DEFAULT_ON_INVALID, INVALID_MODES,  # noqa: E402
                                             DatasetError, JsonRules, annotation_problem,
                                             default_datasets_root, detectron2_stop_reason,
                                             finish_records, is_number, read_json,
                                             segmentation_problem, validate_json)

logger = logging.getLogger("mae_transfer.detection")

#: Detectron2's LVIS v1 names (``builtin.py``) and their json files under ``<root>/lvis``.
LVIS_V1_SPLITS = {"lvis_v1_train": "lvis_v1_train.json", "lvis_v1_val": "lvis_v1_val.json"}
#: LVIS's frequency groups, in the order of APr, APc, APf.
FREQUENCIES = ("r", "c", "f")
#: Keys only an LVIS json has (``is_lvis_json``).
LVIS_MARKERS = (b'"not_exhaustive_category_ids"', b'"neg_category_ids"', b'"frequency"')
_IMAGE_LISTS = ("neg_category_ids", "not_exhaustive_category_ids")
#: How far (pixels) a box may leave its image before the annotation counts as broken.
BOX_TOLERANCE = 1.0
_UNNAMED = "__mae_transfer_unnamed_lvis__"


# ------------------------------------------------------------------------------------ checks
def lvis_format_problem(data: dict) -> Optional[str]:
    """LVIS format problems outside the annotations: category ``frequency``, image id lists."""
    for cat in data["categories"]:
        if cat.get("frequency") not in FREQUENCIES:
            return (f"category {cat.get('id')!r} ({cat.get('name', '?')!r}) has frequency "
                    f"{cat.get('frequency')!r}; LVIS needs 'r', 'c' or 'f' (LVIS evaluation "
                    f"groups APr / APc / APf by it)")
    for img in data["images"]:
        for key in _IMAGE_LISTS:
            ids = img.get(key)
            if not isinstance(ids, list) or not all(isinstance(i, int) for i in ids):
                return (f"image {img.get('coco_url', img.get('id'))!r} (id {img.get('id')!r}): "
                        f"'{key}' is {ids!r}, not a list of category ids (LVIS evaluation "
                        f"reads it)")
    return None


def _bbox_outside_problem(bbox, image: dict) -> Optional[str]:
    """A box that leaves the image by more than ``BOX_TOLERANCE`` pixels (LVIS boxes enclose
    polygons inside the image): a json whose image sizes or boxes are wrong."""
    x, y, w, h = bbox
    width, height = image["width"], image["height"]
    if (min(x, y) < -BOX_TOLERANCE or x + w > width + BOX_TOLERANCE
            or y + h > height + BOX_TOLERANCE):
        return (f"bbox {list(bbox)} (x, y, width, height) lies outside the {width} x {height} "
                f"image")
    return None


def _lvis_problem(ann: dict, image: dict) -> Optional[str]:
    """What LVIS needs beyond COCO's form checks (run first): the box inside the image, polygon
    masks, all valid (Detectron2's ``load_lvis_json`` asserts it), and an ``area`` (LVIS
    evaluation reads it)."""
    problem = _bbox_outside_problem(ann["bbox"], image)
    if problem:
        return problem
    segm = ann.get("segmentation")
    if isinstance(segm, dict):
        return ("segmentation is an RLE mask; LVIS masks are polygons (Detectron2's "
                "load_lvis_json reads only polygons)")
    problem = segmentation_problem(segm, image["height"], image["width"])
    if problem:
        return problem
    if not is_number(ann.get("area")) or ann["area"] < 0:
        return f"area {ann.get('area')!r} is not a number >= 0 (LVIS evaluation reads it)"
    return None


def lvis_detectron2_stop(ann: dict, image: dict, category_ids) -> Optional[str]:
    """Where Detectron2 stops on an LVIS annotation ("detectron2" mode): COCO's stops, and
    every polygon problem (its LVIS loader asserts instead of dropping)."""
    return detectron2_stop_reason(ann, image, category_ids) or _lvis_problem(ann, image)


def lvis_annotation_problem(ann: dict, image: dict, category_ids) -> Optional[str]:
    """Why an LVIS annotation cannot be trained on ("error" / "skip"): COCO's checks + LVIS's."""
    return annotation_problem(ann, image, category_ids) or _lvis_problem(ann, image)


LVIS_RULES = JsonRules(required_image_keys=("id", "coco_url", "height", "width"),
                       detectron2_stop=lvis_detectron2_stop,
                       annotation_problem=lvis_annotation_problem,
                       json_problem=lvis_format_problem)


# ---------------------------------------------------------------------------------- metadata
def category_metadata(categories: List[dict],
                      annotations: Iterable[Tuple[int, int]] = ()) -> Dict[str, object]:
    """Metadata from an LVIS json's categories (sorted by id = contiguous order).

    ``class_image_count`` is the categories' ``image_count``; where a category has none, the
    number of images with it among ``annotations`` (``(image_id, category_id)`` pairs).
    """
    cats = sorted(categories, key=lambda c: c["id"])
    counted = None
    if any(not is_number(c.get("image_count")) for c in cats):
        images = defaultdict(set)
        for image_id, category_id in annotations:
            images[category_id].add(image_id)
        counted = {cid: len(ids) for cid, ids in images.items()}
    return {
        "thing_classes": [str(c.get("name", c.get("synonyms", [c["id"]])[0])) for c in cats],
        "thing_dataset_id_to_contiguous_id": {c["id"]: i for i, c in enumerate(cats)},
        "class_image_count": [
            {"id": c["id"], "image_count": int(c["image_count"]) if counted is None
             else counted.get(c["id"], 0)} for c in cats],
        "class_frequency": [c["frequency"] for c in cats],
    }


def _fill(meta: Metadata, values: Dict[str, object]) -> None:
    """Set ``values`` on ``meta``: absent keys directly (no lazy read), present ones through
    ``Metadata``'s own rule (an existing value cannot change)."""
    for key, value in values.items():
        if key in meta.__dict__:
            setattr(meta, key, value)
        else:
            meta.__dict__[key] = value


class LVISJsonMetadata(Metadata):
    """Metadata whose category keys (``category_metadata``) come from its ``json_file``, read on
    first use if no load has set them yet (e.g. the federated loss's class weights when a model
    is built for ``--eval-only``, before any data is loaded). A missing or broken json is one
    ``DatasetError`` line, only then."""

    _CATEGORY_KEYS = ("thing_classes", "thing_dataset_id_to_contiguous_id", "class_image_count",
                      "class_frequency")

    def __getattr__(self, key):
        if key in LVISJsonMetadata._CATEGORY_KEYS and "json_file" in self.__dict__:
            json_file = Path(self.__dict__["json_file"])
            logger.info("reading the categories of %s (metadata of %s)", json_file, self.name)
            data = read_json(json_file, self.__dict__.get("missing_hint", ""))
            problem = lvis_format_problem(data)
            if problem:
                raise DatasetError(f"{json_file}: {problem}")
            _fill(self, category_metadata(
                data["categories"],
                ((a.get("image_id"), a.get("category_id")) for a in data.get("annotations", []))))
            return self.__dict__[key]
        return super().__getattr__(key)


# ----------------------------------------------------------------------------------- loading
def _lvis_records(source: Path, json_file: Path, image_root: Path,
                  id_map: Dict[int, int]) -> List[dict]:
    """Detectron2's ``load_lvis_json`` records, category ids made contiguous by ``id_map``.

    Loaded without a dataset name (with one, Detectron2 sets its built-in 1203-class metadata);
    it then gives ``json id - 1``, mapped here. What it still stops on (e.g. duplicate
    annotation ids) becomes one line naming the json.
    """
    try:
        # Detectron2 joins ``image_root + split folder``: the root needs its trailing separator
        records = load_lvis_json(str(source), str(image_root) + os.sep, None)
    except (AssertionError, KeyError, TypeError, ValueError) as exc:
        reason = " ".join(str(exc).split())
        raise DatasetError(f"{json_file}: Detectron2's load_lvis_json stops: "
                           f"{type(exc).__name__}: {reason}") from exc
    for record in records:
        for obj in record["annotations"]:
            obj["category_id"] = id_map[obj["category_id"] + 1]
    return records


def load_lvis_instances(json_file, image_root, dataset_name: Optional[str] = None,
                        check_images: bool = True, on_invalid: str = DEFAULT_ON_INVALID,
                        missing_hint: str = "") -> List[dict]:
    """Detectron2 dataset dicts from an LVIS json (see the module docstring); ``image_root`` holds
    the split folders its ``coco_url``s name. With ``dataset_name``, sets that dataset's
    category metadata. Modes and errors as ``datasets.load_coco_instances``."""
    if on_invalid not in INVALID_MODES:
        raise ValueError(f"on_invalid must be one of {INVALID_MODES}, got {on_invalid!r}")
    json_file, image_root = Path(json_file), Path(image_root)
    with tempfile.TemporaryDirectory(prefix="lvis-checked-") as scratch:
        checked = validate_json(json_file, on_invalid, missing_hint, Path(scratch), LVIS_RULES)
        json_ids = sorted(c["id"] for c in checked.categories)
        records = _lvis_records(checked.source, json_file, image_root,
                                {cid: i for i, cid in enumerate(json_ids)})
    if dataset_name is not None:
        pairs = ((r["image_id"], json_ids[o["category_id"]])
                 for r in records for o in r["annotations"])
        _fill(MetadataCatalog.get(dataset_name), category_metadata(checked.categories, pairs))
    return finish_records(records, checked, json_file, image_root, check_images, on_invalid)


# ------------------------------------------------------------------------------ registration
def register_lvis_instances(name: str, json_file, image_root,
                            on_invalid: str = DEFAULT_ON_INVALID, missing_hint: str = "") -> str:
    """Register ``name`` (replacing an earlier registration, Detectron2's built-in one too) as a
    checked LVIS json + the folder of its split folders; reads nothing yet."""
    json_file, image_root = Path(json_file).resolve(), Path(image_root).resolve()
    if name in DatasetCatalog.list():
        DatasetCatalog.remove(name)
    if name in MetadataCatalog.list():
        MetadataCatalog.remove(name)
    DatasetCatalog.register(name, lambda: load_lvis_instances(
        json_file, image_root, name, on_invalid=on_invalid, missing_hint=missing_hint))
    MetadataCatalog[name] = LVISJsonMetadata(name=name)
    MetadataCatalog.get(name).set(json_file=str(json_file), image_root=str(image_root),
                                  evaluator_type="lvis", missing_hint=missing_hint)
    return name


def register_lvis_v1(root=None, on_invalid: str = DEFAULT_ON_INVALID) -> List[str]:
    """(Re-)register ``lvis_v1_train`` / ``lvis_v1_val``: ``root/lvis/lvis_v1_<split>.json``,
    images under ``root/coco`` (root: ``$DETECTRON2_DATASETS``, else ``./datasets``)."""
    root = Path(root if root is not None else default_datasets_root())
    hint = (" (LVIS v1 is read from $DETECTRON2_DATASETS/lvis, images from "
            "$DETECTRON2_DATASETS/coco, else ./datasets/...; --coco-root DIR reads DIR/lvis; "
            "tools/make_lvis_dataset.py makes a small LVIS-format set from COCO data)")
    return [register_lvis_instances(name, root / "lvis" / js, root / "coco", on_invalid, hint)
            for name, js in LVIS_V1_SPLITS.items()]


def is_lvis_json(path, chunk_size: int = 1 << 24) -> bool:
    """Whether the json at ``path`` is in LVIS format: it holds one of ``LVIS_MARKERS`` (image
    keys and the category ``frequency`` no COCO json has). A byte scan, no parse: LVIS train's
    json is over a gigabyte. A missing file is not (the COCO loader reports it)."""
    path = Path(path)
    if not path.is_file():
        return False
    overlap = max(len(m) for m in LVIS_MARKERS)
    tail = b""
    with open(path, "rb") as f:
        while True:
            chunk = f.read(chunk_size)
            if not chunk:
                return False
            window = tail + chunk
            if any(marker in window for marker in LVIS_MARKERS):
                return True
            tail = window[-overlap:]


def register_lvis_spec(spec: str, on_invalid: str = DEFAULT_ON_INVALID) -> Optional[List[str]]:
    """Register ``NAME=JSON:IMAGES`` when JSON is an LVIS json (IMAGES: the folder holding the
    split folders of its ``coco_url``s), or ``NAME=JSON`` in Detectron2's layout (images in
    ``coco/`` beside the json's ``lvis/`` folder); None for any other spec (COCO's
    ``register_from_spec`` takes it)."""
    name, sep, value = spec.partition("=")
    cut = value.find(".json:")
    if not sep or not name or (cut < 0 and not value.endswith(".json")):
        return None
    if cut >= 0:
        json_file, image_root = value[:cut + len(".json")], value[cut + len(".json:"):]
    else:
        json_file = value
        image_root = str(Path(value).resolve().parent.parent / "coco")
    if not is_lvis_json(json_file):
        return None
    if not Path(image_root).is_dir():
        raise DatasetError(f"dataset {name}: image folder {image_root} does not exist (for an "
                           f"LVIS json: the folder that holds the split folders of its coco_urls, "
                           f"e.g. datasets/coco; NAME=JSON:IMAGES names it)")
    return [register_lvis_instances(name, json_file, image_root, on_invalid)]
