"""k-NN monitor of pretraining checkpoints (DINO's weighted k-NN); see classification/knn_eval.py.

    python tools/knn.py --data_path ROOT --model vit_base_patch16 --finetune OUT/checkpoint-*.pth
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from mae_transfer.classification.knn_eval import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
