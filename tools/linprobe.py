"""Linear probe of a frozen pretrained encoder (official MAE main_linprobe.py recipe); see classification/linprobe.py."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from mae_transfer.classification.linprobe import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
