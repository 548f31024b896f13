"""Pretraining data: any folder of images (recursively), MAE's augmentation, resumable sampling.

Design choices, each for a reason:
- The data root is read as official MAE reads it where that matters: a root with a ``train/``
  folder (ImageNet's layout, what PRETRAIN.md's ``--data_path ${IMAGENET_DIR}`` points at) trains
  on ``train/`` only, as ``ImageFolder(os.path.join(data_path, 'train'))`` does. Any other folder
  is searched recursively, but one holding a ``val/`` or ``validation/`` folder is refused:
  held-out images must never be mixed into pretraining silently.
- Every random decision for a sample (crop, flip, and the mask noise) comes from a generator
  seeded by ``(seed, epoch, index)``. Results then do not depend on the number of workers, the
  rank, or where a run was interrupted, which is what makes ``--resume`` bit-for-bit.
- The sampler yields ``(epoch, index)`` pairs, so persistent workers (which keep their own copy
  of the dataset) still know the epoch.
- JPEGs are decoded at a reduced size (``Image.draft``, DCT scaling by 1/2, 1/4, 1/8) whenever the
  sampled crop stays at least ``input_size`` pixels on each side: most RandomResizedCrop crops of
  full-size photos are decoded several times faster.
- Batches are uint8 ``(B, H, W, 3)``: four times less to pin and copy than float, and
  ``permute(0, 3, 1, 2)`` on the device gives a channels-last NCHW view without a copy.
  Normalisation happens on the device (``normalize_batch``).
- An unreadable image is logged with its path and replaced by the next readable one, so a batch
  keeps its size (and every rank its step count) and a bad file never stops a run.
"""
from __future__ import annotations

import ctypes
import functools
import logging
import math
import os
import signal
from pathlib import Path
from typing import Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset, Sampler

from mae_transfer.tools.image_inputs import IMAGE_SUFFIXES, is_image

logger = logging.getLogger("mae_transfer.pretrain.data")

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
#: Folder names of held-out splits: a pretraining tree holding one is refused (``find_images``).
HELD_OUT_DIRS = ("val", "validation")
#: Subfolder of a dataset root that official MAE trains on (``ImageFolder(data_path/'train')``).
TRAIN_DIR = "train"
#: Consecutive unreadable files tolerated before giving up (a folder of broken files is an error).
MAX_CONSECUTIVE_FAILURES = 50


class DatasetError(ValueError):
    """A data folder that cannot be used; the message is one line that says why."""


def training_root(data_path: str | os.PathLike) -> Path:
    """The folder pretraining reads: ``data_path/train`` where it exists (logged), else ``data_path``."""
    root = Path(data_path)
    if not root.is_dir():
        raise DatasetError(f"data path {root} is not a directory")
    train = root / TRAIN_DIR
    if train.is_dir():
        logger.info("data path %s has a %s/ folder: pretraining on %s only (as official MAE's "
                    "ImageFolder(data_path/'%s'))", root, TRAIN_DIR, train, TRAIN_DIR)
        return train
    return root


def find_images(root: str | os.PathLike) -> List[Path]:
    """Every image file under ``root`` (recursively, symlinks followed), sorted by path.

    A tree with a held-out folder (``HELD_OUT_DIRS``) anywhere below ``root`` is refused.
    """
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"data path {root} is not a directory")
    files = []
    for d, subdirs, names in os.walk(root, followlinks=True):
        held_out = sorted(s for s in subdirs if s.lower() in HELD_OUT_DIRS)
        if held_out:
            raise DatasetError(
                f"data path {root} holds a held-out folder {Path(d) / held_out[0]}: point "
                f"--data_path at the training images (a root with a {TRAIN_DIR}/ folder trains "
                f"on {TRAIN_DIR}/ only)")
        files += [Path(d) / f for f in names if is_image(f)]
    if not files:
        raise DatasetError(f"no images found under {root} (looked recursively for "
                           f"{', '.join(IMAGE_SUFFIXES)})")
    return sorted(files)


def sample_crop(rng: np.random.Generator, width: int, height: int,
                scale: Tuple[float, float] = (0.2, 1.0),
                ratio: Tuple[float, float] = (3 / 4, 4 / 3)) -> Tuple[int, int, int, int]:
    """RandomResizedCrop's box ``(left, top, w, h)``: area fraction in ``scale``, log-uniform
    aspect ratio in ``ratio``, 10 tries, then a centre crop clamped to ``ratio``."""
    area = width * height
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target = area * rng.uniform(*scale)
        aspect = math.exp(rng.uniform(*log_ratio))
        w = int(round(math.sqrt(target * aspect)))
        h = int(round(math.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            return int(rng.integers(0, width - w + 1)), int(rng.integers(0, height - h + 1)), w, h
    in_ratio = width / height
    if in_ratio < ratio[0]:
        w, h = width, int(round(width / ratio[0]))
    elif in_ratio > ratio[1]:
        w, h = int(round(height * ratio[1])), height
    else:
        w, h = width, height
    return (width - w) // 2, (height - h) // 2, w, h


def draft_scale(crop_w: int, crop_h: int, out_size: int) -> int:
    """Largest JPEG DCT reduction (1, 2, 4, 8) that keeps the crop >= ``out_size`` on both sides."""
    limit = min(crop_w, crop_h) // out_size
    for s in (8, 4, 2):
        if limit >= s:
            return s
    return 1


def sample_flip(rng: np.random.Generator, flip: bool = True) -> bool:
    """Whether to flip a sample horizontally (probability 0.5), drawn after its crop box."""
    return bool(flip and rng.random() < 0.5)


def load_crop(path: Path, rng: np.random.Generator, out_size: int,
              scale: Tuple[float, float] = (0.2, 1.0), flip: bool = True,
              draft: bool = True) -> np.ndarray:
    """Random resized crop (bicubic) + horizontal flip of one image file: uint8 ``(S, S, 3)``."""
    with Image.open(path) as img:
        left, top, w, h = sample_crop(rng, img.width, img.height, scale)
        s = draft_scale(w, h, out_size) if draft else 1
        if s > 1:
            # Requesting (W // s, H // s) makes PIL's JPEG decoder pick exactly reduction s;
            # other formats ignore draft (None), and are decoded at full size.
            full_width = img.width
            drafted = img.draft("RGB", (max(1, img.width // s), max(1, img.height // s)))
            s = full_width / drafted[1][2] if drafted else 1
        rgb = img.convert("RGB")
    box = (left / s, top / s, (left + w) / s, (top + h) / s)
    out = rgb.resize((out_size, out_size), Image.BICUBIC, box=box)
    arr = np.array(out)  # a writable copy (torch refuses to wrap read-only arrays)
    if sample_flip(rng, flip):
        arr = np.ascontiguousarray(arr[:, ::-1])
    return arr


#: Independent random streams of one sample.
NOISE_STREAM, CROP_STREAM = 0, 1


def sample_rng(seed: int, epoch: int, index: int, stream: int) -> np.random.Generator:
    """The generator behind the random choices (``stream``: mask noise or crop + flip) for
    ``index`` in ``epoch``."""
    return np.random.default_rng([seed, epoch, index, stream])


class ImageFolderMAE(Dataset):
    """Images under ``root`` (its ``train/`` if it has one, see ``training_root``; recursively)
    with MAE's augmentation and per-sample mask noise.

    ``__getitem__((epoch, index))`` returns a uint8 image ``(S, S, 3)`` and float32 mask noise
    ``(num_patches,)``; a plain ``index`` means epoch 0. With ``num_patches=0`` the noise is an empty tensor.
    """

    def __init__(self, root: str | os.PathLike, input_size: int = 224, num_patches: int = 0,
                 seed: int = 0, scale: Tuple[float, float] = (0.2, 1.0), flip: bool = True,
                 draft: bool = True):
        self.root = training_root(root)
        self.files = find_images(self.root)
        self.input_size = input_size
        self.num_patches = num_patches
        self.seed = seed
        self.scale = scale
        self.flip = flip
        self.draft = draft
        self._reported: set = set()

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, key) -> Tuple[torch.Tensor, torch.Tensor]:
        return self.decoded(key)

    def decoded(self, key) -> Tuple[torch.Tensor, torch.Tensor]:
        """The sample decoded on the CPU: what ``__getitem__`` returns here, and what
        pictures and the device-decoding subclass's fallback use."""
        epoch, index = key if isinstance(key, tuple) else (0, key)
        noise = self.mask_noise(epoch, index)
        for attempt in range(min(MAX_CONSECUTIVE_FAILURES, len(self.files))):
            path = self.files[(index + attempt) % len(self.files)]
            # A fresh crop generator per attempt: a substitute image gets the crop it would
            # have had in this slot, whatever a failed file consumed.
            rng = sample_rng(self.seed, epoch, index, CROP_STREAM)
            try:
                img = load_crop(path, rng, self.input_size, self.scale, self.flip, self.draft)
                return torch.from_numpy(img), noise
            except Exception as exc:  # noqa: BLE001 - any decoder failure means "skip this file"
                self._report(path, exc)
        raise DatasetError(f"{MAX_CONSECUTIVE_FAILURES} consecutive unreadable images starting at "
                           f"{self.files[index]}: is {self.root} an image folder?")

    def mask_noise(self, epoch: int, index: int) -> torch.Tensor:
        """The sample's float32 mask noise ``(num_patches,)`` (its own random stream)."""
        rng = sample_rng(self.seed, epoch, index, NOISE_STREAM)
        return torch.from_numpy(rng.random(self.num_patches, dtype=np.float32))

    def _report(self, path: Path, exc: Exception) -> None:
        if path in self._reported:
            return
        self._reported.add(path)
        logger.warning("skipping unreadable image %s (%s: %s)", path, type(exc).__name__,
                       str(exc).splitlines()[0][:200] if str(exc) else "")


class ResumableSampler(Sampler):
    """Epoch-seeded shuffling, split across ranks, that can start mid-epoch.

    Yields ``(epoch, index)``. Each epoch holds ``steps_per_epoch * batch_size`` samples per rank
    (default: as many full global batches as the data gives; a larger value cycles through further
    permutations). ``set_epoch(epoch, start_step)`` skips the batches already done.
    """

    def __init__(self, num_items: int, batch_size: int, num_replicas: int = 1, rank: int = 0,
                 seed: int = 0, shuffle: bool = True, steps_per_epoch: Optional[int] = None):
        global_batch = batch_size * num_replicas
        if num_items < global_batch and steps_per_epoch is None:
            raise DatasetError(f"the dataset has {num_items} images, fewer than one global batch "
                               f"({batch_size} x {num_replicas} processes = {global_batch})")
        self.num_items = num_items
        self.batch_size = batch_size
        self.num_replicas = num_replicas
        self.rank = rank
        self.seed = seed
        self.shuffle = shuffle
        self.steps_per_epoch = steps_per_epoch or num_items // global_batch
        self.epoch = 0
        self.start_step = 0

    def set_epoch(self, epoch: int, start_step: int = 0) -> None:
        self.epoch = epoch
        self.start_step = start_step

    def epoch_order(self, epoch: int) -> List[int]:
        """This rank's indices for ``epoch`` (all of its steps, from step 0)."""
        needed = self.steps_per_epoch * self.batch_size * self.num_replicas
        order: List[int] = []
        cycle = 0
        while len(order) < needed:
            if self.shuffle:
                g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch * 1_009 + cycle)
                order += torch.randperm(self.num_items, generator=g).tolist()
            else:
                order += list(range(self.num_items))
            cycle += 1
        return order[:needed][self.rank::self.num_replicas]

    def __iter__(self) -> Iterator[Tuple[int, int]]:
        order = self.epoch_order(self.epoch)[self.start_step * self.batch_size:]
        return iter([(self.epoch, i) for i in order])

    def __len__(self) -> int:
        return (self.steps_per_epoch - self.start_step) * self.batch_size


#: What a scheduler (SIGTERM, SIGUSR1) or a terminal's Ctrl-C (SIGINT) sends to every process of a
#: job: the main process handles them (saves, stops); data workers leave them to it.
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1)
#: ``prctl`` option: the signal the kernel sends this process when its parent dies.
PR_SET_PDEATHSIG = 1


def worker_init(parent_pid: int, worker_id: int) -> None:
    """DataLoader ``worker_init_fn`` (``functools.partial(worker_init, os.getpid())``): workers
    ignore ``STOP_SIGNALS`` and die with the main process.

    A worker killed by a scheduler's signal would crash the main process at its next batch,
    before it could save; so workers ignore it, and the main process ends them: ``stop_workers``
    when training ends, on success, error or signal alike. Should the main process itself die
    without that (SIGKILL, a crash in C), the kernel kills its workers (``die_with_parent``), so
    no worker outlives the run holding its memory and GPUs' host buffers.
    """
    for sig in STOP_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)
    die_with_parent(parent_pid)


def die_with_parent(parent_pid: int) -> None:
    """Ask Linux to SIGKILL this process when its parent (thread) dies, where that parent is the
    main process ``parent_pid`` (forked workers). Workers started by a fork server (Python 3.14's
    default) or on another OS are left as they are: PyTorch's worker loop still ends a worker
    whose main process died, once it is idle."""
    if os.getppid() != parent_pid:
        return
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):  # no libc prctl: not Linux
        return
    if os.getppid() != parent_pid:  # the parent died just before the request took effect
        os._exit(1)


def stop_workers(loader, timeout: float = 5.0) -> None:
    """End the worker processes of ``loader`` (a DataLoader, or a wrapper with a ``.loader``)
    now: PyTorch's own shutdown (the workers finish their current item and exit; it waits a few
    seconds for each), then SIGKILL for any still alive.

    Persistent workers otherwise live as long as the loader's iterator; after an error, the
    traceback keeps that alive past the end of ``main``, and Python's exit then waits forever on
    workers that ignore the SIGTERM multiprocessing sends them.
    """
    inner = getattr(loader, "loader", loader)
    iterator = getattr(inner, "_iterator", None)
    if iterator is None:
        return
    workers = list(getattr(iterator, "_workers", []))
    shutdown = getattr(iterator, "_shutdown_workers", None)
    if shutdown is not None:
        shutdown()
    for w in workers:
        if w.is_alive():
            w.kill()
            w.join(timeout)
    inner._iterator = None


def normalize_batch(batch: torch.Tensor, device: torch.device,
                    mean: Sequence[float] = IMAGENET_MEAN,
                    std: Sequence[float] = IMAGENET_STD) -> torch.Tensor:
    """uint8 ``(B, H, W, 3)`` -> normalised float32 ``(B, 3, H, W)`` on ``device``, channels-last.

    The copy to the device is non-blocking (the loader pins memory on CUDA); the permute is a view,
    so the result has channels-last strides, the layout the patch-embedding convolution prefers.
    """
    x = batch.to(device, non_blocking=True).permute(0, 3, 1, 2).float()
    mean_t, std_t = _pixel_stats(device, tuple(mean), tuple(std))
    return (x - mean_t) / std_t


@functools.lru_cache(maxsize=8)
def _pixel_stats(device: torch.device, mean: Tuple[float, ...], std: Tuple[float, ...]):
    """Mean and std in 0-255 units, made on the device once: a fresh ``torch.tensor(...,
    device='cuda')`` every step would be a synchronising copy from pageable memory."""
    return (torch.tensor(mean, device=device).view(1, 3, 1, 1) * 255.0,
            torch.tensor(std, device=device).view(1, 3, 1, 1) * 255.0)


def denormalize(imgs: torch.Tensor, mean: Sequence[float] = IMAGENET_MEAN,
                std: Sequence[float] = IMAGENET_STD) -> torch.Tensor:
    """Normalised ``(B, 3, H, W)`` -> float in [0, 1] (clamped), for pictures."""
    m = torch.tensor(mean, device=imgs.device).view(1, 3, 1, 1)
    s = torch.tensor(std, device=imgs.device).view(1, 3, 1, 1)
    return (imgs.float() * s + m).clamp(0, 1)
