"""ImageFolder classification data as official MAE reads it, checked before any model is built.

A classification root is ``ROOT/train/<class>/*`` and ``ROOT/val/<class>/*`` (official MAE's
``util/datasets.py``: ``ImageFolder(os.path.join(data_path, 'train' | 'val'))``). Labels are the
class folders in sorted order, so train and val must hold the same class folders, and the head's
``--nb_classes`` must equal their number: otherwise a run trains for hours with labels that do
not mean what the user thinks (val label 3 is another class than train label 3) or with outputs
no image ever has. ``check_image_folder`` refuses those roots with ONE line naming the folder.

The transforms are the recipes' (``train_transform``: fine-tuning, timm's ``create_transform``
with RandAugment ``rand-m9-mstd0.5-inc1`` and random erasing, exactly as MAE calls it;
``linprobe_transform``: MAE's TF-style ``RandomResizedCrop`` + flip only; ``eval_transform``:
resize to ``input_size / 0.875`` (256 for 224; no resize margin above 224 px) + center crop).
All normalise with the ImageNet mean / std.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Sequence

import torch
from torchvision import datasets, transforms
from torchvision.transforms import InterpolationMode
from torchvision.transforms import functional as TF

from mae_transfer.tools.image_inputs import IMAGE_SUFFIXES

#: ImageNet mean / std (timm's ``IMAGENET_DEFAULT_MEAN`` / ``_STD``, what MAE normalises with).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
#: The split folders of a classification root (official MAE's names).
SPLITS = ("train", "val")
#: MAE's fine-tuning RandAugment policy (``--aa`` default in ``main_finetune.py``).
RANDAUG = "rand-m9-mstd0.5-inc1"
#: Eval crop fraction up to 224 px (resize 256, crop 224); 1.0 above (MAE's ``build_transform``).
EVAL_CROP_PCT = 224 / 256


class ClassificationDataError(ValueError):
    """A classification root that cannot be used; the message is one line that says why."""


@dataclass(frozen=True)
class ImageFolderInfo:
    """What ``check_image_folder`` found: the class names (label order) and image counts."""

    root: Path
    classes: List[str]
    num_train: int
    num_val: int

    @property
    def num_classes(self) -> int:
        return len(self.classes)


def _class_folders(split_dir: Path) -> List[str]:
    return sorted(e.name for e in os.scandir(split_dir) if e.is_dir() and not e.name.startswith("."))


def _count_images(class_dir: Path) -> int:
    # ImageFolder searches each class folder recursively (symbolic links followed)
    return sum(1 for _, _, files in os.walk(class_dir, followlinks=True)
               for f in files if f.lower().endswith(IMAGE_SUFFIXES))


def check_image_folder(data_path: str | os.PathLike, nb_classes: Optional[int] = None,
                       splits: Sequence[str] = SPLITS) -> ImageFolderInfo:
    """Check ``data_path`` as a classification root; return its classes, or raise
    ``ClassificationDataError`` (one line) naming the folder at fault.

    Refused: a missing root; a missing ``train/`` or ``val/`` (of ``splits``); a split without
    class folders; a class folder without images; val class folders that differ from train's;
    ``nb_classes`` (``--nb_classes``) other than the number of class folders.
    """
    root = Path(data_path)
    if not root.is_dir():
        raise ClassificationDataError(f"--data_path {root} is not a folder")
    missing = [s for s in splits if not (root / s).is_dir()]
    if missing:
        raise ClassificationDataError(
            f"--data_path {root} has no {' and no '.join(m + '/' for m in missing)} folder: a "
            f"classification root holds {' and '.join(s + '/<class>/' for s in splits)} image "
            f"folders (ImageNet's layout)")
    classes: Optional[List[str]] = None
    counts = {}
    for split in splits:
        split_dir = root / split
        found = _class_folders(split_dir)
        if not found:
            raise ClassificationDataError(f"{split_dir} holds no class folders (expected "
                                          f"{split_dir}/<class>/<image>)")
        empty = [c for c in found if _count_images(split_dir / c) == 0]
        if empty:
            raise ClassificationDataError(
                f"{split_dir / empty[0]} holds no images ({len(empty)} empty class folder"
                f"{'s' if len(empty) > 1 else ''} in {split_dir}; image suffixes: "
                f"{', '.join(IMAGE_SUFFIXES)})")
        if classes is None:
            classes = found
        elif found != classes:
            only_here = sorted(set(found) - set(classes))
            only_there = sorted(set(classes) - set(found))
            raise ClassificationDataError(
                f"{split_dir} and {root / splits[0]} hold different class folders (only in "
                f"{split}: {only_here[:3] or 'none'}; only in {splits[0]}: "
                f"{only_there[:3] or 'none'}): labels are the sorted folder names, so they must "
                f"be the same")
        counts[split] = sum(_count_images(split_dir / c) for c in found)
    assert classes is not None
    if nb_classes is not None and nb_classes != len(classes):
        raise ClassificationDataError(
            f"--nb_classes {nb_classes} but {root / splits[0]} has {len(classes)} class folders: "
            f"pass --nb_classes {len(classes)} (or leave it out)")
    return ImageFolderInfo(root, classes, counts.get("train", 0), counts.get("val", 0))


def image_folder(data_path: str | os.PathLike, split: str, transform) -> datasets.ImageFolder:
    """torchvision's ``ImageFolder`` of ``data_path/split`` (call ``check_image_folder`` first)."""
    return datasets.ImageFolder(str(Path(data_path) / split), transform=transform)


# ------------------------------------------------------------------------------- transforms
def _normalize() -> List:
    return [transforms.ToTensor(), transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD)]


def train_transform(input_size: int = 224, aa: Optional[str] = RANDAUG,
                    color_jitter: Optional[float] = None, reprob: float = 0.25,
                    remode: str = "pixel", recount: int = 1):
    """Fine-tuning augmentation: timm ``create_transform(is_training=True)`` with MAE's arguments
    (RandomResizedCrop 0.08-1 bicubic, flip, RandAugment ``aa``, random erasing ``reprob``)."""
    from timm.data import create_transform

    return create_transform(input_size=input_size, is_training=True, color_jitter=color_jitter,
                            auto_augment=aa or None, interpolation="bicubic", re_prob=reprob,
                            re_mode=remode, re_count=recount, mean=IMAGENET_MEAN,
                            std=IMAGENET_STD)


class TFRandomResizedCrop(transforms.RandomResizedCrop):
    """``RandomResizedCrop`` that samples one crop and clips it to the image, as MAE's
    ``util/crop.py`` (after BYOL's TF code), instead of torchvision's ten tries and center-crop
    fallback: area uniform in ``scale`` x image area, log-uniform aspect ratio, sides rounded
    and clipped to the image, position uniform."""

    @staticmethod
    def get_params(img, scale, ratio):
        width, height = TF.get_image_size(img)
        area = height * width * torch.empty(1).uniform_(scale[0], scale[1]).item()
        log_ratio = torch.log(torch.tensor(ratio))
        aspect = math.exp(torch.empty(1).uniform_(log_ratio[0].item(), log_ratio[1].item()).item())
        w = min(int(round(math.sqrt(area * aspect))), width)
        h = min(int(round(math.sqrt(area / aspect))), height)
        top = int(torch.randint(0, height - h + 1, size=(1,)).item())
        left = int(torch.randint(0, width - w + 1, size=(1,)).item())
        return top, left, h, w


def linprobe_transform(input_size: int = 224):
    """Linear-probe augmentation (MAE ``main_linprobe.py``): TF-style RandomResizedCrop
    (scale 0.08-1, bicubic) + horizontal flip only."""
    return transforms.Compose([
        TFRandomResizedCrop(input_size, interpolation=InterpolationMode.BICUBIC),
        transforms.RandomHorizontalFlip(), *_normalize()])


def eval_size(input_size: int) -> int:
    """The shorter side images are resized to before the center crop (256 for 224)."""
    crop_pct = EVAL_CROP_PCT if input_size <= 224 else 1.0
    return int(input_size / crop_pct)


def eval_transform(input_size: int = 224):
    """Evaluation: resize the shorter side to ``eval_size`` (bicubic), center crop
    ``input_size``, normalise (MAE ``build_transform(is_train=False)``)."""
    return transforms.Compose([
        transforms.Resize(eval_size(input_size), interpolation=InterpolationMode.BICUBIC),
        transforms.CenterCrop(input_size), *_normalize()])


class SeededSamples(torch.utils.data.Dataset):
    """``dataset`` indexed by ``(epoch, index)`` (what ``pretrain.data.ResumableSampler``
    yields), each sample's augmentation drawn from RNGs seeded by ``(seed, epoch, index)``.

    The random crops, RandAugment ops and erasing of a sample then depend on neither the number
    of data workers nor where a run was resumed: a resumed run sees the same pixels as one that
    never stopped. (torchvision / timm transforms draw from Python's ``random``, numpy's and
    torch's global RNGs; all three are seeded.)
    """

    def __init__(self, dataset, seed: int = 0):
        self.dataset, self.seed = dataset, seed

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key):
        epoch, index = key
        import random

        import numpy as np

        sample_seed = (self.seed * 1_000_003 + epoch) * 10_000_019 + index
        random.seed(sample_seed)
        np.random.seed(sample_seed % 2**32)
        torch.manual_seed(sample_seed)
        return self.dataset[index]
