"""The whole e2e pipeline at CI size: every stage runs, every file is written, metrics finite."""
import json
import math
import re

import pytest
from PIL import Image

from mae_transfer.experiment.driver import INITS, PRESETS, main

STAGES = ["images", "dataset", "pretrain-images", "pretrain", "finetunes", "probe", "pictures", "pictures-recon"] + [
    f"{kind}-{init}" for kind in ("det", "seg", "pictures-det", "pictures-seg") for init in INITS]


@pytest.mark.slow
# One arch: the non-default patch-8 ViT (patch-8 pyramids and the --arch plumbing end to end);
# the default patch-16 one runs each stage in the stage tests (detection, segmentation, smoke,
# bench/acceptance), and a second whole pipeline cost the suite about 5 minutes.
@pytest.mark.parametrize("arch", ["vit_mini_patch8"])
def test_quick_pipeline_runs_every_stage_and_writes_every_file(image_folder, tmp_path, capsys,
                                                               arch):
    out = tmp_path / "e2e"
    argv = ["--quick", "--generated-stamps", "--images", str(image_folder), "--out", str(out),
            "--photos", "16", "--mae-batch", "8", "--arch", arch]
    assert main(argv) == 0
    names = {p.stem.replace("-s0", "") for p in (out / "stages").glob("*.json")}
    assert names == set(STAGES)

    results = json.loads((out / "results.json").read_text())
    assert results["seeds"] == [0]
    # in-domain pretraining: the 16 photos + the paste set's 8 train and 4 unlabelled images,
    # pixels only (no annotation file is copied)
    assert results["pretrain"]["images"] == 16 + 8 + 4
    pool = sorted(p.name for p in (out / "pretrain_images").iterdir())
    assert len(pool) == 28 and all(n.endswith(".jpg") for n in pool)
    assert sum(n.startswith("unlabelled_unlabelled_") for n in pool) == 4
    assert sum(n.startswith("train_train_") for n in pool) == 8
    assert results["pretrain"]["model"] == f"mae_{arch}"
    numbers = [results["pretrain"]["loss_start"], results["pretrain"]["loss_end"]]
    for init in INITS:
        for metric in ("box_AP", "mask_AP", "mIoU", "box_AP50_agnostic"):
            assert len(results["finetune"][init][metric]["per_seed"]) == 1
            numbers += results["finetune"][init][metric]["per_seed"]
    assert all(math.isfinite(v) for v in numbers)
    assert 0 <= results["finetune"]["mae"]["mIoU"]["mean"] <= 100
    assert set(results["comparison"]) == {"box_AP", "mask_AP", "mIoU", "box_AP50_agnostic"}
    assert results["mae_wins_all"] == all(results["comparison"][m]["mae_wins"]
                                          for m in ("box_AP", "mask_AP", "mIoU"))
    seconds = results["seconds"]  # rounded to 0.1 s: the in-process image copy may show 0.0
    assert all(v >= 0 for v in seconds.values())
    assert all(seconds[k] > 0 for k in seconds if k == "pretrain" or k.startswith(("det-", "seg-"))
               or "wall" in k)

    # the frozen-encoder probe scored every val instance, for both initialisations
    val_json = json.loads((out / "paste" / "coco" / "annotations" / "instances_val.json")
                          .read_text())
    for init in INITS:
        probe = results["probe"][init]
        assert probe["val_instances"] == len(val_json["annotations"])
        assert 0 <= probe["logistic_acc"] <= 100 and math.isfinite(probe["logistic_se"])

    # fine-tunes: MAE init loaded the exported encoder, random init did not
    det_mae = (out / "logs" / "det-mae-s0.log").read_text()
    assert re.search(r"encoder\.safetensors \(.*\) -> model\.backbone\.net: \d+ tensors loaded; "
                     r"0 missing keys \[\]", det_mae)
    assert "whole detector starts from random init" in (out / "logs" / "det-random-s0.log").read_text()
    for init in INITS:
        assert (out / "det" / f"{init}-s0" / "model_final.pth").is_file()
        assert (out / "seg" / f"{init}-s0" / "val_results" / "latest.json").is_file()

    # pictures: the reconstruction grid (a row of original | masked | reconstruction | + visible
    # per photo: 6 of the 16, at the 64 px pretraining size), and two columns (random | MAE) of
    # three val images per task
    assert Image.open(out / "pictures" / "reconstruction.png").size == (4 * 64, 6 * 64)
    for task in ("det", "seg"):
        grid = Image.open(out / "pictures" / f"{task}_random_vs_mae.png")
        one = Image.open(sorted((out / "paste" / "coco" / "images" / "val").glob("*.jpg"))[0])
        assert grid.size == (2 * one.width + 4, 3 * one.height + 8)
    md = (out / "results.md").read_text()
    assert "| box_AP |" in md and "| mIoU |" in md and "| pretrain |" in md
    assert "| box_AP50_agnostic |" in md and "MAE wins on " in md
    assert "| mae |" in md and "| probe |" in md
    assert "| box_AP |" in capsys.readouterr().out

    # --resume finds every stage done: nothing reruns and the same table comes back
    before = (out / "results.json").read_text()
    assert main(argv + ["--resume"]) == 0
    after = json.loads((out / "results.json").read_text())
    assert after["finetune"] == json.loads(before)["finetune"]
    assert after["seconds"] == json.loads(before)["seconds"]

    if arch != "vit_mini_patch16":
        return
    # --pretrained-run: fine-tunes from the first run's encoder; nothing is pretrained again
    other = tmp_path / "from-encoder"
    assert main(["--quick", "--generated-stamps", "--images", str(image_folder), "--out",
                 str(other), "--photos", "16", "--pretrained-run", str(out / "mae")]) == 0
    assert not (other / "mae").exists() and not (other / "stages" / "pretrain.json").exists()
    reused = json.loads((other / "results.json").read_text())
    assert reused["pretrain"]["from_run"] == str(out / "mae")
    assert reused["pretrain"]["loss_end"] == results["pretrain"]["loss_end"]
    assert re.search(re.escape(str(out / "mae" / "encoder.safetensors")) +
                     r" \(.*\) -> model\.backbone\.net: \d+ tensors loaded; 0 missing keys \[\]",
                     (other / "logs" / "det-mae-s0.log").read_text())

    # --baseline-run: an ablation of pretraining (here: photos only, one epoch) takes over the
    # first run's photos, annotated set and random-init fine-tunes and trains only the MAE side
    ablation = tmp_path / "ablation"
    assert main(["--quick", "--generated-stamps", "--images", str(tmp_path / "absent"), "--out",
                 str(ablation), "--photos", "16", "--mae-data", "photos", "--mae-epochs", "1",
                 "--baseline-run", str(out)]) == 0
    abl = json.loads((ablation / "results.json").read_text())
    assert abl["baseline_run"] == str(out)
    assert abl["finetune"]["random"] == results["finetune"]["random"]
    assert abl["pretrain"]["images"] == 16 and abl["pretrain"]["epochs"] == 1
    assert abl["pretrain"]["loss_end"] != results["pretrain"]["loss_end"]
    logs = {p.name for p in (ablation / "logs").iterdir()}
    assert {"pretrain.log", "det-mae-s0.log", "seg-mae-s0.log"} <= logs
    assert not logs & {"dataset.log", "det-random-s0.log", "seg-random-s0.log"}
    assert (ablation / "det" / "random-s0" / "model_final.pth").is_file()
    assert "taken over from the earlier run" in (ablation / "results.md").read_text()


def test_baseline_run_with_other_finetune_settings_is_refused(tmp_path, capsys):
    """A baseline made with another detector schedule would compare unlike fine-tunes."""
    baseline = tmp_path / "baseline"
    baseline.mkdir()
    settings = dict(PRESETS["quick"], det_iters=8, mae_epochs=5)
    (baseline / "results.json").write_text(json.dumps({"settings": settings, "seeds": [0]}))
    assert main(["--quick", "--out", str(tmp_path / "out"), "--baseline-run", str(baseline)]) == 1
    err = capsys.readouterr().err
    assert "det_iters 8 (here 4)" in err and "mae_epochs" not in err
    assert not (tmp_path / "out" / "images").exists()
    # the right settings but a seed the baseline never ran
    settings["det_iters"] = 4
    (baseline / "results.json").write_text(json.dumps({"settings": settings, "seeds": [0]}))
    assert main(["--quick", "--out", str(tmp_path / "out"), "--seeds", "0", "1",
                 "--baseline-run", str(baseline)]) == 1
    assert "no fine-tunes of seed(s) [1]" in capsys.readouterr().err
    # the baseline's own folder as --out: refused before anything of it is replaced
    (baseline / "images").mkdir()
    (baseline / "images" / "photo.jpg").write_bytes(b"kept")
    assert main(["--quick", "--out", str(baseline), "--baseline-run", str(baseline)]) == 1
    assert "is this run's own --out" in capsys.readouterr().err
    assert (baseline / "images" / "photo.jpg").read_bytes() == b"kept"
