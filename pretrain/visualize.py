"""Pictures of what the MAE sees and predicts: rows of original | masked | reconstruction |
reconstruction with the visible patches pasted back.

With ``norm_pix_loss`` the model predicts each patch normalised by its own mean and variance; to
draw it, the masked patches are mapped back with the *original* patches' statistics (as the
official MAE demo does). The picture therefore borrows two numbers per patch from the image; the
structure inside each patch is the model's.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from mae_transfer.pretrain.data import denormalize, normalize_batch
from mae_transfer.pretrain.masking import patchify, unpatchify
from mae_transfer.tools.atomic import atomic_write

COLUMNS = ("original", "masked", "reconstruction", "reconstruction + visible")


@torch.no_grad()
def reconstruction_rows(model, imgs: torch.Tensor, noise: torch.Tensor, mask_ratio: float
                        ) -> np.ndarray:
    """uint8 ``(B*H, 4*W, 3)`` picture for normalised images ``imgs``; see the module docstring."""
    was_training = model.training
    model.eval()
    try:
        out = model(imgs, mask_ratio, noise)
    finally:
        model.train(was_training)
    p, grid = model.patch_size, model.pretrain_grid
    pred = out.pred.float()
    if model.norm_pix_loss:
        target = patchify(imgs.float(), p)
        mean = target.mean(-1, keepdim=True)
        std = (target.var(-1, keepdim=True) + 1e-6).sqrt()
        pred = pred * std + mean
    recon = unpatchify(pred, p, grid, imgs.shape[1])
    mask = unpatchify(out.mask.unsqueeze(-1).expand_as(pred), p, grid, imgs.shape[1])
    original = denormalize(imgs)
    masked = original * (1 - mask) + 0.5 * mask  # hidden patches drawn grey
    recon_img = denormalize(recon)
    pasted = original * (1 - mask) + recon_img * mask
    cols = torch.cat([original, masked, recon_img, pasted], dim=3)  # side by side
    rows = torch.cat(list(cols), dim=1)  # (3, B*H, 4*W)
    return (rows.permute(1, 2, 0).cpu().numpy() * 255 + 0.5).astype(np.uint8)


def center_crop_tensor(path: Path, size: int) -> torch.Tensor:
    """An image file resized (shorter side) and centre-cropped to ``size``, normalised (3, S, S)."""
    with Image.open(path) as img:
        img = img.convert("RGB")
    scale = size / min(img.size)
    w, h = max(size, round(img.width * scale)), max(size, round(img.height * scale))
    img = img.resize((w, h), Image.BICUBIC)
    left, top = (w - size) // 2, (h - size) // 2
    arr = np.asarray(img.crop((left, top, left + size, top + size)))
    return normalize_batch(torch.from_numpy(arr)[None], torch.device("cpu"))[0]


def save_png(picture: np.ndarray, path: Path) -> Path:
    return atomic_write(path, lambda tmp: Image.fromarray(picture).save(tmp, format="PNG"))


def noise_for(batch: int, num_patches: int, seed: int = 0) -> torch.Tensor:
    """Mask noise for pictures, reproducible from ``seed``."""
    return torch.rand(batch, num_patches, generator=torch.Generator().manual_seed(seed))
