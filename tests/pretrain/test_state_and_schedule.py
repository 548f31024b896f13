"""Training-checkpoint plumbing (plain data, RNG round trip, atomic writes) and the lr schedule."""
import argparse
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from mae_transfer.pretrain.checkpoint import (atomic_save, load_training_checkpoint, plain, rng_state,
                                 set_rng_state)
from mae_transfer.pretrain.schedule import apply_lr, effective_lr, lr_at
from mae_transfer.tools.checkpoints import CheckpointError


def _draw():
    return torch.rand(3).tolist(), np.random.rand(3).tolist(), [random.random() for _ in range(3)]


def test_rng_state_round_trip_through_a_weights_only_file(tmp_path):
    torch.manual_seed(1), np.random.seed(2), random.seed(3)
    np.random.randn()  # leaves a cached gaussian in numpy's state
    path = atomic_save({"rng": rng_state(), "model": {}, "optimizer": {}, "epoch": 0},
                       tmp_path / "c.pth")
    expected = _draw()
    _draw()
    set_rng_state(load_training_checkpoint(path)["rng"])
    assert _draw() == expected


def test_plain_accepts_paths_and_refuses_objects():
    assert plain({"a": Path("/x"), "b": [1, 2.0, None, "s", True]}) == \
        {"a": "/x", "b": [1, 2.0, None, "s", True]}
    with pytest.raises(TypeError, match="Namespace"):
        plain({"args": argparse.Namespace(x=1)})


def test_atomic_save_leaves_previous_file_on_failure(tmp_path):
    path = atomic_save({"model": {"w": torch.ones(2)}, "optimizer": {}, "epoch": 1},
                       tmp_path / "c.pth")
    before = path.read_bytes()
    with pytest.raises(Exception):
        atomic_save({"bad": lambda: 0}, path)  # cannot be pickled: fails mid-write
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["c.pth"]


def test_unreadable_or_foreign_checkpoints_are_one_line_errors(tmp_path):
    path = atomic_save({"model": {}, "optimizer": {}, "epoch": 0}, tmp_path / "c.pth")
    (tmp_path / "cut.pth").write_bytes(path.read_bytes()[:50])
    with pytest.raises(CheckpointError, match="cannot read training checkpoint"):
        load_training_checkpoint(tmp_path / "cut.pth")
    torch.save({"model": {}}, tmp_path / "enc.pth")
    with pytest.raises(CheckpointError, match="not a pretraining checkpoint"):
        load_training_checkpoint(tmp_path / "enc.pth")
    with pytest.raises(CheckpointError, match="no checkpoint to resume"):
        load_training_checkpoint(tmp_path / "missing.pth")


def test_lr_schedule_warmup_then_cosine():
    assert effective_lr(1.5e-4, 64, 8, 8) == pytest.approx(1.5e-4 * 4096 / 256)
    assert lr_at(0.0, 1.0, 100, 10) == 0.0
    assert lr_at(5.0, 1.0, 100, 10) == pytest.approx(0.5)
    assert lr_at(10.0, 1.0, 100, 10) == pytest.approx(1.0)
    assert lr_at(55.0, 1.0, 100, 10, min_lr=0.1) == pytest.approx(0.55)
    assert lr_at(100.0, 1.0, 100, 10, min_lr=0.1) == pytest.approx(0.1)
    opt = torch.optim.SGD([{"params": [torch.zeros(1, requires_grad=True)], "lr_scale": 0.5},
                           {"params": [torch.zeros(1, requires_grad=True)]}], lr=1.0)
    apply_lr(opt, 0.2)
    assert [g["lr"] for g in opt.param_groups] == [0.1, 0.2]
