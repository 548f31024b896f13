"""JPEG decoding on the training device: loader workers read bytes, the GPU decodes and crops.

Why: the CPU path (``ImageFolderMAE``: PIL decode + RandomResizedCrop + flip in the workers)
delivers about 110 full-size photos (640x480) per CPU-second, so a GPU training 5,500 img/s
would need ~50 cores feeding it; the workers here need ~10 (docs/benchmarks.md). Here each
worker only parses the JPEG header, draws the same random crop and flip as the CPU path (same
generator, same order of draws: the two paths crop the same box of the same image), and ships
the file's bytes.
The main process then decodes the whole batch with ``torchvision.io.decode_jpeg(list, device=)``
(nvJPEG on CUDA, one batched call) and does the crop, bicubic resize (antialiased, as PIL's) and
flip on the device. The same code runs on the CPU (``device='cpu'``), which is how it is tested.

What stays on the CPU path: files that are not RGB / greyscale JPEGs (PNG, CMYK JPEG, ...)
and files that fail to decode. They are decoded by ``ImageFolderMAE`` (substituting the next
readable file, as there), so a batch keeps its size and a bad file never stops a run.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Dict, Iterator, List, Optional, Tuple

import torch
import torch.nn.functional as F
from PIL import Image

from mae_transfer.pretrain.data import CROP_STREAM, ImageFolderMAE, sample_crop, sample_flip, sample_rng

#: PIL modes whose JPEGs nvJPEG / libjpeg decode to the same RGB as PIL's ``convert("RGB")``.
_DEVICE_MODES = ("RGB", "L")


@dataclass
class EncodedSample:
    """One sample as a worker reads it: JPEG bytes + the crop to take, or finished pixels."""

    key: Tuple[int, int]  # (epoch, index): lets the main process redo it on the CPU path
    noise: torch.Tensor  # (num_patches,) float32 mask noise
    jpeg: Optional[bytes] = None  # the file as stored
    box: Tuple[int, int, int, int] = (0, 0, 0, 0)  # (left, top, width, height) in the full image
    flip: bool = False
    pixels: Optional[torch.Tensor] = None  # (S, S, 3) uint8 when decoded on the CPU path


class EncodedImageFolder(ImageFolderMAE):
    """``ImageFolderMAE`` whose items are ``EncodedSample``s (bytes + crop) for
    ``collate_encoded``; same files, same seeds, same crops and masks."""

    def __getitem__(self, key) -> EncodedSample:
        epoch, index = key if isinstance(key, tuple) else (0, key)
        path = self.files[index]
        rng = sample_rng(self.seed, epoch, index, CROP_STREAM)
        try:
            with Image.open(path) as img:  # reads the header only
                fmt, mode, width, height = img.format, img.mode, img.width, img.height
            if fmt == "JPEG" and mode in _DEVICE_MODES:
                # The draws of load_crop, in its order: crop box, then flip.
                box = sample_crop(rng, width, height, self.scale)
                flip = sample_flip(rng, self.flip)
                return EncodedSample((epoch, index), self.mask_noise(epoch, index),
                                     jpeg=path.read_bytes(), box=box, flip=flip)
        except Exception:  # noqa: BLE001 - unreadable here: the CPU path reports and substitutes
            pass
        return self.cpu_sample((epoch, index))

    def cpu_sample(self, key: Tuple[int, int]) -> EncodedSample:
        pixels, noise = self.decoded(key)
        return EncodedSample(key, noise, pixels=pixels)


@dataclass
class EncodedBatch:
    """A batch as it crosses from a worker: every JPEG of the batch in one uint8 tensor (one
    shared-memory block instead of one per image), the crops, and CPU-decoded stragglers.

    ``decode(device)`` gives uint8 ``(B, S, S, 3)`` there; ``dataset`` is attached in the main
    process by ``EncodedLoader`` (for the CPU fallback of a file that fails to decode).
    """

    keys: List[Tuple[int, int]]
    data: torch.Tensor  # (total bytes,) uint8: the JPEGs, one after another
    sizes: List[int]  # bytes of each JPEG, in order of ``encoded``
    encoded: List[int]  # batch positions of the JPEGs
    boxes: List[Tuple[int, int, int, int]]
    flips: List[bool]
    pixels: Dict[int, torch.Tensor]  # batch position -> (S, S, 3) uint8, decoded on the CPU
    dataset: Optional["EncodedImageFolder"] = None

    def __len__(self) -> int:
        return len(self.keys)

    def decode(self, device: torch.device) -> torch.Tensor:
        return decode_batch(self, torch.device(device))


def collate_encoded(samples: List[EncodedSample]) -> Tuple[EncodedBatch, torch.Tensor]:
    """DataLoader ``collate_fn``: an ``EncodedBatch`` and the stacked mask noise, so that the
    training loop's ``for batch, noise in loader`` is unchanged."""
    encoded = [i for i, s in enumerate(samples) if s.jpeg is not None]
    blob = b"".join(samples[i].jpeg for i in encoded)
    data = (torch.frombuffer(bytearray(blob), dtype=torch.uint8) if blob
            else torch.empty(0, dtype=torch.uint8))
    batch = EncodedBatch(keys=[s.key for s in samples], data=data,
                         sizes=[len(samples[i].jpeg) for i in encoded], encoded=encoded,
                         boxes=[samples[i].box for i in encoded],
                         flips=[samples[i].flip for i in encoded],
                         pixels={i: s.pixels for i, s in enumerate(samples) if s.jpeg is None})
    return batch, torch.stack([s.noise for s in samples])


class EncodedLoader:
    """Wraps a DataLoader over ``EncodedImageFolder`` (with ``collate_encoded``); attaches the
    main process's dataset to each batch, so that workers never pickle it back."""

    def __init__(self, loader, dataset: EncodedImageFolder):
        self.loader, self.dataset = loader, dataset

    def __iter__(self) -> Iterator[Tuple[EncodedBatch, torch.Tensor]]:
        for batch, noise in self.loader:
            batch.dataset = self.dataset
            yield batch, noise

    def __len__(self) -> int:
        return len(self.loader)


def dataset_class(decode_on_device: bool) -> type:
    """The pretraining dataset: JPEG bytes for the device (``--decode_on_device``) or pixels."""
    return EncodedImageFolder if decode_on_device else ImageFolderMAE


def make_loader(dataset: ImageFolderMAE, **dataloader_kwargs):
    """The DataLoader over ``dataset``; over an ``EncodedImageFolder`` with ``collate_encoded``
    and wrapped in ``EncodedLoader``. One place for training and the benchmark."""
    from torch.utils.data import DataLoader

    if not isinstance(dataset, EncodedImageFolder):
        return DataLoader(dataset, **dataloader_kwargs)
    return EncodedLoader(DataLoader(dataset, collate_fn=collate_encoded, **dataloader_kwargs),
                         dataset)


def batch_pixels(batch, device: torch.device):
    """The uint8 images of a loader batch: an ``EncodedBatch`` decoded on ``device``, a pixel
    batch as it is (``normalize_batch`` moves it)."""
    return batch.decode(device) if isinstance(batch, EncodedBatch) else batch


def _decode_jpegs(data: List[torch.Tensor], device: torch.device) -> List[Optional[torch.Tensor]]:
    """Decode to RGB ``(3, H, W)`` uint8 on ``device``: one batched call; if it fails (one bad
    file fails the whole call), one call per image, ``None`` for those that fail."""
    from torchvision.io import ImageReadMode, decode_jpeg

    with warnings.catch_warnings():  # torchvision 0.29 marks its decoders as deprecated
        warnings.simplefilter("ignore")
        try:
            return list(decode_jpeg(data, mode=ImageReadMode.RGB, device=device))
        except RuntimeError:
            out: List[Optional[torch.Tensor]] = []
            for d in data:
                try:
                    out.append(decode_jpeg(d, mode=ImageReadMode.RGB, device=device))
                except RuntimeError:
                    out.append(None)
            return out


def crop_resize_flip(image: torch.Tensor, box: Tuple[int, int, int, int], size: int,
                     flip: bool) -> torch.Tensor:
    """``(3, H, W)`` uint8 -> ``(S, S, 3)`` uint8: the crop box, bicubic resize with antialiasing
    (PIL's filter when shrinking), rounding, and a horizontal flip."""
    left, top, w, h = box
    crop = image[:, top:top + h, left:left + w].unsqueeze(0).float()
    out = F.interpolate(crop, size=(size, size), mode="bicubic", antialias=True,
                        align_corners=False)
    out = out.round_().clamp_(0, 255).to(torch.uint8)[0]
    if flip:
        out = out.flip(-1)
    return out.permute(1, 2, 0)


def decode_batch(batch: EncodedBatch, device: torch.device) -> torch.Tensor:
    """uint8 ``(B, S, S, 3)`` on ``device`` (what ``normalize_batch`` takes)."""
    dataset = batch.dataset
    if dataset is None:
        raise ValueError("EncodedBatch.dataset is not set: iterate through EncodedLoader")
    size = dataset.input_size
    out = torch.empty(len(batch), size, size, 3, dtype=torch.uint8, device=device)
    jpegs = list(torch.split(batch.data, batch.sizes)) if batch.encoded else []
    images = _decode_jpegs(jpegs, device) if jpegs else []
    for i, image, box, flip in zip(batch.encoded, images, batch.boxes, batch.flips):
        if image is None:  # undecodable: the CPU path reports it and substitutes the next file
            out[i] = dataset.cpu_sample(batch.keys[i]).pixels.to(device)
        else:
            out[i] = crop_resize_flip(image, box, size, flip)
    for i, pixels in batch.pixels.items():
        out[i] = pixels.to(device, non_blocking=True)
    return out
