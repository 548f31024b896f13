"""tools.atomic.atomic_write: all or nothing, no temporary files left behind."""
import pytest

from mae_transfer.tools.atomic import atomic_write


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
