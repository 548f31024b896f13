"""Run logging: text log lines (console + ``train.log``), JSON lines per epoch, TensorBoard scalars.

Only rank 0 writes files and prints progress; other ranks log warnings and errors only, with
their rank in front, so a multi-GPU run reads like a single-process one.
"""
from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Dict, Optional

import numpy as np

LOGGER_NAME = "mae_transfer"


def setup_logging(output_dir: Optional[Path], rank: int) -> logging.Logger:
    """Configure the ``mae_transfer`` loggers of this process; returns the pretrain logger."""
    root = logging.getLogger(LOGGER_NAME)
    for h in list(root.handlers):
        root.removeHandler(h)
        h.close()
    root.setLevel(logging.INFO if rank == 0 else logging.WARNING)
    root.propagate = False
    prefix = "" if rank == 0 else f"[rank {rank}] "
    fmt = logging.Formatter(f"%(asctime)s {prefix}%(levelname).1s %(message)s", "%H:%M:%S")
    console = logging.StreamHandler(sys.stdout)
    console.setFormatter(fmt)
    root.addHandler(console)
    if rank == 0 and output_dir is not None:
        output_dir.mkdir(parents=True, exist_ok=True)
        fh = logging.FileHandler(output_dir / "train.log")
        fh.setFormatter(fmt)
        root.addHandler(fh)
    return logging.getLogger(f"{LOGGER_NAME}.pretrain")


def teardown_logging() -> None:
    """Undo ``setup_logging``: close its handlers (``train.log`` complete and released) and give
    the ``mae_transfer`` loggers back their defaults (level unset, records propagate), so that a
    caller running ``main()`` in-process (a test, a notebook) finds logging as a fresh process has
    it instead of a logger that swallows every later record."""
    root = logging.getLogger(LOGGER_NAME)
    for h in list(root.handlers):
        root.removeHandler(h)
        h.close()
    root.setLevel(logging.NOTSET)
    root.propagate = True


class MetricWriter:
    """TensorBoard scalars/images and a ``log.txt`` of JSON lines (one per epoch), rank 0 only."""

    def __init__(self, output_dir: Path, log_dir: Optional[Path], enabled: bool):
        self.enabled = enabled
        self.json_path = output_dir / "log.txt"
        self.tb = None
        if enabled and log_dir is not None:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:  # a dependency, but its absence must not stop a run
                logging.getLogger(LOGGER_NAME).warning("tensorboard is not installed: "
                                                       "no TensorBoard scalars")
            else:
                self.tb = SummaryWriter(log_dir=str(log_dir))

    def scalars(self, values: Dict[str, float], step: int) -> None:
        if self.tb is not None:
            for k, v in values.items():
                self.tb.add_scalar(k, v, step)

    def image(self, tag: str, image: np.ndarray, step: int) -> None:
        if self.tb is not None:
            self.tb.add_image(tag, image, step, dataformats="HWC")

    def epoch_record(self, record: Dict) -> None:
        if self.enabled:
            with open(self.json_path, "a") as f:
                f.write(json.dumps(record) + "\n")
        if self.tb is not None:
            self.tb.flush()

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
