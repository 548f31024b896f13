"""A write into train.output_dir that fails mid-run (a full disk) ends tools/train_det.py with one
line naming the file, the folder and the cause; the previous checkpoint stays the latest (#20).

Before: a traceback (exit status 1), torch's "unexpected pos" RuntimeError in place of the cause.
"""
import pytest

from mae_transfer.tools.train_det import main

TINY = "detection/configs/mask_rcnn_vit_mini_cpu.py"


@pytest.mark.slow
@pytest.mark.parametrize("full_at", ["model_0000003.pth", "coco_eval.json"])
def test_a_full_disk_mid_run_is_one_line(full_at, shapes_dataset, tmp_path, disk_full_for,
                                         fresh_detectron2_loggers, capsys):
    """Checkpoints after iterations 1 and 3, an evaluation after 2 (coco_eval.json): the disk
    fills after model_0000001.pth was written."""
    out = tmp_path / "out"
    disk_full_for(full_at)
    code = main(["--config", TINY, "--dataset", f"custom={shapes_dataset['coco']}",
                 f"train.output_dir={out}", "train.max_iter=4", "train.checkpointer.period=2",
                 "train.eval_period=2"])
    stdout, err = capsys.readouterr()
    assert code == 2
    assert err.strip().splitlines()[-1] == (
        f"error: cannot write {out / full_at} into output folder {out}: No space left on device")
    assert "Traceback" not in err + stdout
    assert (out / "last_checkpoint").read_text() == "model_0000001.pth"
    assert sorted(p.name for p in out.glob("*.pth")) == ["model_0000001.pth"]
    assert not list(out.rglob(".*.tmp*"))  # no temporary file left behind


def test_only_the_output_folders_errors_are_its_own(tmp_path):
    """An input that cannot be read is not the output folder's fault: it is not reworded."""
    from mae_transfer.tools.run_dir import writing_into

    with pytest.raises(FileNotFoundError):
        with writing_into(tmp_path / "out", only_output_faults=True):
            open(tmp_path / "missing.json")
