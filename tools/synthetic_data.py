"""Generated data for tests and smoke runs where the real images in ../shared/data are absent.

- ``write_synthetic_images``: smooth colour patterns (learnable structure, not noise) for MAE.
- ``make_shapes_dataset``: a small instance-segmentation set (discs, squares, triangles on smooth
  backgrounds, non-overlapping) written in both the COCO and the ADE20K layouts through
  ``tools.annotated_sets``.

    python tools/synthetic_data.py OUT [--train 16 --val 4 --size 128]
"""
from __future__ import annotations

import argparse
import math
import os
import sys
from pathlib import Path
from typing import Tuple

import numpy as np
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from mae_transfer.tools.annotated_sets import AnnotatedSetWriter, Instance, rasterise  # noqa: E402

SHAPE_CLASSES = ("disc", "square", "triangle")
SHAPE_COLOURS = {"disc": (220, 40, 40), "square": (40, 200, 60), "triangle": (40, 80, 230)}


def smooth_background(rng: np.random.Generator, size: Tuple[int, int]) -> np.ndarray:
    """(H, W, 3) float image in [-1, 1] made of a few low-frequency sinusoids."""
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
    freq = rng.uniform(1, 6, size=(3, 2))
    phase = rng.uniform(0, 2 * np.pi, size=3)
    return np.stack([np.sin(freq[c, 0] * 6 * xx + freq[c, 1] * 6 * yy + phase[c])
                     for c in range(3)], -1)


def write_synthetic_images(folder: Path, count: int = 16, size=(96, 128), seed: int = 0) -> Path:
    """Write ``count`` JPEGs of ``size`` = (H, W) into ``folder``; returns the folder."""
    rng = np.random.default_rng(seed)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        img = smooth_background(rng, (size[1], size[0]))
        Image.fromarray(((img + 1) * 127.5).astype(np.uint8)).save(folder / f"img_{i:03d}.jpg")
    return folder


def _shape_polygon(kind: str, cx: float, cy: float, r: float):
    if kind == "disc":
        return [(cx + r * math.cos(a), cy + r * math.sin(a))
                for a in np.linspace(0, 2 * math.pi, 24, endpoint=False)]
    if kind == "square":
        return [(cx - r, cy - r), (cx + r, cy - r), (cx + r, cy + r), (cx - r, cy + r)]
    return [(cx, cy - r), (cx + r, cy + r), (cx - r, cy + r)]


def make_shapes_dataset(root: Path, num_train: int = 16, num_val: int = 4, size: int = 128,
                        seed: int = 0, layouts=("coco", "ade")) -> dict:
    """Write the shapes set under ``root/coco`` and/or ``root/ade``; returns their paths.

    Each image holds 1-3 shapes placed in distinct cells of a 2x2 grid (no overlap), so every
    instance is fully visible; colours are class-specific with jitter, so the task is learnable.
    """
    rng = np.random.default_rng(seed)
    writer = AnnotatedSetWriter(SHAPE_CLASSES)
    cell = size / 2
    for split, count in (("train", num_train), ("val", num_val)):
        for i in range(count):
            img = (smooth_background(rng, (size, size)) * 40 + 128)
            instances = []
            for c in rng.permutation(4)[: rng.integers(1, 4)]:
                kind = SHAPE_CLASSES[rng.integers(len(SHAPE_CLASSES))]
                r = rng.uniform(0.25, 0.4) * cell
                cx = (c % 2 + 0.5) * cell + rng.uniform(-0.08, 0.08) * cell
                cy = (c // 2 + 0.5) * cell + rng.uniform(-0.08, 0.08) * cell
                instances.append(Instance(SHAPE_CLASSES.index(kind) + 1,
                                          [_shape_polygon(kind, cx, cy, r)]))
            canvas = Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))
            arr = np.asarray(canvas).copy()
            for inst in instances:
                colour = np.array(SHAPE_COLOURS[SHAPE_CLASSES[inst.category_id - 1]])
                colour = np.clip(colour + rng.integers(-25, 26, size=3), 0, 255)
                arr[rasterise(inst.polygons, (size, size))] = colour
            writer.add(split, f"{split}_{i:04d}.jpg", Image.fromarray(arr), instances)
    out = {}
    if "coco" in layouts:
        out["coco"] = Path(root) / "coco"
        writer.write_coco(out["coco"])
    if "ade" in layouts:
        out["ade"] = writer.write_ade(Path(root) / "ade")
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="Write the generated shapes set (COCO + ADE layouts)")
    ap.add_argument("out", type=Path)
    ap.add_argument("--train", type=int, default=16)
    ap.add_argument("--val", type=int, default=4)
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    paths = make_shapes_dataset(args.out, args.train, args.val, args.size, args.seed)
    for k, v in paths.items():
        print(f"{k}: {v}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
