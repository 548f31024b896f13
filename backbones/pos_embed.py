"""Position tables: MAE's 2-D sin-cos ``pos_embed``, and resizing of every table that has a grid.

Absolute (``resize_pos_embed``), decomposed relative (``resize_rel_pos``), BEiT relative
(``beit_rel_pos_index`` to look the table up, ``resize_beit_table``) and the patch kernel
(``resize_patch_kernel``).

Every consumer (pretraining, checkpoint loading, detection and segmentation at other input sizes)
goes through these functions, so a checkpoint's tables mean the same thing everywhere.
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


#: Extra rows at the end of a BEiT table: cls->patch, patch->cls, cls->cls.
BEIT_EXTRA_ROWS = 3


def beit_table_rows(grid: Tuple[int, int]) -> int:
    """Rows of a BEiT table built for ``grid``: one per 2-D offset plus the three cls rows."""
    return (2 * grid[0] - 1) * (2 * grid[1] - 1) + BEIT_EXTRA_ROWS


def beit_rel_pos_index(grid: Tuple[int, int], table_grid: Tuple[int, int], num_prefix: int,
                       device=None) -> torch.Tensor:
    """``(P + h*w, P + h*w)`` row indices into a BEiT table built for ``table_grid``.

    Patch pairs index their offset ``(dy, dx)`` as ``(dy + Sh - 1) * (2*Sw - 1) + dx + Sw - 1``;
    with one prefix (cls) token, row 0 (cls as query) uses the cls->patch row, column 0 (cls as
    key) the patch->cls row and (0, 0) the cls->cls row, as BEiT and MMSeg lay the table out.
    """
    h, w = grid
    sh, sw = table_grid
    if h > sh or w > sw:
        raise ValueError(
            f"a {h}x{w} patch grid is larger than the {sh}x{sw} grid the BEiT relative position "
            f"tables were built for: offsets beyond +-{sh - 1}x{sw - 1} were never learnt. Build "
            f"the model for the larger input (img_size); load_pretrained resizes the tables the "
            f"way BEiT/MMSeg do")
    if num_prefix > 1:
        raise ValueError(f"BEiT relative position bias has rows for one cls token, "
                         f"got {num_prefix} prefix tokens")
    ys, xs = torch.meshgrid(torch.arange(h, device=device), torch.arange(w, device=device),
                            indexing="ij")
    ys, xs = ys.flatten(), xs.flatten()
    dy = ys[:, None] - ys[None, :] + sh - 1
    dx = xs[:, None] - xs[None, :] + sw - 1
    index = dy * (2 * sw - 1) + dx
    if not num_prefix:
        return index
    grid_rows = (2 * sh - 1) * (2 * sw - 1)
    index = F.pad(index, (1, 0, 1, 0))
    index[0, :] = grid_rows          # cls -> patch
    index[:, 0] = grid_rows + 1      # patch -> cls
    index[0, 0] = grid_rows + 2      # cls -> cls
    return index


def _geometric_offsets(src_side: int, dst_side: int):
    """Where BEiT puts a ``src_side``-long table's offsets when stretching it to ``dst_side``.

    The source offsets ``-(n)..n`` (``n = src_side // 2``) are spread with gaps 1, q, q^2, ...
    outwards from 0, q chosen by bisection in [1.01, 1.5] so that the outermost one lands near
    ``dst_side // 2``: offsets near 0 keep (almost) unit spacing, the far ones are spread. As in
    BEiT's and MMSeg's loaders, q is the last bisection midpoint (tolerance 1e-6), so a shrink
    (dst < src) gets q ~ 1.01: a near crop of the central offsets.
    """
    n = src_side // 2
    left, right = 1.01, 1.5
    while right - left > 1e-6:
        q = (left + right) / 2.0
        if (1.0 - q ** n) / (1.0 - q) > dst_side // 2:
            right = q
        else:
            left = q
    gaps = [q ** i for i in range(n)]
    pos = [sum(gaps[:i + 1]) for i in range(n)]
    src = [-p for p in reversed(pos)] + [0.0] + pos
    half = dst_side // 2
    return src, [float(i) for i in range(-half, half + 1)]


def resize_beit_table(table: torch.Tensor, grid: Sequence[int]) -> torch.Tensor:
    """Resize a BEiT relative-position table ``((2S-1)^2 + 3, heads)`` to a model built for ``grid``.

    The load-time resize of BEiT's and MMSeg's loaders (``resize_rel_pos_embed``): the offset
    square is re-sampled per head with a bicubic interpolating spline on geometrically spread
    source offsets (``_geometric_offsets``), so the centre (small offsets, what attention uses
    most) is preserved and the rim stretched; the three cls rows are kept. Their loaders call
    SciPy's ``interp2d`` (removed in SciPy 1.14); the same spline (s=0, cubic both ways) is
    ``RectBivariateSpline``. The source grid must be square (it is read from the row count); the
    target may be any ``(h, w)``: each axis is stretched on its own.
    """
    import numpy as np
    from scipy.interpolate import RectBivariateSpline

    extra = BEIT_EXTRA_ROWS
    rows, heads = table.shape
    side = math.isqrt(rows - extra)
    if side * side != rows - extra or side % 2 == 0:
        raise ValueError(f"a BEiT relative position table of {rows} rows is not (2S-1)^2 + 3 "
                         f"for a square grid S")
    dst_h, dst_w = 2 * int(grid[0]) - 1, 2 * int(grid[1]) - 1
    if (side, side) == (dst_h, dst_w):
        return table
    src_y, out_y = _geometric_offsets(side, dst_h)
    src_x, out_x = _geometric_offsets(side, dst_w)
    offsets = table[:-extra].detach().double().reshape(side, side, heads).numpy()
    resized = [RectBivariateSpline(src_y, src_x, offsets[:, :, i], kx=3, ky=3, s=0)(out_y, out_x)
               for i in range(heads)]
    resized = torch.from_numpy(np.stack(resized, axis=-1))
    return torch.cat([resized.reshape(dst_h * dst_w, heads).to(table.dtype), table[-extra:]])


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
