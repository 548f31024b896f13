"""End to end on the generated COCO-layout shapes set: train, evaluate, resume, eval-only, demo."""
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

from mae_transfer.tools.synthetic_data import write_synthetic_images

REPO = Path(__file__).resolve().parents[2]
TINY = "detection/configs/mask_rcnn_vit_mini_cpu.py"
RUN = ["train.max_iter=40", "train.eval_period=20", "train.checkpointer.period=20",
       "train.log_period=5"]

pytestmark = pytest.mark.slow


def cli(*args, check=True):
    run = subprocess.run([sys.executable, *map(str, args)], cwd=REPO, capture_output=True,
                         text=True, timeout=600)
    if check and run.returncode:
        raise AssertionError(f"{args[0]} failed ({run.returncode}):\n{run.stderr[-3000:]}")
    return run


def train(data_root, out, *extra, flags=()):
    return cli("tools/train_det.py", "--config", TINY, *flags, "--dataset", f"custom={data_root}",
               f"train.output_dir={out}", *RUN, *extra)


def metrics(out):
    lines = [json.loads(line) for line in (out / "metrics.json").read_text().splitlines()]
    return [m for m in lines if "total_loss" in m]


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    """A real (2-step) MAE pretraining run of pretrain/: checkpoint-last.pth + encoder.safetensors."""
    tmp = tmp_path_factory.mktemp("mae")
    write_synthetic_images(tmp / "imgs", 16, size=(64, 64))
    cli("-m", "mae_transfer.pretrain.main", "--data_path", tmp / "imgs", "--model", "mae_vit_mini_patch16",
        "--input_size", "64", "--batch_size", "8", "--epochs", "1", "--steps_per_epoch", "2",
        "--warmup_epochs", "0", "--device", "cpu", "--num_workers", "0", "--vis_every", "0",
        "--output_dir", tmp / "out")
    return tmp / "out"


@pytest.fixture(scope="module")
def trained(shapes_dataset, pretrained, tmp_path_factory):
    """One 40-iteration run, initialised from pretrain/'s MAE training checkpoint (with decoder)."""
    tmp = tmp_path_factory.mktemp("det_e2e")
    out = tmp / "run"
    run = train(shapes_dataset["coco"], out,
                f"train.init_checkpoint={pretrained / 'checkpoint-last.pth'}")
    return {"out": out, "run": run, "data": shapes_dataset["coco"], "tmp": tmp}


def test_pretrain_encoder_export_fills_the_detector_backbone(pretrained):
    from detectron2.config import LazyConfig, instantiate

    from mae_transfer.detection.checkpointing import load_init_checkpoint
    from mae_transfer.tools.checkpoints import read_checkpoint

    model = instantiate(LazyConfig.load(str(REPO / TINY)).model)
    report = load_init_checkpoint(model, str(pretrained / "encoder.safetensors"))
    assert all(k.endswith(("rel_pos_h", "rel_pos_w")) for k in report.missing_keys)
    encoder, _ = read_checkpoint(pretrained / "encoder.safetensors")
    state = model.state_dict()
    for key in ("blocks.0.attn.qkv.weight", "blocks.3.mlp.fc2.bias", "patch_embed.proj.weight"):
        assert torch.equal(state[f"backbone.net.{key}"], encoder[key])


def test_short_run_lowers_the_loss_and_reports_coco_ap(trained):
    out, run = trained["out"], trained["run"]
    log = (out / "log.txt").read_text()
    assert re.search(r"-> model\.backbone\.net: \d+ tensors loaded; 0 missing keys \[\]", log)
    dropped = re.search(r"dropped (\d+) non-encoder keys", log)
    assert dropped and int(dropped.group(1)) > 0  # the MAE decoder of the pretraining checkpoint
    logged = metrics(out)
    assert [m["iteration"] for m in logged] == list(range(4, 40, 5))
    assert logged[-1]["total_loss"] < 0.85 * logged[0]["total_loss"]
    # the AP table, in the console output and in the log
    for text in (run.stdout, log):
        assert "COCO evaluation on custom_val (iteration 40)" in text
        assert "| task   |" in text and "| bbox   |" in text and "| segm   |" in text
    result = json.loads((out / "coco_eval.json").read_text())
    assert result["dataset"] == "custom_val" and result["iteration"] == 40
    for task in ("bbox", "segm"):
        values = [result["results"][task][k] for k in ("AP", "AP50", "AP75", "APs", "APm")]
        assert all(v is None or 0.0 <= v <= 100.0 for v in values)
    periodic = json.loads((out / "inference" / "coco_eval_iter0000020.json").read_text())
    assert periodic["iteration"] == 20
    # checkpoints: complete files only, plain tensors and numbers (weights_only loads them)
    names = sorted(p.name for p in out.iterdir() if p.suffix in (".pth", ".tmp"))
    assert names == ["model_0000019.pth", "model_0000039.pth", "model_final.pth"]
    final = torch.load(out / "model_final.pth", weights_only=True)
    assert final["iteration"] == 39 and final["trainer"]["iteration"] == 39
    assert (out / "last_checkpoint").read_text() == "model_final.pth"


def test_resume_continues_from_the_last_checkpoint_with_its_schedule(trained):
    """A run stopped after iteration 19 resumes at 20, with the lr schedule where it was."""
    first, resumed = trained["out"], trained["tmp"] / "resumed"
    resumed.mkdir()
    shutil.copy(first / "model_0000019.pth", resumed)
    (resumed / "last_checkpoint").write_text("model_0000019.pth")
    run = train(trained["data"], resumed, flags=("--resume",))
    assert "continuing at iteration 20 of 40" in run.stdout
    logged = metrics(resumed)
    assert [m["iteration"] for m in logged] == [24, 29, 34, 39]
    lr_first = {m["iteration"]: m["lr"] for m in metrics(first)}
    for m in logged:
        assert m["lr"] == pytest.approx(lr_first[m["iteration"]])
    assert torch.load(resumed / "model_final.pth", weights_only=True)["iteration"] == 39


def test_eval_only_reproduces_the_final_evaluation(trained):
    out = trained["tmp"] / "eval_only"
    run = cli("tools/train_det.py", "--config", TINY, "--eval-only", "--dataset",
              f"custom={trained['data']}", f"train.output_dir={out}",
              f"train.init_checkpoint={trained['out'] / 'model_final.pth'}")
    assert "COCO evaluation on custom_val (final)" in run.stdout
    again = json.loads((out / "coco_eval.json").read_text())["results"]
    before = json.loads((trained["out"] / "coco_eval.json").read_text())["results"]
    for task in ("bbox", "segm"):
        for key, value in before[task].items():
            assert again[task][key] == pytest.approx(value, abs=1e-6) or value is None, key


def test_demo_draws_on_every_input_image(trained, tmp_path):
    val = trained["data"] / "images" / "val"
    run = cli("tools/demo_det.py", "--config", TINY, "--weights",
              trained["out"] / "model_final.pth", "--input", val, "--output", tmp_path,
              "--confidence", "0.0", "--dataset", f"custom={trained['data']}")
    inputs = sorted(val.iterdir())
    assert len(run.stdout.strip().splitlines()) == len(inputs)
    for src in inputs:
        drawn = tmp_path / f"{src.stem}.jpg"
        assert Image.open(drawn).size == Image.open(src).size


def test_strict_mode_stops_training_with_one_line_naming_the_broken_annotation(shapes_dataset,
                                                                              tmp_path):
    root = shapes_dataset["coco"]
    data = json.loads((root / "annotations" / "instances_train.json").read_text())
    ann = data["annotations"][3]
    ann["segmentation"] = [[4.0, 4.0, 9.0, 9.0]]
    image = next(i for i in data["images"] if i["id"] == ann["image_id"])
    broken = tmp_path / "broken.json"
    broken.write_text(json.dumps(data))
    # a later --dataset replaces an earlier registration of the same name
    run = cli("tools/train_det.py", "--config", TINY, "--invalid-annotations", "error",
              "--dataset", f"custom={root}",
              "--dataset", f"custom_train={broken}:{root / 'images' / 'train'}",
              f"train.output_dir={tmp_path / 'out'}", check=False)
    assert run.returncode == 2
    last = run.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and f"image '{image['file_name']}'" in last
    assert "needs at least 3" in last


@pytest.mark.parametrize("fault", ["zero_byte", "truncated"])
def test_default_mode_ends_an_unreadable_image_in_one_line(shapes_dataset, tmp_path, fault):
    """A zero-byte image is found before training (its header); truncated JPEGs (headers intact)
    when the train loader reads one, inside Detectron2's train loop."""
    data = tmp_path / "coco"
    shutil.copytree(shapes_dataset["coco"], data)
    images = sorted((data / "images" / "train").glob("*.jpg"))
    for image in images[3:4] if fault == "zero_byte" else images:
        content = image.read_bytes()
        image.write_bytes(b"" if fault == "zero_byte" else content[: len(content) * 2 // 3])
    run = cli("tools/train_det.py", "--config", TINY, "--dataset", f"custom={data}",
              f"train.output_dir={tmp_path / 'out'}", *RUN, check=False)
    assert run.returncode == 2, run.stderr[-2000:]
    last = run.stderr.strip().splitlines()[-1]
    assert "Traceback" not in run.stderr + run.stdout
    if fault == "zero_byte":
        assert last == (f"error: {data / 'annotations' / 'instances_train.json'}: image "
                        f"'train_0003.jpg' (id {3 + 1}): {images[3]} is empty (0 bytes)")
    else:
        assert re.fullmatch(rf"error: image {data / 'images' / 'train'}/train_\d{{4}}\.jpg "
                            r"\(id \d+\): cannot be read \(OSError: .*truncated.*\)", last)


def test_tiny_cascade_trains_and_reports_coco_ap(shapes_dataset, tmp_path):
    """The Cascade Mask R-CNN config family through the same entry point: train, evaluate, save."""
    out = tmp_path / "cascade"
    config = "detection/configs/cascade_mask_rcnn_vit_mini_cpu.py"
    run = cli("tools/train_det.py", "--config", config, "--dataset",
              f"custom={shapes_dataset['coco']}", f"train.output_dir={out}", "train.max_iter=20",
              "train.eval_period=20", "train.checkpointer.period=20", "train.log_period=5")
    assert "COCO evaluation on custom_val (iteration 20)" in run.stdout
    result = json.loads((out / "coco_eval.json").read_text())["results"]
    for task in ("bbox", "segm"):
        assert result[task]["AP"] is None or 0.0 <= result[task]["AP"] <= 100.0
    logged = metrics(out)
    assert {"loss_cls_stage2", "loss_box_reg_stage2"} <= set(logged[-1])
    assert logged[-1]["total_loss"] < logged[0]["total_loss"]
    final = torch.load(out / "model_final.pth", weights_only=True)["model"]
    assert {f"roi_heads.box_predictor.{s}.bbox_pred.weight" for s in range(3)} <= set(final)
