"""A write into the work dir (or --out) that fails (a full disk mid-run, a folder that cannot be
made) ends tools/train_seg.py with one line naming the file, the folder and the cause; the
previous checkpoint stays the latest (#20). Before: an ``OSError`` traceback, exit status 1."""
import warnings

import pytest

from mae_transfer.tools.train_seg import main

TINY = "segmentation/configs/upernet_vit-mini_1xb4-40it_shapes-64x64.py"
FULL = "No space left on device"
SHORT = ["train_cfg.max_iters=4", "default_hooks.checkpoint.interval=2"]


def run(*args):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return main([TINY, *map(str, args)])


@pytest.mark.slow
def test_a_full_disk_mid_run_keeps_the_last_checkpoint(ade_root, tmp_path, disk_full_for,
                                                       capsys):
    """Checkpoints after 2 and 4 iterations; the disk fills after iter_2."""
    work = tmp_path / "w"
    disk_full_for("iter_4.pth")
    assert run("--data-root", ade_root, "--work-dir", work, "--cfg-options", *SHORT) == 2
    out, err = capsys.readouterr()
    assert err == (f"error: OutputDirError: cannot write {work / 'iter_4.pth'} into output "
                   f"folder {work}: {FULL}\n")
    assert "final validation" not in out
    assert (work / "last_checkpoint").read_text().strip() == str(work / "iter_2.pth")
    assert sorted(p.name for p in work.glob("*.pth")) == ["iter_2.pth"]
    assert not list(work.rglob(".*.tmp*"))

    # --eval-only: a results file that cannot be written, then one in a folder that cannot be made
    disk_full_for("test_results.json")
    assert run("--data-root", ade_root, "--work-dir", work, "--eval-only",
               "--checkpoint", work / "iter_2.pth") == 2
    assert capsys.readouterr().err == (f"error: OutputDirError: cannot write "
                                       f"{work / 'test_results.json'} into output folder {work}: "
                                       f"{FULL}\n")
    (tmp_path / "file").write_text("")
    below_a_file = tmp_path / "file" / "res" / "r.json"
    assert run("--data-root", ade_root, "--eval-only", "--checkpoint", work / "iter_2.pth",
               "--out", below_a_file) == 2
    assert capsys.readouterr().err == (f"error: OutputDirError: cannot create output folder "
                                       f"{below_a_file.parent}: Not a directory\n")
    assert run("--data-root", ade_root, "--eval-only", "--checkpoint", work / "iter_2.pth",
               "--out", tmp_path / "file" / "r.json") == 2
    assert capsys.readouterr().err == (f"error: OutputDirError: output folder {tmp_path / 'file'} "
                                       f"is not a folder (a file of that name exists)\n")


@pytest.mark.slow
def test_a_results_file_on_a_full_disk_is_one_line(ade_root, tmp_path, disk_full_for, capsys):
    work = tmp_path / "w"
    disk_full_for("latest.json")
    assert run("--data-root", ade_root, "--work-dir", work, "--cfg-options", *SHORT,
               "train_cfg.val_interval=2") == 2
    latest = work / "val_results" / "latest.json"
    assert capsys.readouterr().err == (f"error: OutputDirError: cannot write {latest} into "
                                       f"output folder {work}: {FULL}\n")
    assert (work / "last_checkpoint").read_text().strip() == str(work / "iter_2.pth")
    assert not latest.exists()
