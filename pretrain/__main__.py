"""``python -m pretrain ...`` is ``python -m pretrain.main ...``."""
import sys

from pretrain.main import main

sys.exit(main())
