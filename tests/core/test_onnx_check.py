"""mae_transfer.tools.onnx_check: the pieces both ONNX exports share."""
import numpy as np
import onnxruntime as ort
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from mae_transfer.tools.onnx_check import (Difference, OnnxMismatch, exportable_adaptive_pooling,
                                           export_traced, max_abs_difference, require,
                                           write_checked_onnx)


@pytest.mark.parametrize("shape, out", [((2, 3, 16, 16), 3), ((2, 3, 16, 16), 6),
                                        ((1, 4, 16, 12), (3, 2)), ((1, 2, 7, 9), (5, None)),
                                        ((1, 2, 16, 16), 4)])
def test_pooling_as_matrices_gives_pytorchs_adaptive_average(shape, out):
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(0))
    expected = F.adaptive_avg_pool2d(x, out)
    with exportable_adaptive_pooling():
        got = nn.AdaptiveAvgPool2d(out)(x)
    assert F.adaptive_avg_pool2d(x, out).shape == expected.shape  # put back afterwards
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)


def test_pyramid_pooling_of_a_16x16_map_exports_and_runs(tmp_path):
    """UPerHead's scales 3 and 6 on the 16x16 map of a 512 px crop: the exporter refuses the
    op, the matrix form exports and onnxruntime gives PyTorch's numbers."""
    class Pyramid(nn.Module):
        def forward(self, x):
            return torch.cat([F.adaptive_avg_pool2d(x, s).flatten(1) for s in (1, 2, 3, 6)], 1)

    x = torch.randn(1, 8, 16, 16, generator=torch.Generator().manual_seed(0))
    with pytest.raises(Exception, match="adaptive_avg_pool2d"):
        torch.onnx.export(Pyramid(), (x,), str(tmp_path / "plain.onnx"), dynamo=False,
                          opset_version=17)
    path = tmp_path / "pyramid.onnx"
    export_traced(Pyramid(), (x,), path, ["x"], ["y"])
    got = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(
        None, {"x": x.numpy()})[0]
    np.testing.assert_allclose(got, Pyramid()(x).numpy(), rtol=0, atol=1e-6)


def test_differences_never_pass_a_nan_or_a_shape_change():
    assert max_abs_difference(np.zeros((0, 4)), np.zeros((0, 4))) == 0.0
    assert max_abs_difference(np.ones(3), np.array([1.0, 1.5, 0.75])) == 0.5
    assert max_abs_difference(np.ones(3), np.ones(4)) == float("inf")
    assert max_abs_difference(np.array([1.0, np.nan]), np.ones(2)) == float("inf")
    assert not Difference("x", float("inf"), 1e9).ok
    assert Difference("x", 1e-5, 1e-5).ok


def test_require_names_every_output_beyond_its_tolerance():
    diffs = [Difference("boxes", 0.5, 0.1), Difference("scores", 1e-6, 1e-4),
             Difference("masks", 0.2, 1e-3)]
    with pytest.raises(OnnxMismatch, match=r"^f\.onnx: .* in boxes, masks: boxes 0\.5 "):
        require(diffs, "f.onnx")
    assert require(diffs[1:2], "f.onnx") == (
        "largest differences onnxruntime vs PyTorch: scores 1e-06 (tolerance 0.0001)")


def test_a_failed_check_leaves_no_file(tmp_path):
    target = tmp_path / "model.onnx"

    def check(path):
        assert path.is_file() and path != target
        raise OnnxMismatch("differs")

    with pytest.raises(OnnxMismatch):
        write_checked_onnx(target, lambda p: p.write_bytes(b"graph"), check)
    assert list(tmp_path.iterdir()) == []
    assert write_checked_onnx(target, lambda p: p.write_bytes(b"graph"), lambda p: "ok") == "ok"
    assert target.read_bytes() == b"graph"
