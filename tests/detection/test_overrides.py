"""Detectron2 overrides (``key=value`` after tools/train_det.py's flags) are checked, not added.

Before: ``train.max_iters=3`` became a new key nothing reads (the run trained the config's 200
iterations); ``model.roi_heads.num_clases=3`` and ``train.max_iter=abc`` ended in ``TypeError``
tracebacks.
"""
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
TINY = str(REPO / "detection/configs/mask_rcnn_vit_mini_cpu.py")


@pytest.mark.parametrize("override, expected", [
    ("train.max_iters=3", "train has no key 'max_iters' (did you mean train.max_iter?)"),
    ("model.roi_heads.num_clases=3", "model.roi_heads (StandardROIHeads) has no key "
                                     "'num_clases' (did you mean model.roi_heads.num_classes?)"),
    ("train.max_iter=abc", "train.max_iter is a number (the config has 200), not 'abc'"),
])
def test_train_det_refuses_a_typo_in_one_line(override, expected, tmp_path, capsys):
    sys.path.insert(0, str(REPO))
    from mae_transfer.tools.train_det import main

    out = tmp_path / "out"
    assert main(["--config", TINY, f"train.output_dir={out}", override]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith(f"error: override {override.split('=')[0]}") and expected in err[0]
    assert not out.exists()  # refused before anything ran


def test_parameters_of_lazycall_targets_and_added_keys_apply():
    from mae_transfer.detection.config_overrides import load_config

    cfg = load_config(TINY, ["train.max_iter=3", "model.roi_heads.proposal_append_gt=False",
                             "+train.note=hello", "train.amp.cpu=True"])
    assert cfg.train.max_iter == 3 and cfg.train.note == "hello" and cfg.train.amp.cpu is True
    assert cfg.model.roi_heads.proposal_append_gt is False  # a StandardROIHeads parameter
