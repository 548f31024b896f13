"""Fixtures shared by every test folder: the repo root, real images when present, generated ones."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from mae_transfer.tools.synthetic_data import make_shapes_dataset, write_synthetic_images

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"
IMAGENET_SAMPLE = SHARED_DATA / "imagenet-sample"

# Two cores: keep torch from oversubscribing when several tests spawn workers.
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO_ROOT


@pytest.fixture(scope="session")
def real_images() -> Path:
    """Folder of the 1,000 real ImageNet samples; skips the test where the shared data is absent."""
    if not IMAGENET_SAMPLE.is_dir():
        pytest.skip(f"needs the real images in {IMAGENET_SAMPLE} (not present on this machine)")
    return IMAGENET_SAMPLE


@pytest.fixture
def image_folder(tmp_path) -> Path:
    """A folder of images: a copy of 16 real ones if the shared data is present, else generated."""
    dst = tmp_path / "images"
    if IMAGENET_SAMPLE.is_dir():
        dst.mkdir()
        for src in sorted(IMAGENET_SAMPLE.iterdir())[:16]:
            (dst / src.name).write_bytes(src.read_bytes())
        return dst
    return write_synthetic_images(dst)


@pytest.fixture(scope="session")
def shapes_dataset(tmp_path_factory) -> dict:
    """Generated shapes set in COCO (``['coco']``) and ADE (``['ade']``) layouts: 16 train, 4 val."""
    return make_shapes_dataset(tmp_path_factory.mktemp("shapes"), num_train=16, num_val=4, size=128)


@pytest.fixture
def reader_reads(monkeypatch):
    """Counts checkpoint reads twice: through the one reader (``checkpoint_reader.read_file``)
    and at the file level (every ``torch.load`` of a weights file); equal lists: no read
    bypasses the reader."""
    import mae_transfer.backbones.checkpoint_files as files_module
    import mae_transfer.backbones.checkpoint_reader as reader_module

    reads = {"reader": [], "file": []}
    read_file, torch_load = reader_module.read_file, files_module._torch_load
    monkeypatch.setattr(reader_module, "read_file",
                        lambda p: reads["reader"].append(Path(p)) or read_file(p))
    monkeypatch.setattr(files_module, "_torch_load",
                        lambda p: reads["file"].append(Path(p)) or torch_load(p))
    return reads


@pytest.fixture
def disk_full_for(monkeypatch):
    """``disk_full_for("iter_40.pth")``: from then on, writing a file of that name (a glob) through
    ``tools.atomic.atomic_write`` fails as on a full disk: its ``os.fsync`` raises
    ``OSError(ENOSPC)`` (a bare one, as some writers raise it: no file name, no strerror)."""
    import errno
    import fnmatch

    real_fsync, patterns = os.fsync, []

    def fsync(fd):
        name = os.path.basename(os.readlink(f"/proc/self/fd/{fd}"))
        target = name[1:].rsplit(".tmp", 1)[0] if name.startswith(".") else name  # .NAME.tmpPID
        if any(fnmatch.fnmatch(target, p) for p in patterns):
            raise OSError(errno.ENOSPC)
        return real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    return patterns.append
