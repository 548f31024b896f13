"""Absolute position embeddings: the fixed 2-D sin-cos table MAE uses, and bicubic grid resizing.

Every consumer (pretraining, checkpoint loading, detection and segmentation at other input sizes)
goes through these two functions, so a checkpoint's ``pos_embed`` means the same thing everywhere.
Layout convention (official MAE / timm): ``(1, num_prefix + gh * gw, C)``, prefix (cls) rows
first, then the grid in row-major order.
"""
from __future__ import annotations

import math
from typing import Sequence, Tuple

import torch
import torch.nn.functional as F


def _sincos_1d(dim: int, positions: torch.Tensor) -> torch.Tensor:
    """(len(positions), dim) table: first half sin, second half cos, geometric frequencies."""
    if dim % 2:
        raise ValueError(f"sin-cos embedding needs an even dimension, got {dim}")
    omega = 1.0 / 10000 ** (torch.arange(dim // 2, dtype=torch.float64) / (dim / 2.0))
    angles = positions.to(torch.float64)[:, None] * omega[None, :]
    return torch.cat([angles.sin(), angles.cos()], dim=1)


def sincos_2d(embed_dim: int, grid: Tuple[int, int], num_prefix: int = 1) -> torch.Tensor:
    """Fixed 2-D sin-cos position embedding, shape ``(1, num_prefix + gh*gw, embed_dim)``.

    As in MAE: the first half of the channels encodes the column (x) coordinate, the second half
    the row (y) coordinate; prefix (cls) tokens get zeros.
    """
    if embed_dim % 4:
        raise ValueError(f"2-D sin-cos embedding needs embed_dim % 4 == 0, got {embed_dim}")
    gh, gw = grid
    ys, xs = torch.meshgrid(torch.arange(gh), torch.arange(gw), indexing="ij")
    emb = torch.cat([_sincos_1d(embed_dim // 2, xs.flatten()),
                     _sincos_1d(embed_dim // 2, ys.flatten())], dim=1)
    emb = torch.cat([torch.zeros(num_prefix, embed_dim, dtype=emb.dtype), emb], dim=0)
    return emb.float().unsqueeze(0)


def infer_grid(num_tokens: int, num_prefix: int | None = None,
               hint: Tuple[int, int] | None = None) -> Tuple[int, Tuple[int, int]]:
    """Split a pos_embed length into (num_prefix, grid).

    ``hint`` (e.g. the model's own grid aspect ratio) resolves non-square grids; otherwise the grid
    is taken square, and a length that is a square plus one means one cls slot.
    """
    candidates = [num_prefix] if num_prefix is not None else [1, 0]
    for prefix in candidates:
        n = num_tokens - prefix
        if hint is not None and hint[0] * hint[1] == n:
            return prefix, tuple(hint)
        side = math.isqrt(n) if n > 0 else 0
        if side * side == n and n > 0:
            return prefix, (side, side)
    raise ValueError(f"cannot read a grid from a pos_embed of {num_tokens} tokens")


def resize_pos_embed(pos_embed: torch.Tensor, new_grid: Sequence[int],
                     old_grid: Sequence[int] | None = None, num_prefix: int = 1) -> torch.Tensor:
    """Resize the grid part of ``pos_embed`` bicubically (align_corners=False); prefix rows kept.

    Same arithmetic as the official MAE ``interpolate_pos_embed`` and ViTDet's ``get_abs_pos``,
    so results match checkpoints fine-tuned with either.
    """
    new_grid = tuple(int(g) for g in new_grid)
    if old_grid is None:
        num_prefix, old_grid = infer_grid(pos_embed.shape[1], num_prefix)
    old_grid = tuple(int(g) for g in old_grid)
    if old_grid == new_grid:
        return pos_embed
    prefix, grid = pos_embed[:, :num_prefix], pos_embed[:, num_prefix:]
    dim = grid.shape[-1]
    grid = grid.reshape(1, old_grid[0], old_grid[1], dim).permute(0, 3, 1, 2)
    grid = F.interpolate(grid.float(), size=new_grid, mode="bicubic", align_corners=False)
    grid = grid.permute(0, 2, 3, 1).reshape(1, new_grid[0] * new_grid[1], dim).to(pos_embed.dtype)
    return torch.cat([prefix, grid], dim=1)


def resize_rel_pos(table: torch.Tensor, length: int) -> torch.Tensor:
    """Linearly resize a relative-position table ``(2*S-1, head_dim)`` to ``length`` rows."""
    if table.shape[0] == length:
        return table
    resized = F.interpolate(table.float().t().unsqueeze(0), size=length, mode="linear")
    return resized.squeeze(0).t().to(table.dtype)


def resize_patch_kernel(weight: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Resize a patch-embedding kernel ``(C, in, h, w)`` to ``size`` = (H, W), PI-resize style.

    Why not plain interpolation of the kernel: a patch of H x W pixels holds more pixels than one
    of h x w, so an interpolated kernel changes the token scale. PI-resize (FlexiViT, Beyer et al.
    2023) instead solves for the kernel that gives, on a patch bilinearly resized from h x w to
    H x W, the same token the old kernel gave on the original patch: ``w' = pinv(B)^T w``, with B
    the (H*W, h*w) bilinear resize matrix. Exact when upsampling (e.g. MAE ViT-H's 14x14 patches
    to the 16x16 a stride-16 detector needs), least-squares when downsampling.
    """
    out_ch, in_ch, h, w = weight.shape
    new_h, new_w = int(size[0]), int(size[1])
    if (h, w) == (new_h, new_w):
        return weight
    basis = torch.eye(h * w, dtype=torch.float64).reshape(h * w, 1, h, w)
    resize = F.interpolate(basis, size=(new_h, new_w), mode="bilinear", align_corners=False)
    resize = resize.reshape(h * w, new_h * new_w).T  # B: (H*W, h*w)
    flat = weight.detach().to(torch.float64).reshape(out_ch * in_ch, h * w)
    new = flat @ torch.linalg.pinv(resize)  # rows: (pinv(B)^T w)^T
    return new.reshape(out_ch, in_ch, new_h, new_w).to(weight.dtype)
