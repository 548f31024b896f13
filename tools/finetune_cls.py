"""Fine-tune a pretrained encoder for image classification (official MAE main_finetune.py recipe); see classification/finetune.py."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from mae_transfer.classification.finetune import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
