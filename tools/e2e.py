"""End-to-end experiment (MAE vs random init); see experiment/driver.py and docs/e2e.md."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from mae_transfer.experiment.driver import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
