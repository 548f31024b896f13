"""Which files are images, where the project's photos live, and image paths from command lines.

The one list of image file suffixes for the whole project: the pretraining loader, the e2e
experiment's photo copy, the paste set's backgrounds, the demos and the benchmarks all ask
``is_image`` (or use ``IMAGE_SUFFIXES``), so that a photo one part accepts is never skipped by
another. The suffixes are torchvision's ``ImageFolder`` ones, which official MAE trains through.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable, List

#: Image files, by lower-cased suffix (a tuple, so that ``name.lower().endswith(...)`` takes it).
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".pgm", ".tif", ".tiff", ".webp")
#: The JPEG subset: what ``--decode_on_device`` decodes on the GPU and the loader benchmark reads.
JPEG_SUFFIXES = (".jpg", ".jpeg")
#: Environment variable naming the data root (the folder holding ``imagenet-sample/`` and
#: ``coco-mini/``); without it, ``../shared/data`` beside the checkout.
DATA_ENV = "MAE_TRANSFER_DATA"


def is_image(path: Path) -> bool:
    return Path(path).suffix.lower() in IMAGE_SUFFIXES


def is_jpeg(path: Path) -> bool:
    return Path(path).suffix.lower() in JPEG_SUFFIXES


def data_root() -> Path:
    """``$MAE_TRANSFER_DATA`` when set, else ``<checkout>/../shared/data``. It may not exist: a
    plain clone has no shared folder beside it, and each user says what it does then."""
    checkout = Path(__file__).resolve().parents[1]
    return Path(os.environ.get(DATA_ENV) or checkout.parent / "shared" / "data")


def list_images(inputs: Iterable[str]) -> List[Path]:
    """Files as given, folders expanded to their images (sorted, not recursive).

    A missing path, or nothing found at all, is a ``FileNotFoundError`` naming it, so a demo
    fails before it loads a model.
    """
    inputs = list(inputs)
    images: List[Path] = []
    for item in map(Path, inputs):
        if item.is_dir():
            images += sorted(p for p in item.iterdir() if is_image(p))
        elif item.is_file():
            images.append(item)
        else:
            raise FileNotFoundError(f"no image or folder at {item}")
    if not images:
        raise FileNotFoundError(f"no images found in {inputs}")
    return images
