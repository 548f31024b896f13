"""tools.run_dir: an output folder is claimed by one run at a time, never silently taken over,
and every fault with it (missing, under a file, full disk) is one line naming the folder."""
import errno
import os
import signal
import subprocess
import sys
import time

import pytest

from mae_transfer.tools.run_dir import (LOCK_NAME, OutputDirError, claim_output_dir,
                                        existing_run_files, writing_into)

RUN_FILES = ("checkpoint-*.pth", "encoder.safetensors", "log.txt")


def test_a_new_folder_is_made_and_locked_until_released(tmp_path):
    out = tmp_path / "a" / "b"
    claim = claim_output_dir(out, resume=False, overwrite=False, run_files=RUN_FILES)
    assert out.is_dir() and (out / LOCK_NAME).read_text() == f"{os.getpid()}\n"
    with pytest.raises(OutputDirError, match=f"output folder {out} is in use by another run "
                                             f"\\(process {os.getpid()} holds"):
        claim_output_dir(out, resume=True, overwrite=True, run_files=RUN_FILES)
    claim.release()
    with claim_output_dir(out, resume=False, overwrite=False, run_files=RUN_FILES):
        pass


def test_a_folder_with_another_run_needs_resume_or_overwrite(tmp_path):
    (tmp_path / "checkpoint-last.pth").write_bytes(b"old run")
    (tmp_path / "checkpoint-0020.pth").write_bytes(b"old run")
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(OutputDirError) as err:
        claim_output_dir(tmp_path, resume=False, overwrite=False, run_files=RUN_FILES)
    assert str(err.value) == (f"output folder {tmp_path} holds another run (checkpoint-0020.pth, "
                              f"checkpoint-last.pth): pass --resume to continue it or "
                              f"--overwrite to replace it")
    with claim_output_dir(tmp_path, resume=True, overwrite=False, run_files=RUN_FILES):
        assert (tmp_path / "checkpoint-last.pth").read_bytes() == b"old run"  # kept to resume
    with claim_output_dir(tmp_path, resume=False, overwrite=True, run_files=RUN_FILES):
        assert existing_run_files(tmp_path, RUN_FILES) == []  # the old run's files are gone
    assert (tmp_path / "notes.txt").read_text() == "mine"  # anything else stays


def test_the_lock_dies_with_its_process(tmp_path):
    """Two runs at once are refused; a run killed with SIGKILL leaves no stale lock."""
    code = ("import sys, time; from mae_transfer.tools.run_dir import claim_output_dir; "
            "claim_output_dir(sys.argv[1], False, False, ()); print('held', flush=True); "
            "time.sleep(60)")
    holder = subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], text=True,
                              stdout=subprocess.PIPE, env={**os.environ,
                                                           "PYTHONPATH": os.getcwd()})
    try:
        assert holder.stdout.readline() == "held\n"
        with pytest.raises(OutputDirError, match=f"in use by another run \\(process {holder.pid}"):
            claim_output_dir(tmp_path, resume=False, overwrite=False, run_files=RUN_FILES)
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=30)
    with claim_output_dir(tmp_path, resume=False, overwrite=False, run_files=RUN_FILES):
        pass


def test_a_path_under_a_regular_file_is_one_line(tmp_path):
    """Root may write anywhere, but not below a regular file: a real failure in every test run."""
    (tmp_path / "file").write_text("")
    with pytest.raises(OutputDirError, match=f"^cannot create output folder {tmp_path}/file/out: "
                                             f"Not a directory$"):
        claim_output_dir(tmp_path / "file" / "out", False, False, RUN_FILES)
    with pytest.raises(OutputDirError, match="is not a folder"):
        claim_output_dir(tmp_path / "file", False, False, RUN_FILES)


def test_a_full_disk_says_so(tmp_path):
    with pytest.raises(OutputDirError, match=f"^cannot write into output folder {tmp_path}: "
                                             f"No space left on device$"):
        with writing_into(tmp_path):
            raise OSError(errno.ENOSPC)
    with pytest.raises(OutputDirError, match=f"cannot write {tmp_path}/x into output folder "
                                             f"{tmp_path}: Permission denied"):
        with writing_into(tmp_path):
            raise PermissionError(errno.EACCES, "Permission denied", str(tmp_path / "x"))


def test_a_filesystem_without_locks_warns_and_goes_ahead(tmp_path, monkeypatch, caplog):
    """Lustre without the flock mount option answers ENOLCK: refusing every run there would be
    worse than not noticing a second one."""
    import fcntl

    def no_locks(fd, op):
        raise OSError(errno.ENOLCK, os.strerror(errno.ENOLCK))

    monkeypatch.setattr(fcntl, "flock", no_locks)
    with claim_output_dir(tmp_path, resume=False, overwrite=False, run_files=RUN_FILES):
        pass
    assert f"output folder {tmp_path}: this filesystem has no file locks (No locks available)" \
        in caplog.text


def test_output_fault_tells_the_folders_writes_from_other_errors(tmp_path):
    from mae_transfer.tools.run_dir import output_fault

    out, extra = tmp_path / "out", tmp_path / "results"
    assert str(output_fault(OSError(errno.ENOSPC), out, extra)) == (
        f"cannot write into output folder {out}: No space left on device")
    inside = OSError(errno.EACCES, "Permission denied", str(extra / "r.json"))
    assert str(output_fault(inside, out, extra)) == (
        f"cannot write {extra}/r.json into output folder {extra}: Permission denied")
    # an input that cannot be read, or an error that is no write fault: not the folder's
    assert output_fault(FileNotFoundError(errno.ENOENT, "No such file", str(tmp_path / "a.json")),
                        out) is None
    assert output_fault(OSError(errno.EINVAL, "Invalid argument"), out) is None
    assert output_fault(OSError(errno.ENOSPC, "x", str(tmp_path / "outside")), out) is None
    assert output_fault(ValueError("no OSError"), out) is None
    assert str(output_fault(NotADirectoryError(errno.ENOTDIR, "Not a directory", str(out)),
                            out)) == f"cannot create output folder {out}: Not a directory"
    with pytest.raises(OutputDirError, match=f"cannot write {out}/log.txt into output folder"):
        with writing_into(out, only_output_faults=True):
            raise OSError(errno.EROFS, "Read-only file system", str(out / "log.txt"))
