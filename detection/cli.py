"""What the detection entry points (``tools/train_det.py``, ``tools/demo_det.py``) share.

Dataset flags (``--dataset``, ``--coco-root``, ``--invalid-annotations``) and their registration,
the config's CPU thread count, and the rule that bad input (a missing file, a broken annotation,
a checkpoint that does not fit, an override that names no config key) ends the program with one
``error:`` line and exit status 2 instead of a traceback.
"""
from __future__ import annotations

import logging
import sys
from typing import Callable, Optional, Tuple

import torch

from mae_transfer.detection.datasets import (DEFAULT_ON_INVALID, INVALID_MODES, DatasetError,
                                register_coco2017, register_from_spec)
from mae_transfer.detection.lvis_datasets import register_lvis_spec, register_lvis_v1
from mae_transfer.tools.checkpoints import CheckpointError
from mae_transfer.tools.divergence import EXIT_DIVERGED, TrainingDiverged
from mae_transfer.tools.overrides import OverrideError

logger = logging.getLogger("mae_transfer.detection")


class UsageError(ValueError):
    """A config / flag combination that cannot run (e.g. a GPU device on a machine without one)."""


#: Exceptions that mean "bad input", reported in one line.
INPUT_ERRORS = (DatasetError, CheckpointError, FileNotFoundError, UsageError, OverrideError)


def add_dataset_arguments(parser) -> None:
    parser.add_argument("--dataset", action="append", default=[], metavar="NAME=JSON:IMAGES|DIR",
                        help="register a COCO-format dataset, or an LVIS json with "
                             "NAME=JSON:IMAGES (IMAGES: the folder of its split folders) or "
                             "NAME=JSON (images in coco/ beside the json's folder) (repeatable; "
                             "a later spec replaces an earlier one of the same name)")
    parser.add_argument("--coco-root", default=None, metavar="DIR",
                        help="folder holding coco/ and lvis/ (default: $DETECTRON2_DATASETS or "
                             "./datasets)")
    parser.add_argument("--invalid-annotations", choices=INVALID_MODES,
                        default=DEFAULT_ON_INVALID,
                        help="detectron2 (default): load the json as Detectron2's load_coco_json "
                             "does (drop polygons with < 3 points, skip instances left without "
                             "one, count them); error: check every annotation and stop at the "
                             "first broken one, naming it; skip: the same checks, dropping what "
                             "fails with a warning")


def register_datasets(args) -> None:
    """COCO 2017 and LVIS v1 under ``--coco-root`` / $DETECTRON2_DATASETS, then every
    ``--dataset`` spec (an LVIS json is recognised by its keys)."""
    on_invalid = getattr(args, "invalid_annotations", DEFAULT_ON_INVALID)
    register_coco2017(getattr(args, "coco_root", None), on_invalid)
    register_lvis_v1(getattr(args, "coco_root", None), on_invalid)
    for spec in getattr(args, "dataset", None) or []:
        names = register_lvis_spec(spec, on_invalid) or register_from_spec(spec, on_invalid)
        logger.info("registered %s from %s", ", ".join(names), spec)


def error_report(exc: BaseException) -> Optional[Tuple[int, str]]:
    """``(exit status, one line)`` for an error the entry points report without a traceback: 2
    for bad input, 3 for a diverged training run; None for anything else (a bug: traceback)."""
    if isinstance(exc, INPUT_ERRORS):
        return 2, f"error: {exc}"
    if isinstance(exc, TrainingDiverged):
        return EXIT_DIVERGED, f"error: {exc}"
    return None


def run_reporting_input_errors(main: Callable[[], object]) -> int:
    """Run ``main``; 0 on success, else the status of ``error_report`` with its line on stderr."""
    try:
        main()
    except Exception as exc:
        report = error_report(exc)
        if report is None:
            raise
        print(report[1], file=sys.stderr)
        return report[0]
    return 0


def apply_cpu_threads(cfg, device: str) -> None:
    """``torch.set_num_threads(train.cpu_threads)`` for CPU runs when the config sets it.

    Tiny CPU models are bound by per-op overhead: one thread is as fast as several, and does not
    collapse when other processes share the cores.
    """
    threads = int(cfg.train.get("cpu_threads", 0) or 0)
    if threads and str(device) == "cpu":
        torch.set_num_threads(threads)
