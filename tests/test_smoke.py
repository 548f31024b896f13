"""The README's first command ends with tools/smoke.py: it must run and report finite metrics."""
import json
import math
import subprocess
import sys

import pytest


@pytest.mark.slow
def test_smoke_run_trains_every_stage_and_writes_a_summary(tmp_path, repo_root):
    run = subprocess.run([sys.executable, "tools/smoke.py", "--out", str(tmp_path / "smoke")],
                         cwd=repo_root, capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    summary = json.loads((tmp_path / "smoke" / "summary.json").read_text())
    for key in ("pretrain_loss_start", "pretrain_loss_end", "box_AP", "mask_AP", "mIoU"):
        assert math.isfinite(summary[key]), key
    assert set(summary["seconds"]) >= {"pretrain", "convert", "detection", "segmentation"}
    assert (tmp_path / "smoke" / "mae" / "encoder.safetensors").is_file()
    assert (tmp_path / "smoke" / "detection" / "model_final.pth").is_file()
    assert "| Mask R-CNN (Detectron2) | box AP" in run.stdout
