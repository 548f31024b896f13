"""Write small annotated sets in the real layouts: COCO instances json and ADE20K folders.

Both the generated shapes set (tests, smoke runs without ../shared/data) and the cut-out paste set
(tools/make_paste_dataset.py) describe each image as a list of ``Instance``s (class id + polygon
list, later instances drawn on top). This module turns that one description into:

- COCO: ``<root>/images/<split>/*.jpg`` + ``<root>/annotations/instances_<split>.json``
  (polygons, bbox xywh, area from the rasterised visible mask, iscrowd 0);
- ADE20K: ``<root>/ADEChallengeData2016/images/{training,validation}/*.jpg`` and
  ``.../annotations/{training,validation}/*.png`` (8-bit, 0 = other/background, class id 1..K).

Masks come from the same rasteriser for both, so the two label sets always agree.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

import numpy as np
from PIL import Image, ImageDraw

ADE_SPLITS = {"train": "training", "val": "validation"}
#: JPEG quality of every image written (labelled or not), so all splits share one encoding.
JPEG_QUALITY = 92
Polygon = List[Tuple[float, float]]


@dataclass
class Instance:
    """One object: class id (1..K) and its outline as one or more polygons (x, y pixels)."""

    category_id: int
    polygons: List[Polygon]


def rasterise(polygons: Sequence[Polygon], size: Tuple[int, int]) -> np.ndarray:
    """Binary mask (H, W) of the union of ``polygons`` for an image of ``size`` = (W, H)."""
    canvas = Image.new("L", size, 0)
    draw = ImageDraw.Draw(canvas)
    for poly in polygons:
        if len(poly) >= 3:
            draw.polygon([tuple(map(float, p)) for p in poly], fill=1)
    return np.asarray(canvas, dtype=bool)


def visible_masks(instances: Sequence[Instance], size: Tuple[int, int]) -> List[np.ndarray]:
    """Per-instance masks after occlusion: each later instance cuts the earlier ones."""
    masks = [rasterise(inst.polygons, size) for inst in instances]
    covered = np.zeros((size[1], size[0]), dtype=bool)
    for i in range(len(masks) - 1, -1, -1):
        masks[i] = masks[i] & ~covered
        covered |= masks[i]
    return masks


def label_map(instances: Sequence[Instance], size: Tuple[int, int]) -> np.ndarray:
    """ADE-style uint8 label map: 0 background, else the class id of the topmost instance."""
    labels = np.zeros((size[1], size[0]), dtype=np.uint8)
    for inst, mask in zip(instances, visible_masks(instances, size)):
        labels[mask] = inst.category_id
    return labels


class AnnotatedSetWriter:
    """Collect images + instances per split, then write COCO and/or ADE layouts in one go."""

    def __init__(self, categories: Sequence[str]):
        self.categories = list(categories)
        self.items: Dict[str, List[Tuple[str, Image.Image, List[Instance]]]] = {}

    def add(self, split: str, file_name: str, image: Image.Image,
            instances: Sequence[Instance]) -> None:
        self.items.setdefault(split, []).append((file_name, image.convert("RGB"), list(instances)))

    def write_coco(self, root: Path, min_area: int = 16) -> Dict[str, Path]:
        """Write the COCO layout; instances whose visible area is under ``min_area`` are left out."""
        root = Path(root)
        (root / "annotations").mkdir(parents=True, exist_ok=True)
        out = {}
        for split, items in self.items.items():
            img_dir = root / "images" / split
            img_dir.mkdir(parents=True, exist_ok=True)
            images, anns = [], []
            for image_id, (name, image, instances) in enumerate(items, start=1):
                image.save(img_dir / name, quality=JPEG_QUALITY)
                w, h = image.size
                images.append({"id": image_id, "file_name": name, "width": w, "height": h})
                for inst, mask in zip(instances, visible_masks(instances, (w, h))):
                    area = int(mask.sum())
                    if area < min_area:
                        continue
                    ys, xs = np.nonzero(mask)
                    x0, y0, x1, y1 = xs.min(), ys.min(), xs.max() + 1, ys.max() + 1
                    anns.append({
                        "id": len(anns) + 1, "image_id": image_id,
                        "category_id": inst.category_id,
                        "segmentation": [[round(float(c), 2) for p in poly for c in p]
                                         for poly in inst.polygons if len(poly) >= 3],
                        "bbox": [float(x0), float(y0), float(x1 - x0), float(y1 - y0)],
                        "area": float(area), "iscrowd": 0})
            cats = [{"id": i + 1, "name": n, "supercategory": "object"}
                    for i, n in enumerate(self.categories)]
            path = root / "annotations" / f"instances_{split}.json"
            path.write_text(json.dumps({"images": images, "annotations": anns,
                                        "categories": cats}))
            out[split] = path
        return out

    def write_ade(self, root: Path) -> Path:
        """Write the ADE20K layout under ``root/ADEChallengeData2016``; returns that folder."""
        base = Path(root) / "ADEChallengeData2016"
        for split, items in self.items.items():
            sub = ADE_SPLITS.get(split, split)
            (base / "images" / sub).mkdir(parents=True, exist_ok=True)
            (base / "annotations" / sub).mkdir(parents=True, exist_ok=True)
            for name, image, instances in items:
                stem = Path(name).stem
                image.save(base / "images" / sub / f"{stem}.jpg", quality=JPEG_QUALITY)
                Image.fromarray(label_map(instances, image.size)).save(
                    base / "annotations" / sub / f"{stem}.png")
        (base / "classes.txt").write_text("\n".join(self.categories) + "\n")
        return base
