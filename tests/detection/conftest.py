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
