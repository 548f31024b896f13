"""A trained ViTDet Mask R-CNN as one ONNX graph at its fixed square input, checked against PyTorch.

ViTDet pads every test image to one square (``model.backbone.square_pad``, 1024 for the COCO
recipes; ``detection.rcnn.ViTDetRCNN``), so the ViT, its window partition, position embedding and
relative-position tables always see the same grid: at that fixed size every shape the ViT
computes with is a constant, and the tracer records it as such (no ``get_abs_pos`` or window
padding with dynamic shapes). What stays dynamic is data-dependent: how many proposals survive
the RPN's NMS and how many detections the box head keeps; those are ONNX ``NonZero`` /
``NonMaxSuppression`` / ``TopK`` outputs, not numbers frozen at export time.

``ExportableDetector`` is the graph: inputs ``image`` (float32 ``1x3xSxS``, pixel values 0-255 in
the model's ``input_format``, the resized image at the top left, anything in the rest) and
``image_size`` (int64 ``[height, width]`` of the resized image inside the square); it normalises
with the model's pixel mean / std and zeroes everything outside ``image_size`` (ViTDet's padding,
after normalisation), then runs the backbone, the RPN and the ROI heads exactly as
``GeneralizedRCNN.inference(..., do_postprocess=False)`` does. Outputs: ``boxes`` (float32
``Nx4``, XYXY in the resized image's pixels, clipped to ``image_size``), ``scores`` (float32
``N``), ``classes`` (int64 ``N``) and, with a mask head, ``masks`` (float32 ``Nx1xMxM``, the
per-box mask probabilities of the predicted class, M = 28 for the ViTDet head; pasting them into
the image stays in Python). docs/deploy.md lists the preprocessing a caller does.

``check_detector`` runs a file with onnxruntime and the model in PyTorch (``model.inference`` on
the unpadded image: Detectron2's own preprocessing and ``ViTDetRCNN``'s square padding) on the
same image and compares the detections after matching them one to one.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple
from unittest import mock

import numpy as np
import torch
import torch.nn as nn

from mae_transfer.detection import compat

compat.setup()  # Detectron2 v0.6 cannot be imported without it (no compiled _C, Image.LINEAR)
import detectron2.data.transforms as T  # noqa: E402
from detectron2.config import instantiate  # noqa: E402
from detectron2.structures import ImageList  # noqa: E402

from mae_transfer.backbones.checkpoint_reader import read_weights  # noqa: E402
from mae_transfer.detection.checkpointing import load_detector_weights  # noqa: E402
from mae_transfer.detection.cli import UsageError  # noqa: E402
from mae_transfer.detection.config_overrides import load_config  # noqa: E402
from mae_transfer.tools.checkpoints import CheckpointError  # noqa: E402
from mae_transfer.tools.onnx_check import (Difference, OnnxMismatch, export_traced,  # noqa: E402
                                           max_abs_difference, require, run, session)

INPUT_NAMES = ["image", "image_size"]
#: Tolerances of the check (see docs/deploy.md for why): box coordinates in units of the square's
#: side, scores and mask probabilities absolute.
BOX_TOLERANCE = 1e-4
SCORE_TOLERANCE = 1e-4
MASK_TOLERANCE = 1e-3

#: Detectron2 modules whose ``len(instances)`` must stay a traced value (their detection counts
#: split the batch's mask predictions): ``len`` turns it into a Python int, frozen at export time.
_LEN_USERS = ("detectron2.modeling.roi_heads.fast_rcnn", "detectron2.modeling.roi_heads.mask_head",
              "detectron2.modeling.roi_heads.cascade_rcnn")
#: Detectron2 modules that call ``detectron2.layers.batched_nms``.
_NMS_USERS = ("detectron2.modeling.proposal_generator.proposal_utils",
              "detectron2.modeling.roi_heads.fast_rcnn")


def _one_nms(boxes: torch.Tensor, scores: torch.Tensor, idxs: torch.Tensor, iou_threshold: float):
    """torchvision's ``batched_nms``: one ``NonMaxSuppression`` over class-offset boxes when
    traced. Detectron2's own switches, from 40,000 candidate boxes on, to a Python loop over the
    classes present in the traced image, which a trace would freeze into the graph."""
    from torchvision.ops import batched_nms

    return batched_nms(boxes.float(), scores, idxs, iou_threshold)


@contextlib.contextmanager
def traceable_detectron2():
    """Within it, Detectron2's inference keeps its data-dependent sizes traced: ``len(x)`` in
    ``_LEN_USERS`` returns ``x.__len__()`` as is (a traced size, as Detectron2's own
    ``patch_builtin_len`` does for its TracingAdapter), and NMS never takes the per-class loop.
    Both give the results of the unpatched code: only what the tracer records changes."""
    with contextlib.ExitStack() as stack:
        for module in _LEN_USERS:
            stack.enter_context(mock.patch(f"{module}.len", create=True,
                                           side_effect=lambda obj: obj.__len__()))
        for module in _NMS_USERS:
            stack.enter_context(mock.patch(f"{module}.batched_nms", _one_nms))
        yield


def square_side(model) -> int:
    """The fixed input side: the backbone's ``square_size`` (``square_pad`` in the configs)."""
    side = int((getattr(model.backbone, "padding_constraints", None) or {}).get("square_size", 0))
    if side <= 0:
        raise UsageError("the config's backbone pads to no fixed square (model.backbone."
                         "square_pad is 0): ONNX export needs ViTDet's fixed square input")
    return side


def output_names(model) -> List[str]:
    names = ["boxes", "scores", "classes"]
    return names + ["masks"] if getattr(model.roi_heads, "mask_on", False) else names


class ExportableDetector(nn.Module):
    """``(image, image_size)`` -> ``boxes, scores, classes[, masks]``; see the module docstring."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self.side = square_side(model)
        self.with_masks = "masks" in output_names(model)

    def forward(self, image: torch.Tensor, image_size: torch.Tensor):
        model = self.model
        height, width = image_size[0], image_size[1]
        x = (image - model.pixel_mean) / model.pixel_std
        rows = torch.arange(self.side, device=x.device) < height
        cols = torch.arange(self.side, device=x.device) < width
        x = torch.where(rows[:, None] & cols[None, :], x, torch.zeros_like(x))
        images = ImageList(x, [(height, width)])
        features = model.backbone(x)
        proposals, _ = model.proposal_generator(images, features, None)
        instances, _ = model.roi_heads(images, features, proposals, None)
        found = instances[0]
        outputs = (found.pred_boxes.tensor, found.scores, found.pred_classes)
        return outputs + (found.pred_masks,) if self.with_masks else outputs


# ------------------------------------------------------------------------------ model and input
def load_detector(config: str, checkpoint: str, overrides: Sequence[str] = ()):
    """``(cfg, model)``: the config's detector in eval mode with every weight from ``checkpoint``
    (a ``model_final.pth`` of ``tools/train_det.py`` or any whole-detector state dict)."""
    if not Path(config).is_file():
        raise FileNotFoundError(f"no config file {config}")
    if not Path(checkpoint).is_file():
        raise FileNotFoundError(f"no checkpoint file {checkpoint}")
    cfg = load_config(config, overrides)
    if "model" not in cfg or "roi_heads" not in cfg.model:
        raise UsageError(f"{config} is no Detectron2 detector config (no model.roi_heads)")
    model = instantiate(cfg.model).eval()
    weights = read_weights(checkpoint)
    if not weights.whole_detector:
        raise CheckpointError(f"checkpoint {checkpoint} is no whole detector (no roi_heads.* "
                              f"weights): export a model_final.pth of tools/train_det.py")
    report = load_detector_weights(model, weights)
    if report.missing_keys:
        raise CheckpointError(f"checkpoint {checkpoint} lacks {len(report.missing_keys)} weights "
                              f"of the config's model (e.g. {report.missing_keys[0]}): give the "
                              f"config it was trained with")
    return cfg, model


@dataclass
class DetectorInput:
    """One image as the exported graph takes it, and as Detectron2's ``model.inference`` does."""

    image: np.ndarray  # float32 (1, 3, S, S)
    image_size: np.ndarray  # int64 (2,): height, width of the resized image
    content: torch.Tensor  # (3, h, w) uint8, the resized image: Detectron2's "image" input

    def feeds(self) -> Dict[str, np.ndarray]:
        return {"image": self.image, "image_size": self.image_size}


def prepare_input(cfg, rgb: np.ndarray, side: int) -> DetectorInput:
    """Resize ``rgb`` (HxWx3 uint8) as the config's test loader does, in the model's channel
    order, at the top left of a ``side`` square of zeros."""
    aug = T.AugInput(rgb)
    T.AugmentationList(instantiate(cfg.dataloader.test.mapper.augmentations))(aug)
    image = aug.image if cfg.model.input_format == "RGB" else aug.image[:, :, ::-1]
    height, width = image.shape[:2]
    if height > side or width > side:
        raise UsageError(f"the test resize gives {height}x{width}, larger than the model's "
                         f"{side}x{side} square")
    content = torch.as_tensor(np.ascontiguousarray(image.transpose(2, 0, 1)))
    square = np.zeros((1, 3, side, side), dtype=np.float32)
    square[0, :, :height, :width] = content.numpy()
    return DetectorInput(square, np.array([height, width], dtype=np.int64), content)


def export_detector(model, example: DetectorInput, path) -> None:
    """Trace ``ExportableDetector(model)`` at ``example`` into the ONNX file ``path``."""
    wrapper = ExportableDetector(model).eval()
    args = (torch.from_numpy(example.image), torch.from_numpy(example.image_size))
    names = output_names(model)
    with traceable_detectron2():
        export_traced(wrapper, args, path, INPUT_NAMES, names,
                      output_axes={name: {0: "detections"} for name in names})


# --------------------------------------------------------------------------------------- check
@torch.no_grad()
def pytorch_detections(model, example: DetectorInput) -> Dict[str, np.ndarray]:
    """The model's own inference (its preprocessing and square padding), before resizing to the
    original image or pasting masks: the same quantities the graph outputs."""
    found = model.inference([{"image": example.content}], do_postprocess=False)[0]
    out = {"boxes": found.pred_boxes.tensor, "scores": found.scores,
           "classes": found.pred_classes}
    if found.has("pred_masks"):
        out["masks"] = found.pred_masks
    return {k: v.cpu().numpy() for k, v in out.items()}


def match_detections(ref: Dict[str, np.ndarray], got: Dict[str, np.ndarray], side: int
                     ) -> Optional[np.ndarray]:
    """For each reference detection, the index of the same-class onnxruntime one closest to it
    (boxes relative to ``side`` plus score), one to one; None when some cannot be paired.

    Detections of equal score may come out in either order, so they are paired, not zipped.
    """
    n = len(ref["scores"])
    if len(got["scores"]) != n:
        return None
    cost = (np.abs(ref["boxes"][:, None] - got["boxes"][None]).max(-1) / side
            + np.abs(ref["scores"][:, None] - got["scores"][None]))
    cost[ref["classes"][:, None] != got["classes"][None]] = np.inf
    order = np.full(n, -1)
    taken = np.zeros(n, dtype=bool)
    for i in np.argsort(cost.min(1) if n else []):  # the surest pairs first
        row = np.where(taken, np.inf, cost[i])
        j = int(np.argmin(row))
        if not np.isfinite(row[j]):
            return None
        order[i], taken[j] = j, True
    return order


def detection_differences(ref: Dict[str, np.ndarray], got: Dict[str, np.ndarray], side: int
                          ) -> List[Difference]:
    """Unpaired detections, boxes, scores, masks of onnxruntime vs PyTorch after
    ``match_detections`` (an unequal count or a class without a partner: no further numbers)."""
    order = match_detections(ref, got, side)
    unpaired = 0 if order is not None else max(abs(len(ref["scores"]) - len(got["scores"])), 1)
    diffs = [Difference("unpaired detections", float(unpaired), 0.0)]
    if order is None:
        return diffs
    pairs = {k: v[order] for k, v in got.items()}
    diffs.append(Difference("boxes (pixels)", max_abs_difference(pairs["boxes"], ref["boxes"]),
                            BOX_TOLERANCE * side))
    diffs.append(Difference("scores", max_abs_difference(pairs["scores"], ref["scores"]),
                            SCORE_TOLERANCE))
    if "masks" in ref:
        diffs.append(Difference("mask probabilities",
                                max_abs_difference(pairs["masks"], ref["masks"]), MASK_TOLERANCE))
    return diffs


def check_detector(path, model, examples: Sequence[DetectorInput]) -> str:
    """Run ``path`` on each example with onnxruntime and compare with PyTorch; the report line
    (the largest difference of each output over the examples), or ``OnnxMismatch``."""
    sess = session(path)
    side = square_side(model)
    worst: Dict[str, Difference] = {}
    counts: Dict[str, List[int]] = {"PyTorch": [], "onnxruntime": []}
    for example in examples:
        ref = pytorch_detections(model, example)
        got = run(sess, example.feeds())
        if set(got) != set(ref):
            raise OnnxMismatch(f"{path} outputs {sorted(got)}, the model {sorted(ref)}")
        counts["PyTorch"].append(len(ref["scores"]))
        counts["onnxruntime"].append(len(got["scores"]))
        for d in detection_differences(ref, got, side):
            if d.name not in worst or d.max_abs > worst[d.name].max_abs:
                worst[d.name] = d
    per_image = ", ".join(f"{k} {v}" for k, v in counts.items())
    line = require(list(worst.values()), f"{path} (detections per image: {per_image})")
    return f"{line}; detections per image: {per_image}"


def second_input(example: DetectorInput, side: int) -> DetectorInput:
    """The example flipped left-right and cropped to 3/4 of its height: other detections, and
    another ``image_size``, so that a number frozen at export time shows up as a difference."""
    content = example.content.flip(-1)
    content = content[:, : max(1, content.shape[1] * 3 // 4)].contiguous()
    height, width = content.shape[1:]
    square = np.zeros((1, 3, side, side), dtype=np.float32)
    square[0, :, :height, :width] = content.numpy()
    return DetectorInput(square, np.array([height, width], dtype=np.int64), content)


def example_inputs(cfg, model, rgb: np.ndarray) -> Tuple[DetectorInput, DetectorInput]:
    side = square_side(model)
    first = prepare_input(cfg, rgb, side)
    return first, second_input(first, side)
