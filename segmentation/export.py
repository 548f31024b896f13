"""A trained UperNet segmentor's forward on one fixed-size input as ONNX, checked against PyTorch.

What is exported is ``EncoderDecoder.encode_decode`` on one ``H x W`` input (the ViT, the
multi-scale adapter, UPerHead, and the bilinear resize of the logits back to ``H x W``) with the
data preprocessor's normalisation in front. For the ADE20K configs (``test_cfg.mode='slide'``)
that is one sliding-window crop (``test_cfg.crop_size``, 512x512): MMSeg runs exactly this on each
crop and averages the overlaps, so the slide loop, the test-time resize of the whole image and the
resize of the logits back to the original image stay with the caller (docs/deploy.md). For a
``whole``-mode config the size is given (``--size``) and the image resized to it.

The ViT sees one grid at that size, so the position embedding and the BEiT relative-position
index are constants of the graph, as the window partition is.

``ExportableSegmentor``: input ``image`` (float32 ``1x3xHxW``, RGB pixel values 0-255); outputs
``logits`` (float32 ``1xCxHxW``, before softmax) and ``labels`` (int64 ``1xHxW``: the argmax, or
for a one-channel sigmoid head the threshold, as MMSeg's ``postprocess_result``).
``check_segmentor`` compares a file with MMSeg's own inference on the same pixels
(``data_preprocessor`` from a BGR image as ``LoadImageFromFile`` gives it, then
``model.inference``).
"""
from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn as nn
from PIL import Image

from mae_transfer.tools.onnx_check import (Difference, OnnxMismatch, export_traced,
                                           max_abs_difference, require, run, session)

INPUT_NAMES = ["image"]
OUTPUT_NAMES = ["logits", "labels"]
#: Tolerance of the logits, relative to the largest logit magnitude (see docs/deploy.md).
LOGIT_TOLERANCE = 1e-4


def check_config(path: str) -> None:
    """A one-line ``ValueError`` unless ``path`` is an MMSeg config with a decode head (a
    Detectron2 LazyConfig, say, would otherwise fail deep inside MMEngine's parser)."""
    from mmengine.config import Config

    if not Path(path).is_file():
        raise FileNotFoundError(f"no config file {path}")
    try:
        cfg = Config.fromfile(path)
    except Exception as exc:  # MMEngine's parser executes the file: any error may come out
        text = str(exc).strip()
        raise ValueError(f"{path} is no MMSeg config: cannot parse it "
                         f"({text.splitlines()[0] if text else type(exc).__name__})") from None
    model = cfg.get("model")
    if not isinstance(model, dict) or "decode_head" not in model:
        raise ValueError(f"{path} is no MMSeg segmentor config (no model.decode_head)")


def export_size(model, size: Optional[Sequence[int]] = None) -> Tuple[int, int]:
    """``(H, W)`` of the exported input: ``size`` if given, else the slide-mode crop (a larger
    size in slide mode would be several windows in MMSeg, one forward in the graph: refused)."""
    test_cfg = getattr(model, "test_cfg", None) or {}
    slide = test_cfg.get("mode", "whole") == "slide" and test_cfg.get("crop_size")
    if size is not None:
        height, width = (int(size[0]), int(size[-1]))
        if slide and (height > test_cfg["crop_size"][0] or width > test_cfg["crop_size"][1]):
            raise ValueError(f"export size {height}x{width} is larger than the slide window "
                             f"{tuple(test_cfg['crop_size'])} the config tests with: export "
                             f"the window (no --size) and slide it in Python")
    elif slide:
        height, width = (int(s) for s in test_cfg["crop_size"])
    else:
        raise ValueError("the config tests on whole images of varying size: give the "
                         "exported input size with --size H W")
    patch = getattr(model.backbone, "patch_size", (1, 1))
    if height <= 0 or width <= 0 or height % patch[0] or width % patch[1]:
        raise ValueError(f"export size {height}x{width} is not a positive multiple of the ViT's "
                         f"{patch[0]}x{patch[1]} patches")
    return height, width


class ExportableSegmentor(nn.Module):
    """``image`` (RGB 0-255) -> ``logits``, ``labels``; see the module docstring."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        pre = model.data_preprocessor
        # The network takes what the preprocessor makes of a BGR image (LoadImageFromFile): RGB
        # when it converts (bgr_to_rgb=True, the configs here), else BGR.
        self.network_takes_bgr = not bool(getattr(pre, "channel_conversion", False))
        self.normalize = bool(getattr(pre, "_enable_normalize", False))

    def forward(self, image: torch.Tensor):
        x = image[:, [2, 1, 0]] if self.network_takes_bgr else image
        if self.normalize:
            x = (x - self.model.data_preprocessor.mean) / self.model.data_preprocessor.std
        height, width = x.shape[-2:]
        meta = dict(img_shape=(height, width), pad_shape=(height, width),
                    ori_shape=(height, width))
        logits = self.model.encode_decode(x, [meta])
        return logits, labels_of(self.model, logits)


def labels_of(model, logits: torch.Tensor) -> torch.Tensor:
    """Per-pixel classes as MMSeg's ``postprocess_result`` makes them from logits."""
    if logits.shape[1] > 1:
        return logits.argmax(dim=1)
    threshold = float(getattr(model.decode_head, "threshold", 0.3))
    return (logits.sigmoid() > threshold).long()[:, 0]


def prepare_input(rgb: np.ndarray, size: Tuple[int, int]) -> np.ndarray:
    """``rgb`` (HxWx3 uint8) resized (bilinear) to ``size``: the graph's float32 ``1x3xHxW``."""
    height, width = size
    resized = np.asarray(Image.fromarray(rgb).resize((width, height), Image.BILINEAR))
    return np.ascontiguousarray(resized.transpose(2, 0, 1)[None].astype(np.float32))


def export_segmentor(model, example: np.ndarray, path) -> None:
    """Trace ``ExportableSegmentor(model)`` at ``example`` (``1x3xHxW``) into ``path``."""
    export_traced(ExportableSegmentor(model).eval(), (torch.from_numpy(example),), path,
                  INPUT_NAMES, OUTPUT_NAMES, fold_constants=False)


@torch.no_grad()
def pytorch_logits(model, example: np.ndarray) -> Dict[str, np.ndarray]:
    """MMSeg's own test path on the pixels of ``example``: the data preprocessor given the BGR
    uint8 image a pipeline loads, then ``model.inference`` (whole, or slide with one crop)."""
    from mmseg.structures import SegDataSample

    bgr = torch.from_numpy(example[0, ::-1].round().astype(np.uint8).copy())
    height, width = bgr.shape[-2:]
    sample = SegDataSample(metainfo=dict(img_shape=(height, width), ori_shape=(height, width),
                                         pad_shape=(height, width)))
    data = model.data_preprocessor({"inputs": [bgr], "data_samples": [sample]}, False)
    metas = [s.metainfo for s in data["data_samples"]]
    logits = model.inference(data["inputs"], metas)
    return {"logits": logits.cpu().numpy(), "labels": labels_of(model, logits).cpu().numpy()}


def label_disagreement(ref: Dict[str, np.ndarray], got: Dict[str, np.ndarray],
                       tolerance: float) -> float:
    """Pixels whose labels differ although PyTorch's best class leads by more than twice the
    logit tolerance (a near tie may go either way and is not counted)."""
    if got["labels"].shape != ref["labels"].shape:
        return float("inf")
    differ = got["labels"] != ref["labels"]
    logits = ref["logits"]
    if logits.shape[1] > 1:
        top2 = np.sort(logits, axis=1)[:, -2:]
        clear = (top2[:, 1] - top2[:, 0]) > 2 * tolerance
    else:
        clear = np.ones_like(differ)
    return float((differ & clear).sum())


def segmentation_differences(ref: Dict[str, np.ndarray], got: Dict[str, np.ndarray]
                             ) -> List[Difference]:
    tolerance = LOGIT_TOLERANCE * max(1.0, float(np.abs(ref["logits"]).max()))
    return [Difference("logits", max_abs_difference(got["logits"], ref["logits"]), tolerance),
            Difference("clearly different labels (pixels)",
                       label_disagreement(ref, got, tolerance), 0.0)]


def check_segmentor(path, model, examples: Sequence[np.ndarray]) -> str:
    """Run ``path`` on each example with onnxruntime and compare with PyTorch; the report line
    (the largest difference of each output over the examples), or ``OnnxMismatch``."""
    sess = session(path)
    worst: Dict[str, Difference] = {}
    for example in examples:
        ref = pytorch_logits(model, example)
        got = run(sess, {"image": example})
        if set(got) != set(OUTPUT_NAMES):
            raise OnnxMismatch(f"{path} outputs {sorted(got)}, expected {OUTPUT_NAMES}")
        for d in segmentation_differences(ref, got):
            if d.name not in worst or d.max_abs > worst[d.name].max_abs:
                worst[d.name] = d
    return require(list(worst.values()), str(path))


def example_inputs(rgb: np.ndarray, size: Tuple[int, int]) -> Tuple[np.ndarray, np.ndarray]:
    """The user's image at ``size``, and it flipped upside down (another input, so a value
    frozen at export time would show)."""
    first = prepare_input(rgb, size)
    return first, np.ascontiguousarray(first[:, :, ::-1])
