"""``--cfg-options`` of tools/train_seg.py / tools/test_seg.py are checked, not silently added.

Before: MMEngine's ``merge_from_dict`` added ``train_cfg.max_iter=3`` as a new key the loop never
reads (the run trained the config's 40 iterations).
"""
import sys
import warnings

import pytest

TINY = "segmentation/configs/upernet_vit-mini_1xb4-40it_shapes-64x64.py"


@pytest.mark.parametrize("tool, option, expected", [
    ("test_seg", "train_cfg.max_iter=3", "train_cfg (IterBasedTrainLoop) has no key 'max_iter'"),
    ("train_seg", "train_cfg.max_iter=3",
     "train_cfg (IterBasedTrainLoop) has no key 'max_iter' (did you mean train_cfg.max_iters?)"),
    ("train_seg", "model.decode_head.num_clases=3", "model.decode_head (UPerHead) has no key "
     "'num_clases' (did you mean model.decode_head.num_classes?)"),
    ("train_seg", "train_cfg.max_iters=abc",
     "train_cfg.max_iters is a number (the config has 40), not 'abc'"),
    ("train_seg", "env_cfg.cudnn_benchmrk=True", "env_cfg has no key 'cudnn_benchmrk' (did you "
     "mean env_cfg.cudnn_benchmark?); to add it anyway write +env_cfg.cudnn_benchmrk=True"),
])
def test_a_typo_is_one_line(repo_root, ade_root, tmp_path, capsys, tool, option, expected):
    sys.path.insert(0, str(repo_root))
    import importlib

    main = importlib.import_module(f"mae_transfer.tools.{tool}").main
    lead = [TINY, str(tmp_path / "x.pth")] if tool == "test_seg" else [TINY]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        code = main([*lead, "--data-root", str(ade_root), "--work-dir", str(tmp_path / "w"),
                     "--cfg-options", option])
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert f"override {option.split('=')[0]}" in err[0] and expected in err[0]
    assert not (tmp_path / "w").exists()


def test_parameters_loader_keys_and_added_keys_apply(ade_root):
    from mae_transfer.segmentation.entry import load_config
    from mae_transfer.tools.train_seg import parse_args

    cfg = load_config(parse_args([
        TINY, "--data-root", str(ade_root), "--cfg-options", "train_cfg.max_iters=3",
        "default_hooks.checkpoint.save_best=mIoU",  # a CheckpointHook parameter
        "train_dataloader.pin_memory=True",  # a DataLoader parameter
        "+env_cfg.note=hello", "compile.backend=aot_eager"]))
    assert cfg.train_cfg.max_iters == 3 and cfg.default_hooks.checkpoint.save_best == "mIoU"
    assert cfg.train_dataloader.pin_memory is True and cfg.env_cfg.note == "hello"
    assert cfg.compile == {"backend": "aot_eager"}
