"""Fixtures shared by every test folder: the repo root, real images when present, generated ones."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"
IMAGENET_SAMPLE = SHARED_DATA / "imagenet-sample"

# Two cores: keep torch from oversubscribing when several tests spawn workers.
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO_ROOT


@pytest.fixture(scope="session")
def real_images() -> Path:
    """Folder of the 1,000 real ImageNet samples; skips the test where the shared data is absent."""
    if not IMAGENET_SAMPLE.is_dir():
        pytest.skip(f"needs the real images in {IMAGENET_SAMPLE} (not present on this machine)")
    return IMAGENET_SAMPLE


def write_synthetic_images(folder: Path, count: int = 16, size=(96, 128), seed: int = 0) -> Path:
    """Smooth random colour images (learnable structure, not noise) as JPEGs in ``folder``."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    h, w = size
    yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
    for i in range(count):
        f = rng.uniform(1, 6, size=(3, 2))
        ph = rng.uniform(0, 2 * np.pi, size=3)
        img = np.stack([np.sin(f[c, 0] * 6 * xx + f[c, 1] * 6 * yy + ph[c]) for c in range(3)], -1)
        Image.fromarray(((img + 1) * 127.5).astype(np.uint8)).save(folder / f"img_{i:03d}.jpg")
    return folder


@pytest.fixture
def image_folder(tmp_path) -> Path:
    """A folder of images: a copy of 16 real ones if the shared data is present, else generated."""
    dst = tmp_path / "images"
    if IMAGENET_SAMPLE.is_dir():
        dst.mkdir()
        for src in sorted(IMAGENET_SAMPLE.iterdir())[:16]:
            (dst / src.name).write_bytes(src.read_bytes())
        return dst
    return write_synthetic_images(dst)
