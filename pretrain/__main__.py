"""``python -m pretrain ...`` is ``python -m mae_transfer.pretrain.main ...``."""
import sys

from mae_transfer.pretrain.main import main

sys.exit(main())
