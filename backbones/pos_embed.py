"""Position tables: MAE's 2-D sin-cos ``pos_embed``, and resizing of every table that has a grid.

What timm computes the same way comes from timm, called with the arguments of the reference
recipe: absolute ``pos_embed`` (``resample_abs_pos_embed`` with ``POS_EMBED_RESAMPLING``), the
patch kernel (``resample_patch_embed`` with ``PATCH_KERNEL_RESAMPLING``) and the BEiT index
(``gen_relative_position_index``, inside ``beit_rel_pos_index``). Kept here: the decomposed
relative tables (``resize_rel_pos``) and the BEiT table resize (``resize_beit_table``), whose
reference arithmetic (MMSeg's cubic spline) timm does not reproduce.

Every consumer (pretraining, checkpoint loading, detection and segmentation at other input sizes)
goes through these, so a checkpoint's tables mean the same thing everywhere.
Layout convention (official MAE / timm): ``(1, num_prefix + gh * gw, C)``, prefix (cls) rows
first, then the grid in row-major order.
"""
from __future__ import annotations

import math
from typing import Sequence, Tuple

import torch
import torch.nn.functional as F
from timm.layers import gen_relative_position_index


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


#: Keyword arguments for timm's ``resample_abs_pos_embed`` that make it compute what the official
#: MAE (facebookresearch/mae ``util/pos_embed.py``, ``interpolate_pos_embed``) and ViTDet
#: (facebookresearch/detectron2 ``detectron2/modeling/backbone/utils.py``, ``get_abs_pos``) compute:
#: ``F.interpolate(mode="bicubic", align_corners=False)`` on the grid, no antialiasing, prefix
#: rows kept. timm's default (``antialias=True``) uses another cubic kernel (a=-0.5, not -0.75)
#: and would shift every fine-tuned checkpoint's position embeddings. (align_corners is left to
#: F.interpolate's default, False: older timm 1.0 releases have no such argument.)
POS_EMBED_RESAMPLING = {"interpolation": "bicubic", "antialias": False}

#: Keyword arguments for timm's ``resample_patch_embed`` (PI-resize, FlexiViT) as its authors
#: resize patches (google-research/big_vision ``big_vision/models/proj/flexi/vit.py``,
#: ``resample_patchemb``: bilinear, half-pixel centres, no antialiasing), rather than timm's
#: default bicubic with antialiasing.
PATCH_KERNEL_RESAMPLING = {"interpolation": "bilinear", "antialias": False}


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

    timm's ``gen_relative_position_index`` (BEiT's and MMSeg's layout): patch pairs index their
    offset ``(dy, dx)`` as ``(dy + Sh - 1) * (2*Sw - 1) + dx + Sw - 1``; with one prefix (cls)
    token, row 0 (cls as query) uses the cls->patch row, column 0 (cls as key) the patch->cls row
    and (0, 0) the cls->cls row. timm builds it only for the table's own grid; a smaller grid
    (a smaller input) uses the rows of its own offsets, i.e. the sub-matrix of its patches.
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
    # timm's index for the table's own grid (BEiT's layout, cls rows last), restricted to the
    # patches of the smaller grid: their offsets index the same rows.
    full = gen_relative_position_index((sh, sw), class_token=bool(num_prefix)).to(device)
    if (h, w) == (sh, sw):
        return full
    ys, xs = torch.meshgrid(torch.arange(h, device=device), torch.arange(w, device=device),
                            indexing="ij")
    keep = (ys * sw + xs).flatten() + num_prefix
    if num_prefix:
        keep = torch.cat([keep.new_zeros(1), keep])
    return full[keep][:, keep]


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

    Reproduces the load-time resize of open-mmlab/mmsegmentation ``mmseg/models/backbones/beit.py``
    (``BEiT.resize_rel_pos_embed`` -> ``_geometric_sequence_interpolation``, which MMSeg's ``MAE``
    inherits; from microsoft/unilm ``beit/semantic_segmentation/mmcv_custom/checkpoint.py``): the
    offset square is re-sampled per head with a bicubic interpolating spline on geometrically
    spread source offsets (``_geometric_offsets``), so the centre (small offsets, what attention
    uses most) is preserved and the rim stretched; the three cls rows are kept. MMSeg calls
    SciPy's ``interp2d(kind='cubic')`` (removed in SciPy 1.14); the same spline (s=0, cubic both
    ways) is ``RectBivariateSpline``. timm's ``resize_rel_pos_bias_table`` spreads the offsets
    the same way but interpolates linearly (SciPy only behind an environment variable), so its
    tables differ: not used. The source grid must be square (it is read from the row count); the
    target may be any ``(h, w)`` (MMSeg refuses non-square): each axis is stretched on its own.
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
