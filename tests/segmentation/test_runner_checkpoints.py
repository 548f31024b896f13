"""MMEngine checkpoints: written whole or not at all, read whole only by our Runner's own load.

Both are chosen per run (config keys), not patched into MMEngine: ``LocalBackend`` and the
process-wide checkpoint loader stay MMEngine's own.
"""
from __future__ import annotations

import os
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn as nn
from mmengine.config import Config
from mmengine.fileio import get_file_backend
from mmengine.fileio.backends.local_backend import LocalBackend
from mmengine.hooks import CheckpointHook
from mmengine.logging import MessageHub, MMLogger
from mmengine.runner import Runner, checkpoint as mmengine_checkpoint

import mae_transfer.segmentation.registration  # noqa: F401  (registers the runner and backend)
from mae_transfer.segmentation.entry import ensure_atomic_checkpoints
from mae_transfer.segmentation.file_backend import ATOMIC_BACKEND_ARGS, AtomicLocalBackend
from mae_transfer.segmentation.runner import FullCheckpointRunner, runner_checkpoint_loading


def _fail_replace(monkeypatch):
    def failing_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", failing_replace)


def test_configs_select_the_atomic_backend_and_runner(tiny_config_path):
    cfg = Config.fromfile(str(tiny_config_path))
    assert cfg.default_hooks.checkpoint.backend_args == ATOMIC_BACKEND_ARGS
    assert cfg.runner_type == "FullCheckpointRunner"
    backend = get_file_backend("/tmp/x.pth", backend_args=cfg.default_hooks.checkpoint.backend_args)
    assert type(backend) is AtomicLocalBackend
    assert LocalBackend.put is not AtomicLocalBackend.put  # MMEngine's own backend is untouched


def test_a_config_without_backend_args_gets_atomic_writes_and_others_are_kept():
    cfg = Config(dict(default_hooks=dict(checkpoint=dict(type="CheckpointHook", interval=1))))
    ensure_atomic_checkpoints(cfg)
    assert cfg.default_hooks.checkpoint.backend_args == ATOMIC_BACKEND_ARGS
    remote = Config(dict(default_hooks=dict(checkpoint=dict(type="CheckpointHook",
                                                            out_dir="s3://bucket/run"))))
    ensure_atomic_checkpoints(remote)
    assert "backend_args" not in remote.default_hooks.checkpoint


def test_a_checkpoint_save_that_fails_midway_keeps_the_previous_file(tmp_path, monkeypatch):
    target = tmp_path / "iter_10.pth"
    mmengine_checkpoint.save_checkpoint({"w": torch.ones(2)}, str(target),
                                        backend_args=ATOMIC_BACKEND_ARGS)
    _fail_replace(monkeypatch)
    with pytest.raises(OSError, match="disk full"):
        mmengine_checkpoint.save_checkpoint({"w": torch.zeros(2)}, str(target),
                                            backend_args=ATOMIC_BACKEND_ARGS)
    assert torch.equal(torch.load(target, weights_only=True)["w"], torch.ones(2))
    assert [p.name for p in tmp_path.iterdir()] == ["iter_10.pth"]


def test_last_checkpoint_points_only_at_complete_files(tmp_path, monkeypatch):
    """MMEngine's CheckpointHook with our backend: a save that fails leaves no partial
    ``iter_N.pth`` and ``last_checkpoint`` still names the previous, complete one."""
    def save(out_dir, filename, file_client_args=None, backend_args=None, meta=None, **kwargs):
        mmengine_checkpoint.save_checkpoint({"meta": meta}, os.path.join(out_dir, filename),
                                            backend_args=backend_args)

    runner = SimpleNamespace(work_dir=str(tmp_path), save_checkpoint=save,
                             message_hub=MessageHub.get_instance("test_last_checkpoint"),
                             logger=MMLogger.get_instance("test_last_checkpoint"))
    hook = CheckpointHook(interval=1, by_epoch=False, backend_args=ATOMIC_BACKEND_ARGS)
    hook.before_train(runner)
    hook._save_checkpoint_with_step(runner, 1, meta={"iter": 1})
    assert (tmp_path / "last_checkpoint").read_text() == str(tmp_path / "iter_1.pth")
    _fail_replace(monkeypatch)
    with pytest.raises(OSError, match="disk full"):
        hook._save_checkpoint_with_step(runner, 2, meta={"iter": 2})
    assert (tmp_path / "last_checkpoint").read_text() == str(tmp_path / "iter_1.pth")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["iter_1.pth", "last_checkpoint"]


def _runner_checkpoint(path, model):
    """What an MMEngine Runner saves: weights plus objects torch's weights_only refuses."""
    torch.save({"meta": {"iter": 3}, "state_dict": model.state_dict(),
                "message_hub": {"log": np.arange(3)}}, path)


def test_only_our_runner_reads_whole_checkpoints_and_only_while_loading(tmp_path):
    torch.manual_seed(0)
    source = nn.Linear(2, 2)
    path = tmp_path / "iter_3.pth"
    _runner_checkpoint(path, source)
    with pytest.raises(Exception, match="Weights only load failed"):  # torch >= 2.6's default
        mmengine_checkpoint.CheckpointLoader.load_checkpoint(str(path), map_location="cpu")
    with pytest.raises(Exception, match="Weights only load failed"):  # MMEngine's own Runner
        Runner(model=nn.Linear(2, 2), work_dir=str(tmp_path / "a")).load_checkpoint(str(path))

    runner = FullCheckpointRunner(model=nn.Linear(2, 2), work_dir=str(tmp_path / "b"))
    checkpoint = runner.load_checkpoint(str(path))
    assert np.array_equal(checkpoint["message_hub"]["log"], np.arange(3))
    assert torch.equal(runner.model.weight, source.weight)
    # afterwards (and on an error inside), every other load is MMEngine's own again
    local = mmengine_checkpoint.CheckpointLoader._schemes[""]
    assert local is mmengine_checkpoint.load_from_local
    with pytest.raises(RuntimeError, match="boom"), runner_checkpoint_loading():
        raise RuntimeError("boom")
    assert mmengine_checkpoint.CheckpointLoader._schemes[""] is mmengine_checkpoint.load_from_local
