"""A diverging run stops with one line and never leaves NaN weights as its latest checkpoint.

Before: ``optim_wrapper.optimizer.lr=1e6`` exited 0, saved NaN weights, pointed
``last_checkpoint`` at them and printed a normal "final validation".
"""
import sys
import warnings

import pytest
import torch

from mae_transfer.segmentation.hooks import FiniteLossHook, non_finite_losses
from mae_transfer.tools.divergence import TrainingDiverged, first_non_finite

TINY = "segmentation/configs/upernet_vit-mini_1xb4-40it_shapes-64x64.py"


@pytest.mark.slow
def test_huge_lr_stops_before_saving_nan_weights(repo_root, ade_root, tmp_path, capsys):
    sys.path.insert(0, str(repo_root))
    from mae_transfer.tools.train_seg import main

    work = tmp_path / "w"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        code = main([TINY, "--data-root", str(ade_root), "--work-dir", str(work), "--cfg-options",
                     "optim_wrapper.optimizer.lr=1e6", "train_cfg.max_iters=6",
                     "train_cfg.val_interval=100", "default_hooks.checkpoint.interval=1"])
    out, err = capsys.readouterr()
    assert code == 3
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: TrainingDiverged: training diverged")
    assert "iteration 2" in lines[0] and "not finite" in lines[0]  # the step after a good one
    assert "final validation" not in out
    saved = sorted(p.name for p in work.glob("iter_*.pth"))
    assert saved == ["iter_1.pth"]
    assert (work / "last_checkpoint").read_text().strip().endswith("iter_1.pth")
    state = torch.load(work / "iter_1.pth", map_location="cpu", weights_only=False)["state_dict"]
    assert first_non_finite(state) is None


class _Runner:
    iter = 6  # the 7th iteration (0-based, as MMEngine counts during after_train_iter)

    def __init__(self, work_dir):
        self.work_dir = str(work_dir)


def test_a_nan_loss_names_the_iteration_and_the_values(tmp_path):
    (tmp_path / "last_checkpoint").write_text(str(tmp_path / "iter_5.pth"))
    outputs = {"loss": torch.tensor(float("nan")), "decode.loss_ce": torch.tensor(float("inf")),
               "aux.loss_ce": torch.tensor(0.3), "decode.acc_seg": torch.tensor(float("nan"))}
    assert set(non_finite_losses(outputs)) == {"loss", "decode.loss_ce"}  # accuracy is no loss
    with pytest.raises(TrainingDiverged) as err:
        FiniteLossHook().after_train_iter(_Runner(tmp_path), 6, outputs=outputs)
    message = str(err.value)
    assert "iteration 7: loss=nan, decode.loss_ce=inf" in message and "iter_5.pth" in message
    FiniteLossHook().after_train_iter(_Runner(tmp_path), 6, outputs={"loss": torch.tensor(0.5)})
