"""Segmentation data mistakes reported by file name, before the run where cheap, else at load time.

Why: MMSeg reads images and label maps inside the training loop, so a bad file crashed minutes
into a run with a traceback naming no file (a shape mismatch in a crop, ``NoneType`` for an
unreadable JPEG, an ``IndexError`` deep in the loss for a class id past the heads), and a 16-bit
label PNG was silently read modulo 256 (``LoadAnnotations`` casts to uint8: class 300 became 44).

- Before the first iteration (``check_pairs``, called by ``ADELayoutDataset`` when it lists its
  files): every image and label map is opened with PIL, which reads only the header: an
  unreadable or zero-byte file, a label map that is a colour image (RGB: one class id a pixel is
  required), and a label map whose size differs from its image's are one ``SegDataError`` line
  naming the file(s).
- At load time (``CheckedLoadImageFromFile``, ``CheckedLoadAnnotations``, which
  ``use_checked_loaders`` puts in place of MMSeg's loaders in a config's pipelines): a file that
  does not decode; label values read as stored (8 or 16 bit), then ``reduce_zero_label`` /
  ``label_map`` as MMSeg applies them, and a value that is neither a class of the config
  (``0..num_classes-1`` after the reduction) nor ``ignore_index`` is refused, naming the file.
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Iterable, Iterator, List, Mapping, Optional, Tuple

import numpy as np
from PIL import Image

from mae_transfer.segmentation import compat

compat.setup()  # mmseg.datasets imports mmcv.ops, which needs mmcv._ext (a stand-in on mmcv-lite)
from mmcv.transforms import LoadImageFromFile  # noqa: E402
from mmseg.datasets.transforms import LoadAnnotations  # noqa: E402
from mmseg.registry import TRANSFORMS  # noqa: E402

#: PIL modes of a label map: one integer a pixel (8-bit grey, palette indices, 16/32-bit grey).
LABEL_MODES = {"L", "P", "I;16", "I;16B", "I;16L", "I"}
#: MMSeg's loaders and the checked ones that replace them (same arguments).
CHECKED_LOADERS = {"LoadImageFromFile": "CheckedLoadImageFromFile",
                   "LoadAnnotations": "CheckedLoadAnnotations"}


class SegDataError(ValueError):
    """A data file that cannot train: one line naming it."""


def image_header(path: str) -> Tuple[Tuple[int, int], str]:
    """``((width, height), PIL mode)`` from the file's header only (no pixel decoding)."""
    try:
        with Image.open(path) as im:
            return im.size, im.mode
    except FileNotFoundError:
        raise SegDataError(f"{path}: no such file") from None
    except (OSError, ValueError, SyntaxError) as exc:  # zero-byte, truncated, not an image
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise SegDataError(f"{path}: not a readable image ({reason})") from None


def check_pair(img_path: str, seg_map_path: Optional[str]) -> None:
    """Both files readable; the label map one class id a pixel, and as large as its image."""
    size, _ = image_header(img_path)
    if not seg_map_path:
        return
    seg_size, mode = image_header(seg_map_path)
    if mode not in LABEL_MODES:
        raise SegDataError(f"label map {seg_map_path} is a {mode} colour image; a label map holds "
                           f"one class id a pixel (8- or 16-bit grey PNG)")
    if seg_size != size:
        raise SegDataError(f"label map {seg_map_path} is {seg_size[0]}x{seg_size[1]} but its "
                           f"image {img_path} is {size[0]}x{size[1]}")


def check_pairs(data_list: Iterable[Mapping], workers: int = 8) -> None:
    """``check_pair`` for every ``{img_path, seg_map_path}`` of a dataset (header reads, threaded:
    about 1 ms a file, I/O-bound); raises on the first bad one in listing order."""
    pairs = [(d["img_path"], d.get("seg_map_path")) for d in data_list]
    with ThreadPoolExecutor(max_workers=workers) as pool:
        list(pool.map(lambda pair: check_pair(*pair), pairs))  # re-raises the first failure


@TRANSFORMS.register_module()
class CheckedLoadImageFromFile(LoadImageFromFile):
    """MMCV's ``LoadImageFromFile``; a file that does not decode is one line naming it."""

    def transform(self, results: dict) -> Optional[dict]:
        try:
            return super().transform(results)
        except Exception as exc:  # cv2 / PIL errors, or MMCV's "failed to load image" assert
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise SegDataError(f"cannot decode image {results.get('img_path')}: {reason}") from None


@TRANSFORMS.register_module()
class CheckedLoadAnnotations(LoadAnnotations):
    """MMSeg's ``LoadAnnotations`` reading labels as stored (16-bit too) and checking their values.

    ``num_classes``: the classes the heads predict (None: values unchecked); ``ignore_index``:
    the label the loss ignores (MMSeg's 255).
    """

    def __init__(self, num_classes: Optional[int] = None, ignore_index: int = 255, **kwargs):
        super().__init__(**kwargs)
        self.num_classes = num_classes
        self.ignore_index = ignore_index

    def _load_seg_map(self, results: dict) -> None:
        import mmcv
        from mmengine import fileio

        path = results["seg_map_path"]
        try:
            raw = mmcv.imfrombytes(fileio.get(path, backend_args=self.backend_args),
                                   flag="unchanged", backend=self.imdecode_backend)
        except Exception as exc:
            raise SegDataError(f"cannot decode label map {path}: {exc}") from None
        if raw is None:
            raise SegDataError(f"cannot decode label map {path}")
        if raw.ndim == 3 and raw.shape[2] == 1:
            raw = raw[..., 0]
        if raw.ndim != 2:
            raise SegDataError(f"label map {path} has {raw.shape[-1]} channels (a colour image); "
                               f"a label map holds one class id a pixel (8- or 16-bit grey PNG)")
        shape = results.get("ori_shape")
        if shape is not None and tuple(raw.shape) != tuple(shape[:2]):
            raise SegDataError(f"label map {path} is {raw.shape[1]}x{raw.shape[0]} but its image "
                               f"{results.get('img_path')} is {shape[1]}x{shape[0]}")
        reduce = results.get("reduce_zero_label", False) if self.reduce_zero_label is None \
            else self.reduce_zero_label
        labels = self._apply_mmseg_mapping(raw.astype(np.int64), reduce, results.get("label_map"))
        self._check_values(path, raw, labels, reduce)
        # uint8 where the values fit (as MMSeg's), else int32 (cv2 resizes both)
        dtype = np.uint8 if labels.max(initial=0) <= 255 else np.int32
        results["gt_seg_map"] = labels.astype(dtype)
        results["seg_fields"].append("gt_seg_map")

    def _apply_mmseg_mapping(self, labels: np.ndarray, reduce: bool,
                             label_map: Optional[Mapping]) -> np.ndarray:
        """``reduce_zero_label`` and ``label_map`` exactly as MMSeg's ``LoadAnnotations``."""
        if reduce:  # 0 ("other") -> 255; k -> k - 1; 255 stays 255 (MMSeg's constants)
            labels = np.where((labels == 0) | (labels == 255), 255, labels - 1)
        if label_map:
            mapped = labels.copy()
            for old, new in label_map.items():
                mapped[labels == old] = new
            labels = mapped
        return labels

    def _check_values(self, path: str, raw: np.ndarray, labels: np.ndarray, reduce: bool) -> None:
        if self.num_classes is None:
            return
        bad = (labels != self.ignore_index) & ((labels < 0) | (labels >= self.num_classes))
        if not bad.any():
            return
        value = int(raw[bad].max())
        k, ignore = self.num_classes, self.ignore_index
        allowed = (f"values 1..{k} are classes, 0 and {ignore} are ignored (reduce_zero_label)"
                   if reduce else f"values 0..{k - 1} are classes, {ignore} is ignored")
        raise SegDataError(f"label map {path} holds the value {value} ({raw.dtype}), which no "
                           f"class of the config's {k} takes: {allowed}")


def pipeline_steps(pipeline) -> Iterator[dict]:
    """Every transform dict of a pipeline, also those nested in a wrapper's ``transforms``
    (``TestTimeAug``'s list of branch lists, ``RandomChoice``, ...)."""
    for step in pipeline or []:
        if isinstance(step, (list, tuple)):
            yield from pipeline_steps(step)
        elif isinstance(step, dict):
            yield step
            yield from pipeline_steps(step.get("transforms"))


def use_checked_loaders(pipeline: Optional[List[dict]], num_classes: Optional[int],
                        ignore_index: int = 255) -> int:
    """Put the checked loaders in place of MMSeg's in ``pipeline``, nested ones included
    (arguments kept); returns how many were replaced."""
    replaced = 0
    for step in pipeline_steps(pipeline):
        if step.get("type") in CHECKED_LOADERS:
            step["type"] = CHECKED_LOADERS[step["type"]]
            if step["type"] == "CheckedLoadAnnotations":
                step.setdefault("num_classes", num_classes)
                step.setdefault("ignore_index", ignore_index)
            replaced += 1
    return replaced
