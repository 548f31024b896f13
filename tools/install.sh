#!/usr/bin/env bash
# Install mae-transfer and everything it needs into the current Python environment.
#
#   bash tools/install.sh            # torch (if missing), this package, mmcv-lite, detectron2
#
# Why a script and not just `pip install -e .`:
#  - torch: an existing install (e.g. a CUDA build on a GPU machine) is kept; only a machine without
#    torch gets the pinned torch 2.14.1 / torchvision 0.29.1.
#  - mmcv: a compiled mmcv 2.1.x is kept; otherwise mmcv-lite 2.1.0 (segmentation/compat.py makes
#    it importable by mmseg). mmseg 1.2.2 refuses mmcv >= 2.2.
#  - detectron2: an installed one (e.g. official, built from source) is kept; otherwise
#    tools/install_detectron2.py installs the registry's pb1-detectron2 0.6 as pure Python.
#  - setuptools < 82 (pkg_resources) is re-pinned last: installing torch can upgrade it.
#
#   bash tools/install.sh --smoke    # ... then run the end-to-end smoke job (tools/smoke.py)
set -euo pipefail
cd "$(dirname "$0")/.."
SMOKE=0
for arg in "$@"; do
  case "$arg" in
    --smoke) SMOKE=1 ;;
    *) echo "usage: bash tools/install.sh [--smoke]" >&2; exit 2 ;;
  esac
done
PY=${PYTHON:-python3}
pip_install() { "$PY" -m pip install --disable-pip-version-check -q "$@"; }
has() { "$PY" -c "import importlib.util,sys; sys.exit(importlib.util.find_spec('$1') is None)"; }

if ! has torch; then
  echo "[install] torch 2.14.1 + torchvision 0.29.1"
  pip_install "torch==2.14.1" "torchvision==0.29.1"
fi
extras="test"
if ! has mmcv; then extras="$extras,lite"; fi
echo "[install] mae-transfer (editable) with extras [$extras]"
pip_install -e ".[$extras]"
echo "[install] detectron2"
"$PY" tools/install_detectron2.py
pip_install "setuptools>=77.0.3,<82"
# opencv (pulled in by mmcv/mmengine) needs two system libraries; install them if missing.
if ! "$PY" -c "import cv2" 2>/dev/null; then
  if command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
    echo "[install] libgl1 + libglib2.0-0 for opencv"
    apt-get update -q >/dev/null && apt-get install -y -q libgl1 libglib2.0-0 >/dev/null
  else
    echo "[install] opencv cannot load: install the system packages libgl1 and libglib2.0-0" >&2
    exit 1
  fi
fi
"$PY" - <<'PY'
import mae_transfer.detection, mae_transfer.segmentation
mae_transfer.detection.setup()  # the framework fixes (detection/compat.py, segmentation/compat.py)
mae_transfer.segmentation.setup()
import mae_transfer.detection.training, mae_transfer.segmentation.registration  # noqa: F401
import torch, timm, mmseg, mmengine, mmcv, detectron2
print(f"[install] ok: torch {torch.__version__}, timm {timm.__version__}, mmseg {mmseg.__version__}, "
      f"mmengine {mmengine.__version__}, mmcv {mmcv.__version__}, detectron2 {detectron2.__version__}")
PY
if [ "$SMOKE" = 1 ]; then
  "$PY" tools/smoke.py
fi
