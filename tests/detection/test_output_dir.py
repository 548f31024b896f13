"""tools/train_det.py claims train.output_dir (tools.run_dir): a folder holding another
training run is refused unless --resume continues it or --overwrite replaces it."""
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
TINY = "detection/configs/mask_rcnn_vit_mini_cpu.py"


@pytest.fixture
def used(tmp_path):
    """An output folder with a finished run's files in it."""
    out = tmp_path / "out"
    out.mkdir()
    for name in ("last_checkpoint", "model_final.pth", "metrics.json"):
        (out / name).write_text("old run")
    return out


def test_training_into_another_run_is_one_line(used):
    run = subprocess.run([sys.executable, "tools/train_det.py", "--config", TINY,
                          f"train.output_dir={used}"], cwd=REPO, capture_output=True,
                         text=True, timeout=300)
    assert run.returncode == 2
    assert run.stderr.strip().splitlines()[-1] == (
        f"error: output folder {used} holds another run (last_checkpoint, metrics.json, "
        f"model_final.pth): pass --resume to continue it or --overwrite to replace it")
    assert (used / "model_final.pth").read_text() == "old run"


def test_resume_keeps_overwrite_clears_eval_only_claims_nothing(used):
    from mae_transfer.tools import train_det

    def claim(*flags):
        return train_det.claim_output(train_det.parse_args(
            ["--config", TINY, *flags, f"train.output_dir={used}"]), str(used))

    with claim("--eval-only"):  # evaluation writes beside a run: no claim, no lock
        with claim("--resume"):
            assert (used / "model_final.pth").read_text() == "old run"
            with pytest.raises(ValueError, match="is in use by another run"):
                claim("--overwrite")
    with claim("--overwrite"):
        assert not [p for p in used.iterdir() if p.name != ".run.lock"]
