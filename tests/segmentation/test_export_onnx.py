"""tools/export_onnx.py seg: the tiny UperNet's crop forward as ONNX, reproduced by onnxruntime.

The checkpoint is the tiny config's segmentor at a fixed seed in MMEngine's layout
(``{'state_dict', 'meta'}``, as ``tools/train_seg.py`` writes ``iter_N.pth``), with its BEiT
relative-position tables and layer-scale vectors drawn at random (zero / one at init, which
would hide a wrong index or a missing scale).
"""
import contextlib
import io

import numpy as np
import onnxruntime as ort
import pytest
import torch

from mae_transfer.segmentation import export as seg_export

TINY = "segmentation/configs/upernet_vit-mini_1xb4-40it_shapes-64x64.py"


def run_main(argv):
    from mae_transfer.tools.export_onnx import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(argv)
    return code, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, repo_root):
    import mae_transfer.segmentation.registration  # noqa: F401
    from mmengine.config import Config
    from mmengine.registry import init_default_scope
    from mmseg.registry import MODELS

    init_default_scope("mmseg")
    torch.manual_seed(0)
    model = MODELS.build(Config.fromfile(str(repo_root / TINY)).model)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "relative_position_bias_table" in name or ".gamma_" in name:
                p.add_(torch.randn_like(p) * 0.5)
    path = tmp_path_factory.mktemp("seg_run") / "iter_40.pth"
    torch.save({"state_dict": model.state_dict(), "meta": {}}, path)
    return path


@pytest.fixture(scope="module")
def exported(checkpoint, repo_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("seg_onnx") / "segmentor.onnx"
    code, stdout, stderr = run_main(["seg", str(repo_root / TINY), str(checkpoint), str(out)])
    assert code == 0, stderr
    return out, stdout


def test_export_reports_the_logit_difference_and_names_the_io(exported):
    path, stdout = exported
    report = next(line for line in stdout.splitlines() if "largest differences" in line)
    logits = float(report.split("logits ")[1].split()[0])
    tolerance = float(report.split("(tolerance ")[1].split(")")[0])
    assert 0 <= logits <= tolerance
    assert "clearly different labels (pixels) 0 " in report
    # the BEiT bias stays a table lookup in the graph, not one folded 4 x 17 x 17 tensor per
    # block (at 512 px: 12 x 1025 x 1025 floats per block, half a ViT-B UperNet file)
    import onnx

    shapes = [list(t.dims) for t in onnx.load(str(path)).graph.initializer]
    assert [1, 4, 17, 17] not in shapes and [4, 17, 17] not in shapes
    assert shapes.count([(2 * 4 - 1) ** 2 + 3, 4]) == 4  # the four blocks' tables
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    # the config's slide crop (64x64): the input one sliding window gives the model
    assert [(i.name, i.type, i.shape) for i in sess.get_inputs()] == [
        ("image", "tensor(float)", [1, 3, 64, 64])]
    assert [(o.name, o.type, o.shape) for o in sess.get_outputs()] == [
        ("logits", "tensor(float)", [1, 3, 64, 64]), ("labels", "tensor(int64)", [1, 64, 64])]


def test_onnxruntime_reproduces_mmseg_on_crops_it_was_not_traced_on(exported, checkpoint,
                                                                    repo_root, ade_root):
    """MMSeg's own path here (data preprocessor on the BGR image, ``encode_decode``), written
    out in the test, against the graph fed RGB pixels."""
    from PIL import Image

    from mae_transfer.tools.demo_seg import load_segmentor

    path, _ = exported
    model = load_segmentor(str(repo_root / TINY), str(checkpoint), "cpu")
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    photos = sorted((ade_root / "images" / "validation").glob("*.jpg"))[:2]
    for photo in photos:
        rgb = np.asarray(Image.open(photo).convert("RGB"))[:64, 16:80]  # a 64x64 crop
        bgr = torch.from_numpy(np.ascontiguousarray(rgb[..., ::-1].transpose(2, 0, 1)))
        with torch.no_grad():
            inputs = model.data_preprocessor({"inputs": [bgr]}, False)["inputs"]
            ref = model.encode_decode(inputs, [dict(img_shape=(64, 64), pad_shape=(64, 64))])
        image = np.ascontiguousarray(rgb.transpose(2, 0, 1)[None].astype(np.float32))
        logits, labels = sess.run(None, {"image": image})
        np.testing.assert_allclose(logits, ref.numpy(), atol=1e-4)
        margin = np.diff(np.sort(ref.numpy(), axis=1)[:, -2:], axis=1)[:, 0]
        clear = margin > 1e-3
        assert clear.mean() > 0.9
        np.testing.assert_array_equal(labels[clear], ref.argmax(1).numpy()[clear])
        assert len(np.unique(labels)) > 1


def test_a_real_coco_photo_checks_against_the_exported_file(exported, checkpoint, repo_root):
    coco = repo_root.parent / "shared" / "data" / "coco-mini" / "coco" / "val2017"
    photos = sorted(coco.glob("*.jpg")) if coco.is_dir() else []
    if not photos:
        pytest.skip(f"needs the real COCO sample in {coco} (not present on this machine)")
    path, _ = exported
    code, stdout, stderr = run_main(["seg", str(repo_root / TINY), str(checkpoint), str(path),
                                     "--check-only", "--image", str(photos[0])])
    assert code == 0, stderr
    assert f"checking on {photos[0]} (resized to 64x64)" in stdout


def test_a_difference_beyond_the_tolerance_exits_1(exported, checkpoint, repo_root,
                                                  monkeypatch, tmp_path):
    path, _ = exported
    monkeypatch.setattr(seg_export, "LOGIT_TOLERANCE", 0.0)
    code, _, stderr = run_main(["seg", str(repo_root / TINY), str(checkpoint), str(path),
                                "--check-only"])
    lines = stderr.strip().splitlines()
    assert code == 1 and len(lines) == 1
    assert lines[0].startswith(f"error: {path}: onnxruntime differs from PyTorch beyond the "
                               f"tolerance in logits")
    truncated = tmp_path / "truncated.onnx"
    truncated.write_bytes(path.read_bytes()[:1000])
    code, _, stderr = run_main(["seg", str(repo_root / TINY), str(checkpoint), str(truncated),
                                "--check-only"])
    assert code == 1
    assert stderr.strip().startswith(f"error: onnxruntime cannot load {truncated}")


@pytest.mark.parametrize("case", ["no checkpoint", "detection config", "detector checkpoint",
                                  "size off the patch grid", "size beyond the slide window"])
def test_bad_input_is_one_line(case, checkpoint, repo_root, tmp_path):
    config, ckpt, extra = str(repo_root / TINY), str(checkpoint), []
    if case == "no checkpoint":
        ckpt = str(tmp_path / "missing.pth")
        expected = f"error: no checkpoint file {ckpt}"
    elif case == "detection config":
        config = str(repo_root / "detection" / "configs" / "mask_rcnn_vit_mini_cpu.py")
        expected = f"error: {config} is no MMSeg config"
    elif case == "detector checkpoint":
        ckpt = str(tmp_path / "model_final.pth")
        torch.save({"model": {"backbone.net.blocks.0.attn.qkv.weight": torch.zeros(3, 2),
                              "roi_heads.box_predictor.cls_score.weight": torch.zeros(4, 2)}},
                   ckpt)
        expected = f"error: checkpoint {ckpt} has no decode_head.* weights"
    elif case == "size off the patch grid":
        extra = ["--size", "64", "56"]
        expected = "error: export size 64x56 is not a positive multiple of the ViT's 16x16"
    else:
        extra = ["--size", "64", "80"]
        expected = "error: export size 64x80 is larger than the slide window (64, 64)"
    code, _, stderr = run_main(["seg", config, ckpt, str(tmp_path / "out.onnx"), *extra])
    lines = [line for line in stderr.strip().splitlines()]
    assert code == 2 and len(lines) == 1, stderr
    assert lines[0].startswith(expected)
    assert not (tmp_path / "out.onnx").exists()


def test_a_checkpoint_of_another_model_is_one_line(checkpoint, repo_root, tmp_path):
    state = torch.load(checkpoint, weights_only=False)
    state["state_dict"] = {k: v for k, v in state["state_dict"].items()
                           if not k.startswith("decode_head.bottleneck.")}
    partial = tmp_path / "iter_40.pth"
    torch.save(state, partial)
    code, _, stderr = run_main(["seg", str(repo_root / TINY), str(partial),
                                str(tmp_path / "out.onnx")])
    lines = stderr.strip().splitlines()
    assert code == 2 and len(lines) == 1, stderr
    assert lines[0].startswith(f"error: checkpoint {partial} does not fit ")
