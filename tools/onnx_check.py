"""What the detector and segmentor ONNX exports share: writing the file, running it, judging it.

An exported graph is only worth shipping if onnxruntime computes what PyTorch computes, so every
export is checked before it is published: ``write_checked_onnx`` traces the module into a
temporary file beside the target, hands that file to the caller's check, and renames it over the
target only when the check passes (``tools.atomic.atomic_write``): a file at the target's name has
always been checked, and a failed check leaves none.

The exporter is torch's TorchScript-based one (``torch.onnx.export(..., dynamo=False)``): it
traces the eager model at one input, which suits detectors whose Python code branches on sizes
(Detectron2's ``Instances``, per-level loops) as long as the input size is fixed, and it maps
torchvision's ``roi_align`` / ``nms`` to ONNX ``RoiAlign`` / ``NonMaxSuppression``. See
docs/deploy.md for why not the dynamo exporter.

A check compares named outputs (``Difference``): the largest absolute difference against a
tolerance; ``require`` raises ``OnnxMismatch`` (exit status 1 in ``tools/export_onnx.py``) naming
every output beyond its tolerance.
"""
from __future__ import annotations

import contextlib
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Dict, Iterable, List, Sequence

import numpy as np

if TYPE_CHECKING:
    import torch

#: The ONNX opset of every export: 16 is the first whose ``RoiAlign`` has
#: ``coordinate_transformation_mode=half_pixel`` (Detectron2's ``aligned=True``); 17 adds
#: ``LayerNormalization`` as one op.
OPSET = 17


class OnnxMismatch(RuntimeError):
    """The ONNX file does not reproduce PyTorch (or cannot be run at all)."""


@dataclass
class Difference:
    """Largest absolute difference of one output between onnxruntime and PyTorch."""

    name: str
    max_abs: float
    tolerance: float

    @property
    def ok(self) -> bool:
        return bool(np.isfinite(self.max_abs)) and self.max_abs <= self.tolerance

    def __str__(self) -> str:
        return f"{self.name} {self.max_abs:.3g} (tolerance {self.tolerance:.3g})"


def max_abs_difference(got: np.ndarray, ref: np.ndarray) -> float:
    """``max |got - ref|`` (0 for empty arrays); infinite when the shapes differ or a value is
    not finite in one of them only (NaN never passes, nor compares as small)."""
    got, ref = np.asarray(got, dtype=np.float64), np.asarray(ref, dtype=np.float64)
    if got.shape != ref.shape:
        return float("inf")
    if not got.size:
        return 0.0
    diff = np.abs(got - ref)
    return float(diff.max()) if np.isfinite(diff).all() else float("inf")


def require(differences: Sequence[Difference], what: str) -> str:
    """One line listing every difference; ``OnnxMismatch`` when any is beyond its tolerance."""
    line = ", ".join(str(d) for d in differences)
    bad = [d.name for d in differences if not d.ok]
    if bad:
        raise OnnxMismatch(f"{what}: onnxruntime differs from PyTorch beyond the tolerance in "
                           f"{', '.join(bad)}: {line}")
    return f"largest differences onnxruntime vs PyTorch: {line}"


def session(path: str | os.PathLike):
    """An onnxruntime CPU session for ``path``; ``OnnxMismatch`` naming the file if it cannot
    be loaded (a truncated or corrupted file)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3  # errors only: its shape-inference notes are no news
    try:
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own exception types
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise OnnxMismatch(f"onnxruntime cannot load {path}: {first}") from None


def run(sess, feeds: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
    """Outputs by name; ``OnnxMismatch`` when the graph fails on these inputs."""
    try:
        outputs = sess.run(None, feeds)
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise OnnxMismatch(f"onnxruntime cannot run the graph: {first}") from None
    return {o.name: value for o, value in zip(sess.get_outputs(), outputs)}


@contextlib.contextmanager
def quiet_tracing():
    """Silence the tracer's warnings: each says a Python value is frozen into the graph, which
    is what a fixed-size export means (the ones that matter are listed in docs/deploy.md and
    covered by checking a second input)."""
    import torch

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", category=UserWarning)
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", category=FutureWarning)  # torch.jit.script (torchvision)
        yield


def _bins(size: int, out: int, like: torch.Tensor) -> torch.Tensor:
    """``(out, size)`` averaging matrix of adaptive pooling: row i averages the inputs
    ``floor(i * size / out)`` to ``ceil((i + 1) * size / out)``, PyTorch's bins. Built in numpy,
    so that a trace records one constant (in-place writes into a tensor would be traced ops)."""
    import torch

    matrix = np.zeros((out, size), dtype=np.float64)
    for i in range(out):
        start, end = (i * size) // out, -(-((i + 1) * size) // out)
        matrix[i, start:end] = 1.0 / (end - start)
    return torch.tensor(matrix, dtype=like.dtype, device=like.device)


@contextlib.contextmanager
def exportable_adaptive_pooling():
    """Within it, ``F.adaptive_avg_pool2d`` to a size that does not divide the input (UPerHead's
    pyramid pooling: scales 3 and 6 of a 16x16 map at 512 px) is two matrix products with
    constant bin matrices, which ONNX has; the TorchScript exporter refuses the op there. The
    same averages, summed in another order; divisible sizes keep the op."""
    import torch.nn.functional as F

    original = F.adaptive_avg_pool2d

    def pool(input, output_size):
        height, width = input.shape[-2:]
        out = (output_size, output_size) if isinstance(output_size, int) else output_size
        out_h = height if out[0] is None else int(out[0])
        out_w = width if out[1] is None else int(out[1])
        if height % out_h == 0 and width % out_w == 0:
            return original(input, output_size)
        return _bins(height, out_h, input) @ input @ _bins(width, out_w, input).T

    F.adaptive_avg_pool2d = pool
    try:
        yield
    finally:
        F.adaptive_avg_pool2d = original


def export_traced(module, args: tuple, path: str | os.PathLike, input_names: List[str],
                  output_names: List[str], opset: int = OPSET,
                  output_axes: Dict[str, Dict[int, str]] | None = None,
                  fold_constants: bool = True) -> None:
    """``torch.onnx.export`` of ``module(*args)`` at fixed input shapes (TorchScript tracer).

    ``output_axes`` names the data-dependent output dimensions (e.g. ``{"boxes": {0:
    "detections"}}``); the inputs' shapes are fixed. ``fold_constants=False`` keeps what is
    computed from weights alone as graph ops (onnxruntime folds them when it loads the file):
    folded, BEiT's relative-position bias becomes one ``heads x N x N`` tensor per block, half
    the file of a ViT-B UperNet.
    """
    import torch

    module.eval()
    with torch.no_grad(), quiet_tracing(), exportable_adaptive_pooling():
        torch.onnx.export(module, args, str(path), input_names=input_names,
                          output_names=output_names, opset_version=opset, dynamo=False,
                          do_constant_folding=fold_constants,
                          dynamic_axes=output_axes or None)


def write_checked_onnx(path: str | os.PathLike, export: Callable[[Path], None],
                       check: Callable[[Path], str]) -> str:
    """``export(tmp)`` then ``check(tmp)`` (returns its report line), then ``tmp`` -> ``path``.

    A failed check raises and no file is left at ``path`` (nor beside it).
    """
    from mae_transfer.tools.atomic import atomic_write

    report: List[str] = []

    def write(tmp: Path) -> None:
        export(tmp)
        report.append(check(tmp))

    atomic_write(path, write)
    return report[0]


def first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def describe_outputs(path: str | os.PathLike) -> Iterable[str]:
    """``name dtype shape`` of each input and output of an ONNX file (for the docs and logs)."""
    sess = session(path)
    for kind, values in (("input", sess.get_inputs()), ("output", sess.get_outputs())):
        for v in values:
            yield f"{kind} {v.name} {v.type} {v.shape}"
