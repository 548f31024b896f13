"""Fixtures for the segmentation tests: the tiny config, a pretraining-style checkpoint."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from mae_transfer import segmentation

# The framework fixes (segmentation/compat.py) before any test module imports mmseg.
segmentation.setup()

TINY_CONFIG = "segmentation/configs/upernet_vit-mini_1xb4-40it_shapes-64x64.py"


@pytest.fixture(autouse=True)
def fresh_mmengine_logger():
    """Each test gets its own MMEngine logger.

    ``MMLogger`` keeps the ``sys.stdout`` it was created with; when that is a ``capsys`` stream
    (an entry point run in-process), it is closed after the test, and every later log line
    becomes a "Logging error" traceback on stderr, breaking the one-line-error checks.
    """
    yield
    from mmengine.logging import MMLogger

    MMLogger._instance_dict.clear()


@pytest.fixture(scope="session")
def tiny_config_path(repo_root) -> Path:
    return repo_root / TINY_CONFIG


@pytest.fixture(scope="session")
def ade_root(shapes_dataset) -> Path:
    return Path(shapes_dataset["ade"])


@pytest.fixture
def tiny_cfg(tiny_config_path, ade_root):
    """The tiny CPU config pointed at the generated ADE-layout shapes set."""
    import mae_transfer.segmentation.registration  # noqa: F401  (registers MAEViT, ...)
    from mmengine.config import Config
    from mae_transfer.segmentation.entry import adapt_to_device, set_data_root, sync_num_classes

    cfg = Config.fromfile(str(tiny_config_path))
    set_data_root(cfg, str(ade_root))
    sync_num_classes(cfg)
    adapt_to_device(cfg)
    return cfg


@pytest.fixture(scope="session")
def mae_checkpoint(tmp_path_factory) -> Path:
    """An official-MAE-style pretraining file: ``{'model': encoder + decoder_* + mask_token}``.

    vit_mini at 224 px (a 14x14 pos_embed grid, as pretraining writes it), with random weights
    so that a correct load is visible as equality.
    """
    from mae_transfer.backbones import build_vit

    torch.manual_seed(1)
    vit = build_vit("vit_mini_patch16", img_size=224)
    state = {k: torch.randn_like(v) for k, v in vit.state_dict().items()}
    state["mask_token"] = torch.zeros(1, 1, 64)
    state["decoder_embed.weight"] = torch.randn(32, 64)
    state["decoder_pos_embed"] = torch.zeros(1, 197, 32)
    state["decoder_blocks.0.norm1.weight"] = torch.ones(32)
    path = tmp_path_factory.mktemp("mae") / "mae_pretrain_vit_mini.pth"
    torch.save({"model": state, "epoch": 1}, path)
    return path
