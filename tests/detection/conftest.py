"""Fixtures for the detection tests: the real COCO sample, when the shared data is present."""
from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def coco_mini(repo_root) -> Path:
    """``coco/`` of ``../shared/data/coco-mini`` (287 real COCO 2017 photos, original jsons)."""
    coco = repo_root.parent / "shared" / "data" / "coco-mini" / "coco"
    if not (coco / "annotations" / "instances_val2017.json").is_file():
        pytest.skip(f"needs the real COCO sample in {coco} (not present on this machine)")
    return coco
