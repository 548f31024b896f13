"""A small real few-class ImageFolder set: square instance crops of COCO photos.

    python tools/make_cls_dataset.py --out DIR [--coco DIR | --generated] [--classes 5]
        [--per_class 60 --min_size 32 --size 64 --context 0.1 --val_fraction 0.3 --seed 0]

Why: the k-NN monitor and the linear probe (docs/classification.md) need a labelled
classification set, and the only labelled real photos here are the 287 COCO images of
``../shared/data/coco-mini``. Every non-crowd instance whose box has a shorter side of at least
``--min_size`` pixels becomes one picture: the square of side ``max(w, h) x (1 + 2 x context)``
centred on the box (the part outside the photo filled with the ImageNet mean colour), resized
to ``--size`` pixels. The ``--classes`` most frequent categories of these crops form the
classes (at most ``--per_class`` crops each, picked by a seeded shuffle, so one very frequent
class, ``person``, does not swamp the others).

The split is by photo: the crops of one photo are all in train or all in val, so a val crop
never has a near-copy of itself (the same scene, an overlapping box) among the train crops;
photos in a seeded order fill val up to ``--val_fraction`` of each class's crops
(``split_by_photo``). The same arguments give the same files.

Writes ``DIR/train/<class>/*.jpg``, ``DIR/val/<class>/*.jpg`` (official MAE's ImageFolder
layout; class folders named after the COCO category, spaces as ``_``) and ``DIR/dataset.json``
(source, settings, classes with their COCO ids, counts per split, and for each crop its photo,
annotation id and box). Built into ``DIR.partial`` and renamed when complete; an existing
``DIR`` is replaced only if it is an earlier build (holds ``dataset.json``).

Source: ``--coco DIR`` is a folder with ``annotations/instances_<split>.json`` and the images
in ``DIR/<split>/`` (Detectron2's ``coco/`` layout, as coco-mini) or ``DIR/images/<split>/``
(``tools/synthetic_data.py``'s layout); every split found is pooled before the split by photo.
Default: ``$MAE_TRANSFER_DATA/coco-mini/coco`` (``../shared/data``), else, saying so, the
generated shapes set of ``tools/synthetic_data.py`` (discs, squares, triangles), which
``--generated`` also forces.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
import tempfile
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from mae_transfer.tools.annotated_sets import JPEG_QUALITY  # noqa: E402
from mae_transfer.tools.image_inputs import data_root  # noqa: E402

log = logging.getLogger("mae_transfer.cls_dataset")

#: Fill of the crop's part outside the photo: the ImageNet mean colour (0 after normalising).
FILL = (124, 116, 104)
DESCRIPTION = "dataset.json"


class ClsDatasetError(ValueError):
    """Bad input (no annotations, too few classes, an occupied --out): one line says what."""


@dataclass(frozen=True)
class Crop:
    """One instance to cut out: its photo, COCO annotation id, category and box (x, y, w, h).
    Photos are known by their path: image and annotation ids repeat across the splits of a
    generated set."""

    image: str  # path of the photo, relative to the source folder
    ann_id: int
    category: str
    category_id: int
    bbox: Tuple[float, float, float, float]


@dataclass
class Settings:
    num_classes: int = 5
    per_class: int = 60
    min_size: float = 32.0
    size: int = 64
    context: float = 0.1
    val_fraction: float = 0.3
    seed: int = 0


def default_coco() -> Path:
    """coco-mini's ``coco/`` folder under the data root (it may not exist)."""
    return data_root() / "coco-mini" / "coco"


def _image_folder(coco: Path, split: str) -> Path:
    for folder in (coco / split, coco / "images" / split):
        if folder.is_dir():
            return folder
    raise ClsDatasetError(f"{coco}: annotations/instances_{split}.json has no image folder "
                          f"({coco / split} or {coco / 'images' / split})")


def read_instances(coco: Path, min_size: float) -> List[Crop]:
    """Every non-crowd instance of every ``annotations/instances_*.json`` whose box has a shorter
    side of at least ``min_size`` pixels."""
    files = sorted((coco / "annotations").glob("instances_*.json"))
    if not files:
        raise ClsDatasetError(f"{coco}: no annotations/instances_*.json (a COCO folder is "
                              f"expected, e.g. ../shared/data/coco-mini/coco)")
    crops: List[Crop] = []
    for path in files:
        split = path.stem[len("instances_"):]
        try:
            data = json.loads(path.read_text())
            names = {c["id"]: c["name"] for c in data["categories"]}
            images = {im["id"]: im["file_name"] for im in data["images"]}
            anns = data["annotations"]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ClsDatasetError(f"{path}: not a COCO instances json ({exc})") from None
        folder = _image_folder(coco, split).relative_to(coco)
        for ann in anns:
            x, y, w, h = ann["bbox"]
            if ann.get("iscrowd", 0) or min(w, h) < min_size or ann["image_id"] not in images:
                continue
            crops.append(Crop((folder / images[ann["image_id"]]).as_posix(), ann["id"],
                              names[ann["category_id"]], ann["category_id"],
                              (float(x), float(y), float(w), float(h))))
    return crops


def choose(crops: Sequence[Crop], settings: Settings) -> Tuple[List[str], List[Crop]]:
    """The most frequent categories (ties: by name) and at most ``per_class`` crops of each,
    chosen by a seeded shuffle; returns ``(class names, crops)``."""
    counts = Counter(c.category for c in crops)
    classes = sorted(counts, key=lambda n: (-counts[n], n))[:settings.num_classes]
    if len(classes) < 2:
        raise ClsDatasetError(f"{len(classes)} categories have instances with a side of "
                              f">= {settings.min_size:g} px, 2 at least are needed; lower "
                              f"--min_size")
    if len(classes) < settings.num_classes:
        log.warning("only %d categories have instances with a side of >= %g px: %d classes, "
                    "not %d", len(classes), settings.min_size, len(classes), settings.num_classes)
    rng = np.random.default_rng(settings.seed)
    chosen: List[Crop] = []
    for name in classes:
        group = sorted((c for c in crops if c.category == name), key=lambda c: (c.image, c.ann_id))
        order = rng.permutation(len(group))[:settings.per_class]
        chosen += [group[i] for i in sorted(order)]
    return classes, chosen


def split_by_photo(crops: Sequence[Crop], val_fraction: float, seed: int) -> Dict[str, List[Crop]]:
    """``{"train": [...], "val": [...]}`` with the crops of one photo on one side.

    Photos are taken in a seeded order; a photo goes to val while that keeps every class it
    shows within ``val_fraction`` of the class's crops (rounded, at least one), else to train.
    So each class gets close to its share of val crops, whatever the number of instances per
    photo (a plain split of the photos put 30 of 48 bowls in val: they come in groups).
    """
    photos = sorted({c.image for c in crops})
    by_photo = {p: Counter(c.category for c in crops if c.image == p) for p in photos}
    totals = Counter(c.category for c in crops)
    target = {n: max(1, round(val_fraction * t)) for n, t in totals.items()}
    taken: Counter = Counter()
    val = set()
    for i in np.random.default_rng([seed, 1]).permutation(len(photos)):
        shown = by_photo[photos[i]]
        if all(taken[n] + m <= target[n] for n, m in shown.items()):
            val.add(photos[i])
            taken.update(shown)
    return {"train": [c for c in crops if c.image not in val],
            "val": [c for c in crops if c.image in val]}


def square_crop(photo: Image.Image, bbox: Sequence[float], context: float, size: int
                ) -> Image.Image:
    """The square around ``bbox`` (side ``max(w, h) x (1 + 2 context)``, same centre), outside
    parts filled with ``FILL``, resized to ``size`` x ``size`` (bicubic)."""
    x, y, w, h = bbox
    side = max(w, h) * (1 + 2 * context)
    cx, cy = x + w / 2, y + h / 2
    left, top = int(round(cx - side / 2)), int(round(cy - side / 2))
    side = max(1, int(round(side)))
    canvas = Image.new("RGB", (side, side), FILL)
    box = (max(left, 0), max(top, 0), min(left + side, photo.width), min(top + side, photo.height))
    canvas.paste(photo.crop(box), (box[0] - left, box[1] - top))
    return canvas.resize((size, size), Image.BICUBIC)


def folder_name(category: str) -> str:
    return category.replace(" ", "_").replace("/", "_")


def build(out: Path, coco: Path, settings: Settings, source_note: str = "") -> dict:
    """Write the set into ``out`` (through ``out.partial``); returns the dataset.json content."""
    out = Path(out)
    if out.exists() and not (out.is_dir() and (not any(out.iterdir())
                                               or (out / DESCRIPTION).is_file())):
        raise ClsDatasetError(f"--out {out}: exists and is not an earlier build of this script "
                              f"(no {DESCRIPTION}); give a new or empty folder")
    if not 0 < settings.val_fraction < 1:
        raise ClsDatasetError(f"--val_fraction must lie in (0, 1), got {settings.val_fraction}")
    crops = read_instances(coco, settings.min_size)
    classes, chosen = choose(crops, settings)
    splits = split_by_photo(chosen, settings.val_fraction, settings.seed)
    tmp = out.with_name(out.name + ".partial")
    if tmp.exists():
        shutil.rmtree(tmp)
    photos: Dict[str, Image.Image] = {}
    records: Dict[str, List[dict]] = {}
    for split, items in splits.items():
        for name in classes:
            (tmp / split / folder_name(name)).mkdir(parents=True, exist_ok=True)
        records[split] = []
        for c in sorted(items, key=lambda c: (c.image, c.ann_id)):
            if c.image not in photos:
                photos.clear()  # crops come photo by photo: keep only the current one
                try:
                    photos[c.image] = Image.open(coco / c.image).convert("RGB")
                except OSError as exc:
                    raise ClsDatasetError(f"{coco / c.image}: cannot read the photo ({exc})"
                                          ) from None
            file = f"{split}/{folder_name(c.category)}/{Path(c.image).stem}_{c.ann_id}.jpg"
            square_crop(photos[c.image], c.bbox, settings.context, settings.size).save(
                tmp / file, quality=JPEG_QUALITY)
            records[split].append({"file": file, "photo": c.image, "annotation_id": c.ann_id,
                                   "category_id": c.category_id, "bbox": list(c.bbox)})
    counts = {split: Counter(c.category for c in items) for split, items in splits.items()}
    ids = {c.category: c.category_id for c in chosen}
    description = {
        "source": str(coco), "source_note": source_note, "settings": asdict(settings),
        "classes": [{"index": i, "name": n, "folder": folder_name(n), "coco_id": ids[n],
                     "train": counts["train"][n], "val": counts["val"][n]}
                    for i, n in enumerate(sorted(classes, key=folder_name))],
        "splits": {s: {"crops": len(items), "photos": len({c.image for c in items})}
                   for s, items in splits.items()},
        "crops": records,
    }
    (tmp / DESCRIPTION).write_text(json.dumps(description, indent=1) + "\n")
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)
    log.info("wrote %s: %s", out, "; ".join(
        f"{s} {len(items)} crops of {description['splits'][s]['photos']} photos" for s, items in
        splits.items()))
    return description


def generated_coco(folder: Path, seed: int = 0) -> Path:
    """The generated shapes set (COCO layout) in ``folder``; returns its ``coco`` folder."""
    from mae_transfer.tools.synthetic_data import make_shapes_dataset

    return make_shapes_dataset(folder, num_train=40, num_val=12, size=160, seed=seed,
                               layouts=("coco",))["coco"]


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    a = ap.add_argument
    a("--out", type=Path, required=True, help="output folder (train/, val/, dataset.json)")
    src = ap.add_mutually_exclusive_group()
    src.add_argument("--coco", type=Path, default=None,
                     help="COCO folder (annotations/instances_*.json); default: coco-mini")
    src.add_argument("--generated", action="store_true",
                     help="crop the generated shapes set instead of real photos")
    a("--classes", dest="num_classes", type=int, default=Settings.num_classes)
    a("--per_class", type=int, default=Settings.per_class, help="crops per class, at most")
    a("--min_size", type=float, default=Settings.min_size,
      help="shorter side of an instance's box, in photo pixels")
    a("--size", type=int, default=Settings.size, help="side of the written crops")
    a("--context", type=float, default=Settings.context,
      help="margin around the box on each side, as a fraction of its longer side")
    a("--val_fraction", type=float, default=Settings.val_fraction,
      help="share of each class's crops that go to val, at most (whole photos move)")
    a("--seed", type=int, default=Settings.seed)
    return ap


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    settings = Settings(args.num_classes, args.per_class, args.min_size, args.size, args.context,
                        args.val_fraction, args.seed)
    try:
        for name in ("num_classes", "per_class", "size"):
            if getattr(settings, name) < 1:
                raise ClsDatasetError(f"--{name} must be >= 1, got {getattr(settings, name)}")
        coco = args.coco
        if coco is None and not args.generated and not default_coco().is_dir():
            log.info("no %s: cropping the generated shapes set instead of real photos",
                     default_coco())
        if args.generated or (coco is None and not default_coco().is_dir()):
            with tempfile.TemporaryDirectory() as tmp:
                build(args.out, generated_coco(Path(tmp), args.seed), settings,
                      "generated shapes set (tools/synthetic_data.py)")
        else:
            coco = coco or default_coco()
            if not coco.is_dir():
                raise ClsDatasetError(f"--coco {coco}: no such folder")
            build(args.out, coco, settings)
    except ClsDatasetError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
