"""Setup and fixtures for the detection tests: the framework fixes, the real COCO sample."""
from __future__ import annotations

from pathlib import Path

import pytest

from mae_transfer import detection

# The framework fixes (detection/compat.py) before any test module imports detectron2.
detection.setup()


@pytest.fixture(scope="session")
def coco_mini(repo_root) -> Path:
    """``coco/`` of ``../shared/data/coco-mini`` (287 real COCO 2017 photos, original jsons)."""
    coco = repo_root.parent / "shared" / "data" / "coco-mini" / "coco"
    if not (coco / "annotations" / "instances_val2017.json").is_file():
        pytest.skip(f"needs the real COCO sample in {coco} (not present on this machine)")
    return coco
