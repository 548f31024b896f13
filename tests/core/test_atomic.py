"""tools.atomic.atomic_write: all or nothing, no temporary files left behind, the umask's mode."""
import os
import stat

import pytest
import torch

from mae_transfer.backbones import build_vit
from mae_transfer.tools.atomic import atomic_torch_save, atomic_write, current_umask
from mae_transfer.tools.checkpoints import read_checkpoint, write_checkpoint
from mae_transfer.tools.convert_checkpoint import convert


def test_replaces_the_file_whole_and_creates_folders(tmp_path):
    path = tmp_path / "a" / "b" / "out.txt"
    assert atomic_write(path, lambda tmp: tmp.write_text("one")) == path
    atomic_write(path, lambda tmp: tmp.write_text("two"))
    assert path.read_text() == "two"
    assert sorted(p.name for p in path.parent.iterdir()) == ["out.txt"]


def test_a_failing_writer_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "ckpt.pth"
    path.write_text("good")

    def crash(tmp):
        tmp.write_text("half")
        raise RuntimeError("killed mid-write")

    with pytest.raises(RuntimeError, match="killed mid-write"):
        atomic_write(path, crash)
    assert path.read_text() == "good"
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt.pth"]


@pytest.fixture(params=[0o022, 0o077])
def umask(request):
    old = os.umask(request.param)
    yield request.param
    os.umask(old)


def test_files_get_the_umask_mode_whatever_the_writer_makes(tmp_path, umask):
    """safetensors' writer makes its file 0600; every written file must follow the umask instead
    (0644 under 022, readable by the group on a shared cluster; 0600 under 077)."""
    expected = 0o666 & ~umask
    state = {"pos_embed": torch.zeros(1, 5, 8), "blocks.0.norm1.weight": torch.ones(8)}
    written = [write_checkpoint(state, tmp_path / "encoder.safetensors", "ours", {"arch": "x"}),
               write_checkpoint(state, tmp_path / "encoder.pth", "timm"),
               atomic_torch_save({"a": torch.zeros(2)}, tmp_path / "checkpoint-last.pth"),
               atomic_write(tmp_path / "private.bin",
                            lambda tmp: os.close(os.open(tmp, os.O_CREAT | os.O_WRONLY, 0o600)))]
    for path in written:
        assert stat.S_IMODE(path.stat().st_mode) == expected, path.name
    assert current_umask() == umask
    assert read_checkpoint(written[0])[0].keys() == state.keys()


def test_converted_safetensors_follow_the_umask(tmp_path, umask):
    vit = build_vit("vit_mini_patch16", img_size=32)
    src = write_checkpoint(vit.state_dict(), tmp_path / "src.pth", "timm")
    convert(str(src), str(tmp_path / "out.safetensors"), "ours")
    assert stat.S_IMODE((tmp_path / "out.safetensors").stat().st_mode) == 0o666 & ~umask


def test_a_full_disk_in_torch_save_is_the_os_error_naming_the_file(tmp_path, monkeypatch):
    """torch's zip writer answers a failed write with a RuntimeError of its own ("unexpected
    pos ...") while closing; the caller gets the ``OSError(ENOSPC)`` under it, naming the target."""
    import errno
    import io

    import mae_transfer.tools.atomic as atomic

    class FullAfter1kB(io.FileIO):
        def write(self, data):
            if self.tell() + len(data) > 1024:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            return super().write(data)

    path = tmp_path / "ckpt.pth"
    path.write_text("good")
    monkeypatch.setattr(atomic, "open", lambda p, mode: FullAfter1kB(p, "w"), raising=False)
    with pytest.raises(OSError) as err:
        atomic_torch_save({"w": torch.zeros(4096)}, path)
    assert (err.value.errno, err.value.strerror, err.value.filename) == (
        errno.ENOSPC, "No space left on device", str(path))
    assert path.read_text() == "good"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt.pth"]
