"""Evaluate a trained UperNet checkpoint (mIoU + per-class table, written as JSON).

    python tools/test_seg.py CONFIG CHECKPOINT [--data-root ROOT] [--work-dir DIR] [--out FILE]
                             [--cfg-options k=v ...] [--launcher pytorch] [--tta]

The same as ``tools/train_seg.py CONFIG --eval-only --checkpoint CHECKPOINT``; results go to
FILE (default: WORK_DIR/test_results.json) and the summary is printed. ``--tta``: multi-scale +
flip test-time augmentation (the config's ``tta_pipeline`` and ``tta_model``).
"""
from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from mae_transfer.tools.train_seg import main as train_main  # noqa: E402


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if len(argv) < 2 or argv[0].startswith("-") or argv[1].startswith("-"):
        if any(a in ("-h", "--help") for a in argv):
            print(__doc__)
            return 0
        print("usage: tools/test_seg.py CONFIG CHECKPOINT [options]", file=sys.stderr)
        return 2
    config, checkpoint, rest = argv[0], argv[1], argv[2:]
    return train_main([config, "--eval-only", "--checkpoint", checkpoint, *rest])


if __name__ == "__main__":
    sys.exit(main())
