"""The e2e fine-tunes' settings are data (dicts of config keys), rendered into Detectron2
overrides and MMEngine ``--cfg-options`` by one function; the commands are the very ones the
driver built before, argument by argument, for the default run and the ablations."""
from pathlib import Path

import pytest

from mae_transfer.experiment.driver import (PRESETS, SEG_CONFIG, REPO, Run, finetune_jobs,
                                            render_overrides, seg_settings)

OUT, ENC = Path("/runs/e2e"), Path("/runs/mae/encoder.safetensors")
COCO, ADE = "/runs/e2e/paste/coco", "/runs/e2e/paste/ade/ADEChallengeData2016"
#: a stage that is run again (after a crash) starts afresh in its folder: --overwrite
DET = ["py", "tools/train_det.py", "--config", "detection/configs/mask_rcnn_vit_mini_e2e.py",
       "--overwrite", "--dataset", f"paste={COCO}"]
SEG = ["py", "tools/train_seg.py", "segmentation/configs/upernet_vit-mini_e2e_paste-128x128.py",
       "--data-root", ADE]


def commands(cfg, seeds, num_classes=8):
    jobs = finetune_jobs(Run(out=OUT, resume=False), "py", cfg, seeds, ENC, num_classes)
    return {name: [str(part) for part in cmd] for name, cmd in jobs}


def det_model(classes, arch, ch, fc):
    return [f"model.roi_heads.num_classes={classes}", f"model.backbone.net.name={arch}",
            f"model.backbone.out_channels={ch}", f"model.roi_heads.box_head.conv_dims=[{ch},{ch}]",
            f"model.roi_heads.box_head.fc_dims=[{fc}]",
            f"model.roi_heads.mask_head.conv_dims=[{ch},{ch},{ch}]"]


def det_train(run, iters, seed):
    return [f"train.output_dir=/runs/e2e/det/{run}", f"train.max_iter={iters}",
            f"train.eval_period={iters}", f"train.checkpointer.period={iters}", f"train.seed={seed}"]


def seg_options(iters, warmup, seed, arch):
    return ["--cfg-options", f"train_cfg.max_iters={iters}", f"train_cfg.val_interval={iters}",
            f"default_hooks.checkpoint.interval={iters}", f"param_scheduler.0.end={warmup}",
            f"param_scheduler.1.begin={warmup}", f"param_scheduler.1.end={iters}",
            f"randomness.seed={seed}", f"model.backbone.arch={arch}"]


def test_default_run_commands_are_the_ones_built_before():
    jobs = commands(PRESETS["full"], [0, 1, 2])
    assert list(jobs) == [f"{task}-{init}-s{seed}" for seed in (0, 1, 2)
                          for init in ("mae", "random") for task in ("det", "seg")]
    assert jobs["det-mae-s0"] == DET + [*det_train("mae-s0", 1200, 0),
                                        *det_model(8, "vit_mini_patch16", 64, 256),
                                        f"train.init_checkpoint={ENC}"]
    assert jobs["det-random-s2"] == DET + [*det_train("random-s2", 1200, 2),
                                           *det_model(8, "vit_mini_patch16", 64, 256),
                                           "train.init_checkpoint="]
    assert jobs["seg-mae-s1"] == SEG + ["--pretrained", str(ENC), "--work-dir",
                                        "/runs/e2e/seg/mae-s1", "--overwrite",
                                        *seg_options(1000, 40, 1, "vit_mini_patch16")]
    assert jobs["seg-random-s1"] == SEG + ["--work-dir", "/runs/e2e/seg/random-s1", "--overwrite",
                                           *seg_options(1000, 40, 1, "vit_mini_patch16")]


def test_ablation_flags_reach_the_commands_as_before():
    """``--det-channels 32 --det-fc 64``, ``--arch``, short schedules (warm-up at least one
    iteration), other seeds, the CI preset."""
    narrow = commands(dict(PRESETS["full"], det_channels=32, det_fc=64), [2], num_classes=5)
    assert narrow["det-mae-s2"] == DET + [*det_train("mae-s2", 1200, 2),
                                          *det_model(5, "vit_mini_patch16", 32, 64),
                                          f"train.init_checkpoint={ENC}"]
    quick = commands(dict(PRESETS["quick"], arch="vit_mini_patch8"), [0], num_classes=3)
    assert quick["det-random-s0"] == DET + [*det_train("random-s0", 4, 0),
                                            *det_model(3, "vit_mini_patch8", 32, 64),
                                            "train.init_checkpoint="]
    assert quick["seg-mae-s0"] == SEG + ["--pretrained", str(ENC), "--work-dir",
                                         "/runs/e2e/seg/mae-s0", "--overwrite",
                                         *seg_options(4, 1, 0, "vit_mini_patch8")]


def test_render_overrides_nests_dicts_and_indexes_lists_of_dicts():
    settings = {"a.b": 1, "train": {"seed": 3, "amp": {"enabled": True}},
                "sched": [{"end": 2}, {"begin": 2, "end": 9}], "dims": [4, 4], "ckpt": None,
                "path": Path("/x/y")}
    assert render_overrides(settings) == [
        "a.b=1", "train.seed=3", "train.amp.enabled=True", "sched.0.end=2", "sched.1.begin=2",
        "sched.1.end=9", "dims=[4,4]", "ckpt=", "path=/x/y"]


@pytest.mark.parametrize("iters, warmup", [(1000, 40), (10, 1)])
def test_scheduler_positions_address_the_configs_warmup_and_decay(iters, warmup):
    """The list positions of ``seg_settings`` are the e2e config's: warm-up first, poly decay
    after it (MMEngine applies the options as ``tools/train_seg.py`` does)."""
    import argparse

    from mmengine.config import Config, DictAction

    parser = argparse.ArgumentParser()
    parser.add_argument("--cfg-options", nargs="+", action=DictAction)
    options = parser.parse_args(["--cfg-options", *render_overrides(
        seg_settings(dict(PRESETS["full"], seg_iters=iters), seed=4))]).cfg_options
    cfg = Config.fromfile(str(REPO / SEG_CONFIG))
    cfg.merge_from_dict(options)
    warm, decay = cfg.param_scheduler
    assert (warm.type, warm.begin, warm.end) == ("LinearLR", 0, warmup)
    assert (decay.type, decay.begin, decay.end) == ("PolyLR", warmup, iters)
    assert (cfg.train_cfg.max_iters, cfg.randomness.seed) == (iters, 4)
