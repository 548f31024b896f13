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


@pytest.fixture(autouse=True)
def fresh_detectron2_loggers():
    """Puts the loggers back as they were after every test: an in-process ``tools/train_det.py``
    run (Detectron2's ``setup_logger``) adds handlers bound to the ``sys.stdout`` of that moment
    (a handler left bound to a closed ``capsys`` stream makes every later log line a "Logging
    error" traceback) and stops ``mae_transfer`` records from propagating (so later tests'
    ``caplog`` would see nothing)."""
    import logging

    from detectron2.utils.logger import setup_logger

    names = ("detectron2", "fvcore", "mae_transfer")
    before = {n: list(logging.getLogger(n).handlers) for n in names}
    state = {n: (logging.getLogger(n).propagate, logging.getLogger(n).level) for n in names}
    yield
    for name in names:
        log = logging.getLogger(name)
        log.propagate, level = state[name]
        log.setLevel(level)
        for handler in [h for h in log.handlers if h not in before[name]]:
            log.removeHandler(handler)
            handler.close()
    setup_logger.cache_clear()


@pytest.fixture(scope="session")
def lvis_mini(tmp_path_factory, repo_root) -> dict:
    """A small LVIS v1-format root (``tools/make_lvis_dataset.py``: ``lvis/lvis_v1_{train,val}.json``
    + ``coco/{train2017,val2017}``): from the real COCO sample when present (24 train images; val:
    4 COCO val2017 images and 4 held-out train2017 ones; frequency r below 2 train images, c below
    4, else f), else from the generated shapes set. ``root``, ``num_classes``, ``real``."""
    from mae_transfer.tools.make_lvis_dataset import (Source, make_lvis_dataset,
                                                      make_synthetic_lvis_dataset)

    root = tmp_path_factory.mktemp("lvis_mini")
    coco = repo_root.parent / "shared" / "data" / "coco-mini" / "coco"
    if (coco / "annotations" / "instances_val2017.json").is_file():
        make_lvis_dataset(root, *(Source(coco / "annotations" / f"instances_{f}.json", coco / f)
                                  for f in ("train2017", "val2017")),
                          val_from_train=4, max_train=28, max_val=4, rare_below=2,
                          common_below=4)
        return {"root": root, "num_classes": 80, "real": True}
    make_synthetic_lvis_dataset(root, num_train=16, num_val=4, val_from_train=2, rare_below=6,
                                common_below=9)
    return {"root": root, "num_classes": 3, "real": False}
