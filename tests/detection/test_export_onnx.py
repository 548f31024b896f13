"""tools/export_onnx.py det: the tiny ViTDet Mask R-CNN as ONNX, and onnxruntime reproducing it.

The checkpoint is the tiny config's model at a fixed seed, saved as ``tools/train_det.py`` saves
``model_final.pth``, with its relative-position tables drawn at random (they start at zero, which
would hide a wrong window or table index). A random detector scores every class about equally;
``test_score_thresh`` 0.26 keeps a number of detections that differs from image to image, so a
count frozen into the graph at export time would show.
"""
import contextlib
import io
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from detectron2.config import LazyConfig, instantiate

from mae_transfer.detection import export as det_export
from mae_transfer.detection.checkpointing import AtomicCheckpointer
from mae_transfer.tools.export_onnx import main
from mae_transfer.tools.onnx_check import quiet_tracing
from mae_transfer.tools.synthetic_data import smooth_background

REPO = Path(__file__).resolve().parents[2]
TINY = str(REPO / "detection" / "configs" / "mask_rcnn_vit_mini_cpu.py")
THRESHOLD = "model.roi_heads.box_predictor.test_score_thresh=0.26"


def generated_rgb(seed, size=(160, 120)):
    return ((smooth_background(np.random.default_rng(seed), size) + 1) * 127.5).astype(np.uint8)


def run_main(argv):
    """``main(argv)`` with its stdout and stderr captured: (status, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(argv)
    return code, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    model = instantiate(LazyConfig.load(TINY).model)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "rel_pos" in name:
                p.normal_(std=0.5)
    folder = tmp_path_factory.mktemp("det_run")
    AtomicCheckpointer(model, str(folder)).save("model_final", iteration=1)
    return folder / "model_final.pth"


@pytest.fixture(scope="module")
def exported(checkpoint, tmp_path_factory):
    out = tmp_path_factory.mktemp("det_onnx") / "detector.onnx"
    code, stdout, stderr = run_main(["det", TINY, str(checkpoint), str(out), THRESHOLD])
    assert code == 0, stderr
    return out, stdout


def test_export_reports_differences_within_tolerance_and_names_the_io(exported):
    path, stdout = exported
    assert path.is_file()
    assert not [p for p in path.parent.iterdir() if p.name != path.name]  # no temporary left
    report = next(line for line in stdout.splitlines() if "largest differences" in line)
    boxes = float(report.split("boxes (pixels) ")[1].split()[0])
    assert 0 <= boxes <= det_export.BOX_TOLERANCE * 128
    assert "unpaired detections 0 " in report
    model = onnx.load(str(path))
    assert model.opset_import[0].version == 17
    ops = {node.op_type for node in model.graph.node}
    assert "RoiAlign" in ops  # ROIAlignV2 pooling as the ONNX op, not unrolled
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [(i.name, i.type, i.shape) for i in sess.get_inputs()] == [
        ("image", "tensor(float)", [1, 3, 128, 128]), ("image_size", "tensor(int64)", [2])]
    assert [o.name for o in sess.get_outputs()] == ["boxes", "scores", "classes", "masks"]


def pytorch_and_onnx(path, checkpoint, rgb):
    """The detections of PyTorch (``model.inference``, Detectron2's own preprocessing) and of
    onnxruntime on the same image, each sorted by score."""
    cfg, model = det_export.load_detector(TINY, str(checkpoint), [THRESHOLD])
    example = det_export.prepare_input(cfg, rgb, 128)
    with torch.no_grad():
        found = model.inference([{"image": example.content}], do_postprocess=False)[0]
    ref = [found.pred_boxes.tensor.numpy(), found.scores.numpy(), found.pred_classes.numpy(),
           found.pred_masks.numpy()]
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = sess.run(None, {"image": example.image, "image_size": example.image_size})
    order_ref, order_got = np.argsort(-ref[1], kind="stable"), np.argsort(-got[1], kind="stable")
    return [r[order_ref] for r in ref], [g[order_got] for g in got], example


def test_onnxruntime_reproduces_pytorch_on_images_it_was_not_traced_on(exported, checkpoint):
    path, _ = exported
    counts = set()
    for seed, size in ((1, (160, 120)), (2, (100, 140)), (3, (128, 128))):
        ref, got, example = pytorch_and_onnx(path, checkpoint, generated_rgb(seed, size))
        assert len(got[1]) == len(ref[1]) > 0
        counts.add(len(ref[1]))
        np.testing.assert_array_equal(got[2], ref[2])
        np.testing.assert_allclose(got[0], ref[0], atol=1e-3)  # pixels of a 128 px image
        np.testing.assert_allclose(got[1], ref[1], atol=1e-5)
        np.testing.assert_allclose(got[3], ref[3], atol=1e-4)
        assert got[3].shape[1:] == (1, 28, 28) and got[2].dtype == np.int64
        height, width = example.image_size
        assert (got[0][:, [0, 2]] <= width).all() and (got[0][:, [1, 3]] <= height).all()
    assert len(counts) > 1  # the detection count follows the image, it is not frozen


def test_the_caller_may_fill_the_padding_with_anything(exported, checkpoint):
    """The graph zeroes everything outside image_size after normalising, as ViTDet pads."""
    path, _ = exported
    cfg, _ = det_export.load_detector(TINY, str(checkpoint), [THRESHOLD])
    example = det_export.prepare_input(cfg, generated_rgb(1), 128)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    clean = sess.run(None, example.feeds())
    height, width = example.image_size
    noisy = example.image.copy()
    noisy[..., height:, :] = 255.0
    noisy[..., :, width:] = 17.0
    dirty = sess.run(None, {"image": noisy, "image_size": example.image_size})
    for a, b in zip(clean, dirty):
        np.testing.assert_array_equal(a, b)


def test_a_real_coco_photo_checks_against_the_exported_file(exported, checkpoint, coco_mini):
    path, _ = exported
    photo = sorted((coco_mini / "val2017").glob("*.jpg"))[0]
    code, stdout, stderr = run_main(["det", TINY, str(checkpoint), str(path), "--check-only",
                                     "--image", str(photo), THRESHOLD])
    assert code == 0, stderr
    assert f"checking on {photo}" in stdout and "largest differences" in stdout


def test_a_difference_beyond_the_tolerance_exits_1(exported, checkpoint, monkeypatch):
    path, _ = exported
    before = path.read_bytes()
    for name in ("BOX_TOLERANCE", "SCORE_TOLERANCE", "MASK_TOLERANCE"):
        monkeypatch.setattr(det_export, name, 0.0)
    code, _, stderr = run_main(["det", TINY, str(checkpoint), str(path), "--check-only",
                                THRESHOLD])
    assert code == 1
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {path} (detections per image")
    assert "beyond the tolerance in boxes (pixels)" in lines[0]
    assert path.read_bytes() == before  # --check-only writes nothing


@pytest.mark.slow
def test_a_failed_check_leaves_no_file(checkpoint, tmp_path, monkeypatch):
    monkeypatch.setattr(det_export, "BOX_TOLERANCE", 0.0)
    out = tmp_path / "detector.onnx"
    code, _, stderr = run_main(["det", TINY, str(checkpoint), str(out), THRESHOLD])
    assert code == 1 and "beyond the tolerance in boxes" in stderr
    assert list(tmp_path.iterdir()) == []


def test_a_corrupted_file_exits_1(exported, checkpoint, tmp_path):
    path, _ = exported
    truncated = tmp_path / "truncated.onnx"
    truncated.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    code, _, stderr = run_main(["det", TINY, str(checkpoint), str(truncated), "--check-only",
                                THRESHOLD])
    assert code == 1
    assert stderr.strip().startswith(f"error: onnxruntime cannot load {truncated}")
    assert len(stderr.strip().splitlines()) == 1
    # a graph that loads but computes something else: the largest weight tensor scaled
    model = onnx.load(str(path))
    largest = max(model.graph.initializer, key=lambda t: np.prod(t.dims))
    values = onnx.numpy_helper.to_array(largest) * 1.5
    largest.CopyFrom(onnx.numpy_helper.from_array(values.astype(np.float32), largest.name))
    altered = tmp_path / "altered.onnx"
    onnx.save(model, str(altered))
    code, _, stderr = run_main(["det", TINY, str(checkpoint), str(altered), "--check-only",
                                THRESHOLD])
    assert code == 1 and "beyond the tolerance" in stderr


@pytest.mark.parametrize("case", ["no checkpoint", "segmentation config", "bare ViT",
                                  "no onnx file", "unknown override"])
def test_bad_input_is_one_line(case, checkpoint, tmp_path):
    config, ckpt, extra = TINY, str(checkpoint), []
    expected = None
    if case == "no checkpoint":
        ckpt = str(tmp_path / "missing.pth")
        expected = f"error: no checkpoint file {ckpt}"
    elif case == "segmentation config":
        config = str(REPO / "segmentation" / "configs" /
                     "upernet_vit-mini_1xb4-40it_shapes-64x64.py")
        expected = f"error: {config} is no Detectron2 detector config (no model.roi_heads)"
    elif case == "bare ViT":
        from mae_transfer.backbones import build_vit

        ckpt = str(tmp_path / "vit.pth")
        torch.save({"model": build_vit("vit_mini_patch16", img_size=128).state_dict()}, ckpt)
        expected = f"error: checkpoint {ckpt} is no whole detector"
    elif case == "no onnx file":
        extra = ["--check-only"]
        expected = f"error: no ONNX file {tmp_path / 'out.onnx'} to check"
    else:
        extra = ["model.roi_heads.num_clases=3"]
    code, _, stderr = run_main(["det", config, ckpt, str(tmp_path / "out.onnx"), *extra])
    lines = stderr.strip().splitlines()
    assert code == 2 and len(lines) == 1, stderr
    assert lines[0].startswith(expected or "error: ")
    if case == "unknown override":
        assert "num_clases" in lines[0]
    assert not (tmp_path / "out.onnx").exists()


def test_nms_over_many_boxes_is_not_frozen_to_the_traced_classes():
    """Detectron2's ``batched_nms`` loops over the classes present from 40,000 boxes on (a low
    ``test_score_thresh`` with 80 classes gets there); traced, that loop would keep only the
    traced image's classes. Within ``traceable_detectron2`` one NMS serves every class."""
    import detectron2.modeling.roi_heads.fast_rcnn as fast_rcnn

    def boxes_of(classes, n=40_000):  # near-identical boxes: one survivor per class
        g = torch.Generator().manual_seed(0)
        boxes = torch.tensor([10.0, 10.0, 50.0, 60.0]) + torch.rand(n, 4, generator=g)
        return boxes, torch.rand(n, generator=g), torch.tensor(classes).repeat(n // len(classes))

    def nms(boxes, scores, idxs):
        return fast_rcnn.batched_nms(boxes, scores, idxs, 0.5)

    other = boxes_of([2, 3])
    expected = sorted(nms(*other).tolist())
    assert len(expected) == 2
    with quiet_tracing():
        frozen = torch.jit.trace(nms, boxes_of([0, 1]), check_trace=False)
        with det_export.traceable_detectron2():
            traced = torch.jit.trace(nms, boxes_of([0, 1]), check_trace=False)
    assert frozen(*other).tolist() == []  # the trap: classes 0 and 1 only
    assert sorted(traced(*other).tolist()) == expected


def test_a_checkpoint_lacking_weights_of_the_config_is_one_line(checkpoint, tmp_path):
    """A detector file without the mask head (another config's model) is not exported with a
    randomly initialised head."""
    state = torch.load(checkpoint, weights_only=True)
    state["model"] = {k: v for k, v in state["model"].items()
                      if not k.startswith("roi_heads.mask_head.")}
    partial = tmp_path / "model_final.pth"
    torch.save(state, partial)
    code, _, stderr = run_main(["det", TINY, str(partial), str(tmp_path / "out.onnx")])
    lines = stderr.strip().splitlines()
    assert code == 2 and len(lines) == 1, stderr
    assert lines[0].startswith(f"error: checkpoint {partial} lacks ")
    assert "roi_heads.mask_head." in lines[0]
