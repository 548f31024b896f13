"""Patch pixels and random masking: the tensor bookkeeping of MAE, kept free of any module state.

Conventions (official MAE, so that ``decoder_pred`` weights mean the same thing in its checkpoints
and ours): a patch's pixel vector is ordered (row in patch, column in patch, channel); patches are
in row-major grid order. The mask is 1 for a hidden (masked) patch and 0 for a visible one, in the
original patch order.

Masking is driven by a noise tensor supplied by the caller (one value per patch; the patches with
the smallest noise stay visible). Keeping the noise outside the model makes the masks reproducible
(the data loader draws them from a per-sample seed) and keeps random number generation out of a
``torch.compile`` graph.
"""
from __future__ import annotations

from typing import NamedTuple, Tuple

import torch


def patchify(imgs: torch.Tensor, patch_size: Tuple[int, int]) -> torch.Tensor:
    """Images ``(B, C, H, W)`` -> patch pixels ``(B, h*w, ph*pw*C)``."""
    b, c, H, W = imgs.shape
    ph, pw = patch_size
    if H % ph or W % pw:
        raise ValueError(f"image size {H}x{W} is not divisible by the patch size {ph}x{pw}")
    h, w = H // ph, W // pw
    x = imgs.reshape(b, c, h, ph, w, pw).permute(0, 2, 4, 3, 5, 1)
    return x.reshape(b, h * w, ph * pw * c)


def unpatchify(patches: torch.Tensor, patch_size: Tuple[int, int], grid: Tuple[int, int],
               channels: int = 3) -> torch.Tensor:
    """Patch pixels ``(B, h*w, ph*pw*C)`` -> images ``(B, C, h*ph, w*pw)``; undoes ``patchify``."""
    b = patches.shape[0]
    (ph, pw), (h, w) = patch_size, grid
    if patches.shape[1:] != (h * w, ph * pw * channels):
        raise ValueError(f"patches of shape {tuple(patches.shape)} do not fit grid {h}x{w}, "
                         f"patch {ph}x{pw}, {channels} channels")
    x = patches.reshape(b, h, w, ph, pw, channels).permute(0, 5, 1, 3, 2, 4)
    return x.reshape(b, channels, h * ph, w * pw)


def num_visible(num_patches: int, mask_ratio: float) -> int:
    """Patches kept visible: ``int(N * (1 - ratio))`` as in MAE (at least one)."""
    if not 0.0 <= mask_ratio < 1.0:
        raise ValueError(f"mask ratio must be in [0, 1), got {mask_ratio}")
    # The epsilon absorbs float error (e.g. 196 * (1 - 0.7) = 58.800000000000004 -> 58).
    return max(1, int(num_patches * (1.0 - mask_ratio) + 1e-6))


class Masking(NamedTuple):
    """One batch's masking: which patches to keep, how to undo the shuffle, and the binary mask."""

    ids_keep: torch.Tensor     # (B, n_visible) indices of visible patches, in shuffled order
    ids_restore: torch.Tensor  # (B, N) position of each original patch in the shuffled order
    mask: torch.Tensor         # (B, N) 1 = masked, 0 = visible, original order


def masking_from_noise(noise: torch.Tensor, mask_ratio: float) -> Masking:
    """Per-sample random masking: argsort the noise, keep the ``num_visible`` smallest."""
    b, n = noise.shape
    keep = num_visible(n, mask_ratio)
    ids_shuffle = torch.argsort(noise, dim=1)
    ids_restore = torch.argsort(ids_shuffle, dim=1)
    mask = torch.ones(b, n, device=noise.device, dtype=torch.float32)
    mask[:, :keep] = 0
    mask = torch.gather(mask, 1, ids_restore)
    return Masking(ids_shuffle[:, :keep], ids_restore, mask)


def gather_tokens(x: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """Rows ``ids`` (B, K) of each sample of ``x`` (B, N, D) -> (B, K, D)."""
    return torch.gather(x, 1, ids.unsqueeze(-1).expand(-1, -1, x.shape[-1]))


def restore_order(visible: torch.Tensor, fill: torch.Tensor, ids_restore: torch.Tensor
                  ) -> torch.Tensor:
    """Undo the shuffle: visible tokens (B, K, D) back in place, ``fill`` (1, 1, D) elsewhere.

    Returns (B, N, D) in the original patch order, as the decoder needs it.
    """
    b, k, d = visible.shape
    n = ids_restore.shape[1]
    tokens = torch.cat([visible, fill.to(visible.dtype).expand(b, n - k, d)], dim=1)
    return gather_tokens(tokens, ids_restore)


def reconstruction_loss(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor,
                        norm_pix: bool = False, eps: float = 1e-6) -> torch.Tensor:
    """Mean squared error over the masked patches only (per-patch mean first, as in MAE).

    ``norm_pix`` normalises each target patch by its own mean and variance (the paper's better
    representation); computed in float32 whatever the autocast dtype.
    """
    pred, target = pred.float(), target.float()
    if norm_pix:
        target = normalize_patches(target, eps)
    per_patch = (pred - target).pow(2).mean(dim=-1)
    return (per_patch * mask).sum() / mask.sum().clamp_min(1.0)


def normalize_patches(patches: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Each patch vector minus its mean, divided by ``sqrt(var + eps)`` (unbiased var, as MAE)."""
    mean = patches.mean(dim=-1, keepdim=True)
    var = patches.var(dim=-1, keepdim=True)
    return (patches - mean) / (var + eps).sqrt()
