"""Multi-scale + flip test-time augmentation (TTA) for the UperNet evaluation (``--tta``).

The MAE ViT-B UperNet recipe reports 48.13 mIoU single-scale and 48.70 with multi-scale + flip
testing, measured with MMSeg 0.x's ``MultiScaleFlipAug(img_scale=(2048, 512), img_ratios=[0.5,
0.75, 1.0, 1.25, 1.5, 1.75], flip=True)`` around ``Resize(keep_ratio=True, min_size=512)`` and
slide inference (crop 512, stride 341). MMSeg 1.x has the machinery (``TestTimeAug`` in the
pipeline, ``SegTTAModel`` averaging the softmax of every augmentation, ``tools/test.py --tta``)
but its ADE20K ``tta_pipeline`` scales the *raw* image by each ratio, without the 2048x512 base
scale and without a minimum size, and its MAE "-ms" config tests a single scale. This module
restores the 0.x recipe on the 1.x machinery:

- ``ResizeToRatio``: one scale of the 0.x recipe. ``scale`` x ``ratio`` (``int`` of each side)
  is the keep-ratio target; with ``min_short`` the image's short side becomes
  ``max(short of that target, min_short)`` and its long side follows the aspect ratio, exactly as
  0.x's ``Resize(min_size=...)`` computed it (no long-side cap then). The minimum keeps every
  slide window a full crop: the BEiT relative-position tables of MMSeg's ``MAE`` backbone only
  take the crop's grid. With ``min_short=512`` on ADE20K (short sides 512), ratios 0.5 and 0.75
  give the same 512 px short side as 1.0: the twelve predictions per image are at short sides
  512 (three times), 640, 768 and 896, each with and without a horizontal flip.
- ``AveragedSegTTAModel``: MMSeg's ``SegTTAModel`` (its ``test_step`` runs the segmentor on each
  augmentation: slide inference at that scale, logits flipped back and resized to the original
  image), whose merged sample also keeps the averaged class probabilities as ``seg_logits`` and
  the image's own metainfo. MMSeg's merged sample carries the *last* augmentation's
  ``seg_logits`` and metainfo (the flipped largest scale), which any consumer of ``seg_logits``
  would misread; the prediction (argmax of the mean softmax) is MMSeg's.
- ``use_tta_pipeline`` / ``wrap_tta_model``: what MMSeg's ``tools/test.py --tta`` does to a config
  (the test set's pipeline becomes ``tta_pipeline``; the model becomes ``tta_model`` around it),
  with one-line errors; ``describe_tta`` says what was used (written into ``test_results.json``).
"""
from __future__ import annotations

import copy
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from mmcv.transforms import Resize
from mmengine.config import Config
from mmengine.logging import print_log
from mmengine.structures import PixelData

from mae_transfer.segmentation import compat

compat.setup()  # mmseg.models imports mmcv.ops, which needs mmcv._ext (a stand-in on mmcv-lite)
from mae_transfer.segmentation.data_checks import pipeline_steps  # noqa: E402
from mmseg.models.segmentors import SegTTAModel  # noqa: E402
from mmseg.registry import MODELS, TRANSFORMS  # noqa: E402
from mmseg.structures import SegDataSample  # noqa: E402

#: Metainfo of the image itself (not of one augmentation) kept on the merged prediction.
IMAGE_KEYS = ("img_path", "seg_map_path", "ori_shape", "reduce_zero_label")


@TRANSFORMS.register_module()
class ResizeToRatio(Resize):
    """Keep-ratio resize to ``scale`` x ``ratio``, the short side at least ``min_short``.

    Args:
        scale: the base (single-scale) target, ``(long, short)`` as in ``Resize(scale=(2048,
            512), keep_ratio=True)``; the image fits inside ``scale * ratio``.
        ratio: this augmentation's factor on ``scale`` (``int`` of each side, as 0.x did).
        min_short: if given, the short side is raised to at least this (0.x ``min_size``), and
            the long side then follows the image's aspect ratio, uncapped.
        interpolation, backend: ``mmcv.imrescale``'s (bilinear, cv2: 0.x's and ``Resize``'s).
    """

    def __init__(self, scale: Sequence[int], ratio: float = 1.0, min_short: Optional[int] = None,
                 interpolation: str = "bilinear", backend: str = "cv2") -> None:
        if len(scale) != 2 or ratio <= 0:
            raise ValueError(f"ResizeToRatio: scale must be (long, short) and ratio > 0, got "
                             f"scale={scale}, ratio={ratio}")
        super().__init__(scale=tuple(scale), keep_ratio=True, interpolation=interpolation,
                         backend=backend)
        self.ratio = float(ratio)
        self.min_short = min_short

    def target_scale(self, height: int, width: int) -> Tuple[float, float]:
        """What ``mmcv.imrescale`` is given for an image of this size: the box it fits into."""
        scaled = (int(self.scale[0] * self.ratio), int(self.scale[1] * self.ratio))
        if self.min_short is None:
            return scaled
        short = max(min(scaled), self.min_short)
        # the image's own aspect ratio at that short side: imrescale lands on it exactly
        return short * width / min(height, width), short * height / min(height, width)

    def transform(self, results: dict) -> dict:
        results["scale"] = self.target_scale(*results["img"].shape[:2])
        self._resize_img(results)
        self._resize_bboxes(results)
        self._resize_seg(results)
        self._resize_keypoints(results)
        return results

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(scale={self.scale}, ratio={self.ratio}, "
                f"min_short={self.min_short}, interpolation={self.interpolation})")


@MODELS.register_module()
class AveragedSegTTAModel(SegTTAModel):
    """``SegTTAModel`` whose merged samples keep the averaged probabilities (see module doc).

    Each merged ``SegDataSample`` holds ``pred_sem_seg`` (``1 x H x W``, the argmax of the mean
    softmax, or the thresholded mean sigmoid of a one-channel head: MMSeg's rule),
    ``seg_logits`` (the mean probabilities, ``C x H x W`` at the original size), ``gt_sem_seg``
    when loaded, the image's metainfo (``IMAGE_KEYS``) and ``tta_predictions`` (how many were
    averaged).
    """

    def merge_preds(self, data_samples_list: List[Sequence[SegDataSample]]
                    ) -> List[SegDataSample]:
        return [self.merge_one(list(augmented)) for augmented in data_samples_list]

    def merge_one(self, augmented: List[SegDataSample]) -> SegDataSample:
        """The merged prediction of one image from its augmentations' (flipped-back) logits."""
        one_channel = self.module.out_channels == 1
        total = None
        for sample in augmented:  # accumulated in place: one C x H x W map in memory, not N
            logits = sample.seg_logits.data
            probs = logits.sigmoid() if one_channel else logits.softmax(dim=0)
            total = probs if total is None else total.add_(probs)
        mean = total / len(augmented)
        if one_channel:
            pred = (mean > self.module.decode_head.threshold).to(torch.long)
        else:
            pred = mean.argmax(dim=0, keepdim=True)
        first = augmented[0]
        merged = SegDataSample(metainfo={k: first.metainfo[k] for k in IMAGE_KEYS
                                         if k in first.metainfo})
        merged.set_metainfo({"tta_predictions": len(augmented)})
        merged.seg_logits = PixelData(data=mean)
        merged.pred_sem_seg = PixelData(data=pred)
        if "gt_sem_seg" in first:
            merged.gt_sem_seg = first.gt_sem_seg
        return merged


def _tta_branches(pipeline) -> List[list]:
    """The ``TestTimeAug`` step's branch lists (one list of alternatives per stage)."""
    for step in pipeline_steps(pipeline):
        if step.get("type") == "TestTimeAug":
            return [list(stage) for stage in step.get("transforms", [])]
    return []


def describe_tta(cfg: Config) -> Dict:
    """What ``tta_pipeline`` / ``tta_model`` do, as plain JSON values (``test_results.json``).

    ``ratios``: each resize branch's ratio (``ResizeToRatio.ratio``, or ``Resize.scale_factor``
    as in MMSeg 1.x's pipelines); ``flip``: whether a flipped branch exists; ``predictions``:
    how many augmentations of each image are averaged.
    """
    branches = _tta_branches(cfg.get("tta_pipeline"))
    ratios, flip, scale, min_short, predictions = [], False, None, None, 1
    for stage in branches:
        predictions *= max(len(stage), 1)
        for step in stage:
            kind = step.get("type")
            if kind in ("ResizeToRatio", ResizeToRatio):
                ratios.append(float(step.get("ratio", 1.0)))
                scale, min_short = list(step["scale"]), step.get("min_short")
            elif kind == "Resize" and step.get("scale_factor") is not None:
                ratios.append(step["scale_factor"])
            elif kind == "RandomFlip" and step.get("prob", 0) == 1:
                flip = True
    model = (cfg.get("tta_model") or {}).get("type")
    return {"ratios": ratios, "flip": flip, "scale": scale, "min_short": min_short,
            "predictions": predictions, "model": getattr(model, "__name__", model)}


def _require_tta_keys(cfg: Config) -> None:
    missing = [k for k in ("tta_pipeline", "tta_model") if not cfg.get(k)]
    if missing:
        raise ValueError(f"--tta: the config {cfg.filename} defines no {' / '.join(missing)} "
                         f"(the configs in segmentation/configs/ define both)")
    if not _tta_branches(cfg.tta_pipeline):
        raise ValueError(f"--tta: tta_pipeline of {cfg.filename} has no TestTimeAug step")


def use_tta_pipeline(cfg: Config) -> None:
    """The test set reads ``tta_pipeline`` (MMSeg's ``tools/test.py --tta``); the validation set
    keeps its single-scale pipeline (the test loader is copied first: configs often name the
    same dict ``val_dataloader`` and ``test_dataloader``)."""
    _require_tta_keys(cfg)
    loader = copy.deepcopy(cfg.test_dataloader)
    loader.dataset.pipeline = copy.deepcopy(cfg.tta_pipeline)
    cfg.test_dataloader = loader
    info = describe_tta(cfg)
    test_cfg = cfg.model.get("test_cfg") or {}
    mode = test_cfg.get("mode", "whole")
    how = (f"slide inference (crop {tuple(test_cfg.get('crop_size', ()))}, stride "
           f"{tuple(test_cfg.get('stride', ()))}) at every scale" if mode == "slide"
           else f"{mode} inference at every scale")
    print_log(f"TTA: ratios {info['ratios']} of scale {info['scale']} (short side >= "
              f"{info['min_short']}), flip {info['flip']}: {info['predictions']} predictions per "
              f"image, softmax averaged ({info['model']}); {how}", logger="current")


def wrap_tta_model(cfg: Config) -> None:
    """``cfg.model`` becomes ``tta_model`` around the segmentor (MMSeg's ``tools/test.py``).

    Checkpoints still load: MMEngine's ``load_state_dict`` looks through a ``BaseTTAModel``.
    """
    _require_tta_keys(cfg)
    tta_model = copy.deepcopy(cfg.tta_model)
    tta_model["module"] = cfg.model
    cfg.model = tta_model
