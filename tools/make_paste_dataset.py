"""Build the annotated pasted real-photo set; see experiment/paste_dataset.py and docs/paste_dataset.md."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from mae_transfer.experiment.paste_dataset import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
