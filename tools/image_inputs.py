"""Image paths from command-line arguments, shared by the demo and dataset tools."""
from __future__ import annotations

from pathlib import Path
from typing import Iterable, List

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"})


def is_image(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_SUFFIXES


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
