"""Image files of a detection dataset, checked before training reads them.

Detectron2 reads an image only when its data loader first maps it, inside a worker: a zero-byte
file, a file that is no image or one whose size is not the json's ``height`` / ``width`` stops
the run there with a traceback, minutes (or, at COCO scale, hours) in. Here every file's header
is read before the first iteration (Pillow's ``Image.open`` parses the header without decoding
the pixels; in threads, since this is disk-bound), and the size compared the way Detectron2's
``read_image`` + ``check_image_size`` will: after the EXIF orientation, so a json that gives a
rotated photo's displayed size is right and one that gives the stored size is not.

What only a full decode finds (a truncated JPEG) is reported at load time by the dataset mapper
(``detection/mapper.py``).
"""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from typing import Dict, List, Optional, Tuple

from PIL import Image

#: EXIF tag of the orientation; values 5-8 swap width and height (a quarter turn).
EXIF_ORIENTATION = 0x0112
_QUARTER_TURNS = (5, 6, 7, 8)
#: Below this many images the headers are read in the calling thread.
_THREADED_FROM = 64
_MAX_THREADS = 16


def displayed_size(path: str) -> Tuple[int, int]:
    """``(width, height)`` of the image at ``path`` after its EXIF orientation, from the header.

    Raises ``OSError`` (Pillow's ``UnidentifiedImageError`` included) or ``SyntaxError`` (some
    Pillow plugins) if the file is not an image Pillow can open.
    """
    with Image.open(path) as img:
        width, height = img.size
        # Only EXIF that came with the header: Image.getexif() on a PNG would decode the pixels.
        if "exif" in img.info and img.getexif().get(EXIF_ORIENTATION) in _QUARTER_TURNS:
            width, height = height, width
    return width, height


def image_file_problem(path: str, width: int, height: int) -> Optional[str]:
    """Why the file at ``path`` cannot be the json's ``width`` x ``height`` image, or None."""
    if not os.path.isfile(path):
        return f"file not found at {path}"
    if os.path.getsize(path) == 0:
        return f"{path} is empty (0 bytes)"
    try:
        actual = displayed_size(path)
    except (OSError, SyntaxError) as exc:
        return f"{path} is not an image Pillow can read ({type(exc).__name__}: {exc})"
    if actual != (width, height):
        return (f"the json says width {width}, height {height} but {path} is "
                f"{actual[0]} x {actual[1]} (after its EXIF orientation); fix the image's "
                f"'width' / 'height' in the json")
    return None


def image_file_problems(records: List[dict]) -> Dict[int, str]:
    """``image_id -> problem`` (``image_file_problem``) for Detectron2 records (``file_name``,
    ``width``, ``height``, ``image_id``), in record order; headers read in threads when many."""
    def check(record: dict) -> Optional[str]:
        return image_file_problem(record["file_name"], record["width"], record["height"])

    if len(records) < _THREADED_FROM:
        problems = map(check, records)
    else:
        with ThreadPoolExecutor(min(_MAX_THREADS, (os.cpu_count() or 1) * 4)) as pool:
            problems = list(pool.map(check, records))
    return {r["image_id"]: p for r, p in zip(records, problems) if p}
