"""COCO ground truth and imperfect detections, generated deterministically (no image files).

Why: checking that two COCO evaluators give the same numbers, and timing them, needs detections
whose AP is neither 0 nor 100 and that reach every branch of COCO's matching: missed objects,
wrong classes, duplicates, false positives, tied scores, crowd regions, small / medium / large
objects, box-only and mask-only disagreements. ``perturbed_detections`` makes such detections
from any COCO ground truth (the real ``coco-mini`` json, or ``synthetic_ground_truth``), in
COCO's results format (``bbox`` XYWH, ``segmentation`` compressed RLE with ``str`` counts, as
Detectron2's ``instances_to_coco_json`` writes them).
"""
from __future__ import annotations

import contextlib
import copy
import io
from typing import Dict, List, Sequence

import numpy as np
from pycocotools import mask as mask_util


def _polygon(rng: np.random.Generator, x: float, y: float, w: float, h: float,
             points: int) -> List[float]:
    """A star-shaped polygon inside the box (x, y, w, h): ``[x0, y0, x1, y1, ...]``."""
    angles = np.sort(rng.uniform(0, 2 * np.pi, points))
    radii = rng.uniform(0.55, 1.0, points)
    xs = x + w / 2 + np.cos(angles) * radii * w / 2
    ys = y + h / 2 + np.sin(angles) * radii * h / 2
    return np.stack([xs, ys], 1).round(2).ravel().tolist()


def _rle(segmentation, height: int, width: int) -> dict:
    """One compressed RLE for a polygon list, an uncompressed or a compressed RLE."""
    if isinstance(segmentation, list):
        return mask_util.merge(mask_util.frPyObjects(segmentation, height, width))
    if isinstance(segmentation["counts"], list):
        return mask_util.frPyObjects(segmentation, height, width)
    return segmentation


def synthetic_ground_truth(num_images: int, num_categories: int = 80, seed: int = 0,
                           size: Sequence[int] = (480, 640), max_objects: int = 12,
                           crowd_fraction: float = 0.02) -> Dict:
    """A COCO instances dict: ``num_images`` images of ``size`` (h, w), up to ``max_objects``
    polygon objects each (sizes from a few pixels to most of the image, so every COCO area
    range is populated), crowd regions as uncompressed RLE (as in COCO), category ids with gaps
    (as COCO's 1..90)."""
    rng = np.random.default_rng(seed)
    height, width = size
    cat_ids = [1 + i + i // 9 for i in range(num_categories)]
    categories = [{"id": c, "name": f"class_{c}", "supercategory": "thing"} for c in cat_ids]
    images, annotations = [], []
    for image_id in range(1, num_images + 1):
        images.append({"id": image_id, "width": width, "height": height,
                       "file_name": f"{image_id:012d}.jpg"})
        for _ in range(int(rng.integers(1, max_objects + 1))):
            side = float(np.exp(rng.uniform(np.log(6), np.log(0.8 * min(size)))))
            w, h = side * rng.uniform(0.6, 1.4, 2)
            w, h = min(w, width - 2), min(h, height - 2)
            x, y = rng.uniform(0, width - w), rng.uniform(0, height - h)
            polygon = _polygon(rng, x, y, w, h, int(rng.integers(5, 13)))
            crowd = bool(rng.random() < crowd_fraction)
            rle = _rle([polygon], height, width)
            if crowd:  # COCO stores crowd regions as uncompressed RLE
                segmentation = {"size": [height, width],
                                "counts": _uncompressed_counts(mask_util.decode(rle))}
            else:
                segmentation = [polygon]
            annotations.append({
                "id": len(annotations) + 1, "image_id": image_id,
                "category_id": int(rng.choice(cat_ids)), "segmentation": segmentation,
                "area": float(mask_util.area(rle)),
                "bbox": [round(float(v), 2) for v in mask_util.toBbox(rle)],
                "iscrowd": int(crowd)})
    return {"images": images, "annotations": annotations, "categories": categories}


def _uncompressed_counts(mask: np.ndarray) -> List[int]:
    """COCO's uncompressed RLE counts (column-major runs, starting with zeros)."""
    flat = mask.ravel(order="F").astype(np.int8)
    changes = np.flatnonzero(np.diff(flat)) + 1
    runs = np.diff(np.concatenate([[0], changes, [flat.size]]))
    return ([0] if flat[0] else []) + runs.tolist()


def _jittered_polygon(rng, polygon: Sequence[float], w: float, h: float) -> List[float]:
    """The polygon shifted, rescaled about its centre, and each vertex moved a little."""
    xy = np.asarray(polygon, dtype=float).reshape(-1, 2)
    centre = xy.mean(0)
    scale = rng.uniform(0.85, 1.15, 2)
    shift = rng.uniform(-0.1, 0.1, 2) * [w, h]
    noise = rng.normal(0, 0.03, xy.shape) * [w, h]
    return ((xy - centre) * scale + centre + shift + noise).round(2).ravel().tolist()


def _morphed_mask(rng, rle: dict) -> dict:
    """The mask shifted by up to 3 pixels, then eroded or dilated by 1-3 pixels (3x3 steps);
    computed on the object's neighbourhood only (fast on large images)."""
    height, width = rle["size"]
    x, y, w, h = mask_util.toBbox(rle)
    margin = 8  # > shift + growth: nothing leaves the crop
    y0, x0 = max(int(y) - margin, 0), max(int(x) - margin, 0)
    y1, x1 = min(int(y + h) + margin, height), min(int(x + w) + margin, width)
    crop = mask_util.decode(rle)[y0:y1, x0:x1].astype(bool)
    crop = np.roll(crop, tuple(rng.integers(-3, 4, 2)), (0, 1))
    grow = rng.random() < 0.5
    for _ in range(int(rng.integers(1, 4))):
        padded = np.pad(crop, 1, constant_values=False)
        shifted = [padded[1 + dy:padded.shape[0] - 1 + dy, 1 + dx:padded.shape[1] - 1 + dx]
                   for dy in (-1, 0, 1) for dx in (-1, 0, 1)]
        crop = np.logical_or.reduce(shifted) if grow else np.logical_and.reduce(shifted)
    out = np.zeros((height, width), dtype=np.uint8, order="F")
    out[y0:y1, x0:x1] = crop
    return mask_util.encode(out)


def _encoded(rle: dict) -> dict:
    return {"size": list(rle["size"]), "counts": rle["counts"].decode("ascii")
            if isinstance(rle["counts"], bytes) else rle["counts"]}


def perturbed_detections(dataset: Dict, seed: int = 0, miss: float = 0.15,
                         wrong_class: float = 0.1, duplicate: float = 0.1,
                         false_positives: int = 3, dense_fraction: float = 0.3,
                         score_decimals: int = 2) -> List[Dict]:
    """Detections (COCO results format, boxes and masks) of ``dataset``'s non-crowd objects:

    - each object missed with probability ``miss``; otherwise one detection with its box
      jittered (by up to 15% of its size) and its mask made independently of the box: the
      polygon jittered, or (a ``dense_fraction`` of them, and every RLE object) the mask shifted
      and eroded / dilated pixel by pixel;
    - its class replaced by a random one with probability ``wrong_class``; a second, looser
      detection of the same object with probability ``duplicate``;
    - ``false_positives`` random boxes (with box masks) of random classes per image;
    - random scores rounded to ``score_decimals`` decimals, so that many tie (the tie order
      of the evaluators is then part of what a comparison checks).
    """
    rng = np.random.default_rng(seed)
    images = {img["id"]: img for img in dataset["images"]}
    cat_ids = sorted(c["id"] for c in dataset["categories"])
    detections = []

    def add(image, category_id, box, rle):
        score = round(float(rng.uniform(0.01, 1.0)), score_decimals)
        detections.append({"image_id": image["id"], "category_id": int(category_id),
                           "bbox": [round(float(v), 2) for v in box],
                           "segmentation": _encoded(rle), "score": score})

    for ann in dataset["annotations"]:
        if ann.get("iscrowd", 0) or rng.random() < miss:
            continue
        image = images[ann["image_id"]]
        height, width = image["height"], image["width"]
        x, y, w, h = ann["bbox"]
        for extra in range(1 + int(rng.random() < duplicate)):
            spread = 0.15 * (1 + extra)
            dx, dy, dw, dh = rng.uniform(-spread, spread, 4) * [w, h, w, h]
            box = [x + dx, y + dy, max(1.0, w + dw), max(1.0, h + dh)]
            segmentation = ann["segmentation"]
            if isinstance(segmentation, list) and rng.random() >= dense_fraction:
                polygons = [_jittered_polygon(rng, p, w, h) for p in segmentation if len(p) >= 6]
                rle = _rle(polygons, height, width)
            else:
                rle = _morphed_mask(rng, _rle(segmentation, height, width))
            category = ann["category_id"] if rng.random() >= wrong_class else rng.choice(cat_ids)
            add(image, category, box, rle)

    for image in dataset["images"]:
        height, width = image["height"], image["width"]
        for _ in range(false_positives):
            w, h = rng.uniform(0.05, 0.5) * width, rng.uniform(0.05, 0.5) * height
            x, y = rng.uniform(0, width - w), rng.uniform(0, height - h)
            box = [x, y, w, h]
            rle = mask_util.frPyObjects([[x, y, x + w, y, x + w, y + h, x, y + h]], height, width)
            add(image, rng.choice(cat_ids), box, mask_util.merge(rle))
    return detections


def coco_api(dataset: Dict):
    """A pycocotools ``COCO`` index of a copy of ``dataset`` (evaluations rewrite annotations in
    place), built without pycocotools' prints."""
    from pycocotools.coco import COCO

    coco = COCO()
    coco.dataset = copy.deepcopy(dataset)
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco
