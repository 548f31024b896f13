"""Turn COCO-format instance data into an LVIS v1-format dataset in Detectron2's layout.

For trying the LVIS configs on small data (tests, smoke runs, a custom COCO-format set):

    python tools/make_lvis_dataset.py OUT --coco-root ../shared/data/coco-mini [--val-from-train 16]
    python tools/make_lvis_dataset.py OUT --train a.json:IMAGES --val b.json:IMAGES
    python tools/make_lvis_dataset.py OUT --synthetic        # the generated shapes set
    export DETECTRON2_DATASETS=OUT                           # lvis_v1_{train,val} read from it

writes ``OUT/lvis/lvis_v1_{train,val}.json`` and ``OUT/coco/{train2017,val2017}/`` (links to the
images; ``--copy`` copies them), the layout Detectron2's ``lvis_v1_*`` datasets read. What
changes from COCO to LVIS:

- images: no ``file_name``; ``coco_url`` = ``http://images.cocodataset.org/<split folder>/<file>``
  (train images moved to val by ``--val-from-train`` keep ``train2017``, as LVIS v1 val holds
  COCO train images); ``not_exhaustive_category_ids``: the categories of the image's crowd regions
  (COCO marks a group it did not outline one by one); ``neg_category_ids``: every other category
  the image does not show (COCO annotates its categories exhaustively, so absence is verified);
- annotations: crowd regions and instances without a valid polygon are left out (LVIS masks are
  polygons); ids, boxes and areas kept;
- categories (the same list in both files, COCO's ids kept): ``synonyms``, ``image_count`` and
  ``instance_count`` counted on the train split, and ``frequency``: ``r`` below ``--rare-below``
  train images (LVIS: 10), ``c`` below ``--common-below`` (LVIS: 100), else ``f``.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from mae_transfer.tools.atomic import atomic_write  # noqa: E402

#: LVIS's frequency thresholds (training images per category): rare < 10 <= common < 100.
LVIS_RARE_BELOW, LVIS_COMMON_BELOW = 10, 100
COCO_URL = "http://images.cocodataset.org/{folder}/{file}"
#: Output split -> the folder its images go to (named by their ``coco_url``).
SPLIT_FOLDERS = {"train": "train2017", "val": "val2017"}
#: Added to the generated set's val image and annotation ids (both splits count from 1).
SYNTHETIC_VAL_IDS = 100_000


class ConversionError(ValueError):
    """Input that cannot be converted; the message is one line naming the file."""


@dataclass
class Source:
    """One COCO-format split: its json and the folder its ``file_name``s are relative to."""

    json_file: Path
    image_root: Path


def frequency(image_count: int, rare_below: int, common_below: int) -> str:
    """LVIS's frequency group of a category seen in ``image_count`` training images."""
    if image_count < rare_below:
        return "r"
    return "c" if image_count < common_below else "f"


def _valid_polygons(segm) -> List[list]:
    if not isinstance(segm, list):
        return []
    return [p for p in segm if isinstance(p, list) and len(p) >= 6 and len(p) % 2 == 0]


def _read(source: Source) -> dict:
    try:
        data = json.loads(Path(source.json_file).read_text())
    except (OSError, ValueError) as exc:
        raise ConversionError(f"{source.json_file}: cannot read it as JSON ({exc})") from None
    for key in ("images", "categories"):
        if not isinstance(data.get(key), list):
            raise ConversionError(f"{source.json_file}: not a COCO instances file (no '{key}')")
    return data


def _polygon_area(polygons: List[list], image: dict) -> float:
    """Mask area (pixels) of the union of ``polygons``, as COCO computes it."""
    import pycocotools.mask as mask_utils

    rles = mask_utils.frPyObjects(polygons, image["height"], image["width"])
    return float(mask_utils.area(mask_utils.merge(rles)))


def _convert_images(data: dict, source: Source, folder: str, limit: Optional[int]) -> List[dict]:
    """The split's images (first ``limit`` by id) as LVIS entries, with their instances (key
    ``_instances``), crowd categories (``_crowd``) and source file (``_source``) attached."""
    images = sorted(data["images"], key=lambda i: i["id"])[:limit]
    by_id = {img["id"]: {"id": img["id"], "width": img["width"], "height": img["height"],
                         "coco_url": COCO_URL.format(folder=folder,
                                                     file=Path(img["file_name"]).name),
                         "_source": Path(source.image_root) / img["file_name"],
                         "_instances": [], "_crowd": set()}
             for img in images}
    for key in ("license", "flickr_url", "date_captured"):
        for img in images:
            if key in img:
                by_id[img["id"]][key] = img[key]
    for ann in data.get("annotations", []):
        entry = by_id.get(ann.get("image_id"))
        if entry is None:
            continue
        polygons = _valid_polygons(ann.get("segmentation"))
        if ann.get("iscrowd", 0) or not polygons:
            entry["_crowd"].add(ann["category_id"])  # not outlined one by one: not exhaustive
            continue
        try:
            area = ann["area"] if "area" in ann else _polygon_area(polygons, entry)
            entry["_instances"].append({
                "id": ann["id"], "image_id": ann["image_id"], "category_id": ann["category_id"],
                "bbox": [float(v) for v in ann["bbox"]], "area": float(area),
                "segmentation": polygons})
        except (KeyError, TypeError, ValueError) as exc:
            raise ConversionError(f"{source.json_file}: annotation {ann.get('id')!r} of image "
                                  f"{ann.get('image_id')!r} cannot be read ({type(exc).__name__}: "
                                  f"{exc})") from None
    return list(by_id.values())


def _finish(images: List[dict], category_ids: Sequence[int]) -> dict:
    """``images`` (with attached instances) -> the LVIS ``images`` and ``annotations`` lists."""
    out_images, annotations = [], []
    for entry in images:
        present = {a["category_id"] for a in entry["_instances"]}
        not_exhaustive = set(entry["_crowd"]) - present
        out_images.append({k: v for k, v in entry.items() if not k.startswith("_")} | {
            "not_exhaustive_category_ids": sorted(not_exhaustive),
            "neg_category_ids": sorted(set(category_ids) - present - not_exhaustive)})
        annotations.extend(entry["_instances"])
    return {"images": out_images, "annotations": annotations}


def _check_unique(split: str, images: List[dict]) -> None:
    """Image and annotation ids must be unique within a split (LVIS's index, Detectron2's
    loader assert it); held-out train images meet the val json's ids here."""
    for what, ids in (("image", [i["id"] for i in images]),
                      ("annotation", [a["id"] for i in images for a in i["_instances"]])):
        seen = set()
        for i in ids:
            if i in seen:
                raise ConversionError(f"{what} id {i} occurs twice in the {split} split: ids "
                                      f"must be unique over the train and val jsons (as "
                                      f"COCO's are) to move train images into val")
            seen.add(i)


def _categories(coco_categories: List[dict], train_images: List[dict], rare_below: int,
                common_below: int) -> List[dict]:
    image_count, instance_count = defaultdict(int), defaultdict(int)
    for entry in train_images:
        for cid in {a["category_id"] for a in entry["_instances"]}:
            image_count[cid] += 1
        for ann in entry["_instances"]:
            instance_count[ann["category_id"]] += 1
    return [{"id": c["id"], "name": c["name"], "synonyms": [c["name"]],
             "image_count": image_count[c["id"]], "instance_count": instance_count[c["id"]],
             "frequency": frequency(image_count[c["id"]], rare_below, common_below)}
            for c in sorted(coco_categories, key=lambda c: c["id"])]


def _place_image(src: Path, dst: Path, copy: bool) -> None:
    if not src.is_file():
        raise ConversionError(f"image {src} not found")
    if dst.exists() or dst.is_symlink():
        if dst.exists() and os.path.samefile(src, dst):
            return
        raise ConversionError(f"{dst} exists and is another file than {src}")
    dst.parent.mkdir(parents=True, exist_ok=True)
    if copy:
        shutil.copyfile(src, dst)
    else:
        os.symlink(src.resolve(), dst)


def make_lvis_dataset(out, train: Source, val: Source, val_from_train: int = 0,
                      rare_below: int = LVIS_RARE_BELOW, common_below: int = LVIS_COMMON_BELOW,
                      max_train: Optional[int] = None, max_val: Optional[int] = None,
                      copy: bool = False) -> Dict[str, Path]:
    """Write the LVIS layout under ``out`` (module docstring); returns ``{split: json path}``.

    ``max_train`` / ``max_val``: convert only the first images (by id) of each source split;
    ``val_from_train``: the last of those train images go to the LVIS val split instead.
    """
    out = Path(out)
    train_data, val_data = _read(train), _read(val)
    train_images = _convert_images(train_data, train, SPLIT_FOLDERS["train"], max_train)
    val_images = _convert_images(val_data, val, SPLIT_FOLDERS["val"], max_val)
    if val_from_train:
        if val_from_train >= len(train_images):
            raise ConversionError(f"--val-from-train {val_from_train} leaves no train image (of "
                                  f"{len(train_images)})")
        val_images = train_images[-val_from_train:] + val_images
        train_images = train_images[:-val_from_train]
    for split, images in (("train", train_images), ("val", val_images)):
        _check_unique(split, images)
    categories = _categories(train_data["categories"], train_images, rare_below, common_below)
    category_ids = [c["id"] for c in categories]
    paths = {}
    for split, images in (("train", train_images), ("val", val_images)):
        for entry in images:
            folder, name = entry["coco_url"].split("/")[-2:]
            _place_image(entry["_source"], out / "coco" / folder / name, copy)
        payload = {"info": {"description": f"LVIS v1 format, converted from {train.json_file} "
                                           f"and {val.json_file} by tools/make_lvis_dataset.py"},
                   **_finish(images, category_ids), "categories": categories}
        paths[split] = out / "lvis" / f"lvis_v1_{split}.json"
        atomic_write(paths[split], lambda tmp: tmp.write_text(json.dumps(payload)))
    return paths


def make_synthetic_lvis_dataset(out, num_train: int = 16, num_val: int = 4, size: int = 128,
                                **kwargs) -> Dict[str, Path]:
    """The generated shapes set (``tools.synthetic_data``) in the LVIS layout under ``out``."""
    from mae_transfer.tools.synthetic_data import make_shapes_dataset

    with tempfile.TemporaryDirectory(prefix="shapes-") as scratch:
        coco = make_shapes_dataset(Path(scratch), num_train, num_val, size,
                                   layouts=("coco",))["coco"]
        # its splits both count ids from 1: val's move past train's, as COCO's are unique
        val_json = coco / "annotations" / "instances_val.json"
        val = json.loads(val_json.read_text())
        for item in val["images"] + val["annotations"]:
            item["id"] += SYNTHETIC_VAL_IDS
        for ann in val["annotations"]:
            ann["image_id"] += SYNTHETIC_VAL_IDS
        val_json.write_text(json.dumps(val))
        return make_lvis_dataset(
            out, Source(coco / "annotations" / "instances_train.json", coco / "images" / "train"),
            Source(coco / "annotations" / "instances_val.json", coco / "images" / "val"),
            copy=True, **kwargs)


def _source(spec: str) -> Source:
    json_file, sep, images = spec.partition(".json:")
    if not sep:
        raise argparse.ArgumentTypeError(f"{spec!r} is not JSON:IMAGES")
    return Source(Path(json_file + ".json"), Path(images))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog=__doc__.split("\n\n", 1)[1])
    ap.add_argument("out", type=Path, help="folder to write lvis/ and coco/ into")
    given = ap.add_mutually_exclusive_group(required=True)
    given.add_argument("--coco-root", type=Path, metavar="DIR",
                       help="folder holding coco/annotations/instances_{train,val}2017.json and "
                            "coco/{train,val}2017/")
    given.add_argument("--train", type=_source, metavar="JSON:IMAGES")
    given.add_argument("--synthetic", action="store_true", help="the generated shapes set")
    ap.add_argument("--val", type=_source, metavar="JSON:IMAGES", help="with --train")
    ap.add_argument("--val-from-train", type=int, default=0, metavar="N",
                    help="move the last N train images into the val split")
    ap.add_argument("--max-train", type=int, default=None, metavar="N")
    ap.add_argument("--max-val", type=int, default=None, metavar="N")
    ap.add_argument("--rare-below", type=int, default=LVIS_RARE_BELOW, metavar="N")
    ap.add_argument("--common-below", type=int, default=LVIS_COMMON_BELOW, metavar="N")
    ap.add_argument("--copy", action="store_true", help="copy the images (default: symlinks)")
    args = ap.parse_args(argv)
    options = dict(val_from_train=args.val_from_train, rare_below=args.rare_below,
                   common_below=args.common_below, max_train=args.max_train,
                   max_val=args.max_val)
    try:
        if args.synthetic:
            paths = make_synthetic_lvis_dataset(args.out, **options)
        else:
            if args.coco_root:
                coco = args.coco_root / "coco"
                train, val = (Source(coco / "annotations" / f"instances_{f}.json", coco / f)
                              for f in SPLIT_FOLDERS.values())
            elif args.val is None:
                ap.error("--train needs --val")
            else:
                train, val = args.train, args.val
            paths = make_lvis_dataset(args.out, train, val, copy=args.copy, **options)
    except ConversionError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for split, path in paths.items():
        data = json.loads(path.read_text())
        groups = {g: sum(c["frequency"] == g for c in data["categories"]) for g in "rcf"}
        print(f"{split}: {path} ({len(data['images'])} images, {len(data['annotations'])} "
              f"instances; categories r/c/f {groups['r']}/{groups['c']}/{groups['f']})")
    print(f"export DETECTRON2_DATASETS={args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
