"""tools/train_seg.py claims its work dir (tools.run_dir) before MMEngine writes into it."""
from __future__ import annotations

from mae_transfer.tools.run_dir import claim_output_dir
from mae_transfer.tools.train_seg import RUN_FILES, main

TINY = "segmentation/configs/upernet_vit-mini_1xb4-40it_shapes-64x64.py"


def test_a_work_dir_with_another_run_or_in_use_is_refused(ade_root, tmp_path, capsys):
    work = tmp_path / "work"
    work.mkdir()
    (work / "iter_20.pth").write_text("old run")
    (work / "last_checkpoint").write_text(str(work / "iter_20.pth"))
    assert main([TINY, "--data-root", str(ade_root), "--work-dir", str(work)]) == 2
    assert capsys.readouterr().err == (
        f"error: OutputDirError: output folder {work} holds another run (iter_20.pth, "
        f"last_checkpoint): pass --resume to continue it or --overwrite to replace it\n")
    assert (work / "iter_20.pth").read_text() == "old run"
    fresh = tmp_path / "fresh"
    with claim_output_dir(fresh, resume=False, overwrite=False, run_files=RUN_FILES):
        assert main([TINY, "--data-root", str(ade_root), "--work-dir", str(fresh)]) == 2
    assert f"output folder {fresh} is in use by another run" in capsys.readouterr().err
