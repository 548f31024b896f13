"""``load_pretrained``: put any supported checkpoint into a ``VisionTransformer``.

A thin caller of THE reader (``backbones.checkpoint_reader.read_weights``), which recognises the
file's layout, fits its encoder tensors to the model (position-embedding grid, relative-position
tables, patch kernel) and refuses, in one line, a file that does not fit or fills too little of
the encoder. What this adds is the policy of a plain ViT load: log the report's summary line
(warning level when pretrained keys are missing or some are unused, because a silent key
mismatch is the usual reason a "pretrained" model behaves like a random one) and, with
``strict=True``, refuse any missing or unexpected key.
"""
from __future__ import annotations

import logging
import os
from typing import Sequence

from mae_transfer.backbones.checkpoint_files import CheckpointError
from mae_transfer.backbones.checkpoint_reader import CheckpointReport, read_weights

#: The report ``load_pretrained`` returns (the reader's; the old name is kept for callers).
LoadReport = CheckpointReport

logger = logging.getLogger("mae_transfer.load")


def load_pretrained(model, path: str | os.PathLike, strict: bool = False,
                    exclude: Sequence[str] = ()) -> CheckpointReport:
    """Load ``path`` (any layout of docs/checkpoints.md) into ``model``; return the report.

    ``exclude``: submodules / parameters of ``model`` that no pretrained file holds (see
    ``read_weights``). ``strict=True`` turns missing or unexpected keys into a ``CheckpointError``.
    """
    weights = read_weights(path, model, exclude=exclude)
    report = weights.load_into(model)
    logger.log(logging.INFO if report.clean else logging.WARNING, "loaded %s", report.summary())
    if strict and (report.missing_keys or report.unexpected_keys):
        raise CheckpointError(f"{path}: strict load failed: missing {report.missing_keys}, "
                              f"unexpected {report.unexpected_keys}")
    return report
