"""A diverging detection run ends in one line, and no NaN checkpoint becomes ``last_checkpoint``.

Before: ``optimizer.lr=1e6`` ended in a ``FloatingPointError`` traceback (exit status 1), and
``AtomicCheckpointer`` saved whatever weights the model held, NaN or not.
"""
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mae_transfer.tools.divergence import TrainingDiverged, first_non_finite

REPO = Path(__file__).resolve().parents[2]
TINY = "detection/configs/mask_rcnn_vit_mini_cpu.py"


@pytest.mark.slow
def test_huge_lr_ends_in_one_line_keeping_the_last_good_checkpoint(shapes_dataset, tmp_path):
    out = tmp_path / "out"
    run = subprocess.run(
        [sys.executable, "tools/train_det.py", "--config", TINY, "--dataset",
         f"custom={shapes_dataset['coco']}", f"train.output_dir={out}", "optimizer.lr=1e6",
         "train.max_iter=8", "train.checkpointer.period=1", "train.eval_period=100"],
        cwd=REPO, capture_output=True, text=True, timeout=600)
    assert run.returncode == 3, run.stderr[-2000:]
    last = run.stderr.strip().splitlines()[-1]
    assert last.startswith("error: training diverged at iteration ")
    assert "Traceback" not in run.stderr and "Traceback" not in run.stdout
    stopped_at = int(last.split("iteration ")[1].split(":")[0])
    named = (out / "last_checkpoint").read_text()
    assert f"last_checkpoint still names {named}" in last
    assert named == f"model_{stopped_at - 1:07d}.pth"  # the step before the diverged one
    for path in out.glob("model_*.pth"):
        assert first_non_finite(torch.load(path, weights_only=True)["model"]) is None
    assert not (out / "model_final.pth").exists()


def test_checkpointer_refuses_non_finite_weights(tmp_path):
    from mae_transfer.detection.checkpointing import AtomicCheckpointer

    model = torch.nn.Linear(2, 2)
    checkpointer = AtomicCheckpointer(model, str(tmp_path))
    checkpointer.save("model_0000004", iteration=4)
    with torch.no_grad():
        model.bias[1] = float("nan")
    with pytest.raises(TrainingDiverged) as err:
        checkpointer.save("model_0000005", iteration=5)
    assert ("training diverged at iteration 5: weight bias is not finite; nothing saved there "
            "(last_checkpoint still names model_0000004.pth)") in str(err.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last_checkpoint", "model_0000004.pth"]
    assert (tmp_path / "last_checkpoint").read_text() == "model_0000004.pth"
