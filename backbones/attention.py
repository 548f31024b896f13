"""Multi-head self-attention with the options the downstream recipes need.

- fused attention through ``F.scaled_dot_product_attention`` (flash / memory-efficient kernels on
  GPU), or an explicit softmax path (for benchmarks and debugging);
- window attention (ViTDet): the patch grid is split into non-overlapping windows, zero-padded at
  the bottom/right; prefix (cls) tokens are not windowed and attend to every token;
- relative position bias of one of two kinds (``rel_pos_type``):

  * ``"decomposed"`` (MViTv2 / ViTDet): per-axis tables ``rel_pos_h``/``rel_pos_w`` of shape
    ``(2*S-1, head_dim)``, multiplied with the query (the bias depends on the content), linearly
    resized when the attended grid differs; prefix tokens get no bias;
  * ``"beit"`` (BEiT, MAE's segmentation, MMSeg's ``MAE``): one table
    ``relative_position_bias_table`` of shape ``((2*Sh-1)*(2*Sw-1) + 3, heads)`` looked up by the
    2-D offset between two patches (the bias is content-independent), plus three rows for
    cls->patch, patch->cls and cls->cls. A grid smaller than the built one uses the offsets it
    has (the same function restricted to that grid); a larger grid has offsets the table never
    learnt and is refused (resizing is a load-time decision, ``backbones.pos_embed.resize_beit_table``).

Parameter names (``qkv``, ``proj``, ``rel_pos_h``, ``rel_pos_w``, ``relative_position_bias_table``)
are those of the official MAE, timm, Detectron2 and BEiT ViTs, so their checkpoints load without
renaming.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from mae_transfer.backbones.pos_embed import beit_rel_pos_index, beit_table_rows, resize_rel_pos


def _rel_index(q_len: int, k_len: int, table: torch.Tensor) -> torch.Tensor:
    """Gather ``(q_len, k_len, head_dim)`` relative embeddings from a decomposed table."""
    span = 2 * max(q_len, k_len) - 1
    table = resize_rel_pos(table, span)
    q_coords = torch.arange(q_len, device=table.device)[:, None] * max(k_len / q_len, 1.0)
    k_coords = torch.arange(k_len, device=table.device)[None, :] * max(q_len / k_len, 1.0)
    rel = (q_coords - k_coords) + (k_len - 1) * max(q_len / k_len, 1.0)
    return table[rel.long()]


def decomposed_rel_pos_bias(q: torch.Tensor, grid: Tuple[int, int], rel_pos_h: torch.Tensor,
                            rel_pos_w: torch.Tensor) -> torch.Tensor:
    """Additive attention bias ``(B, heads, H*W, H*W)`` from unscaled queries ``(B, heads, H*W, d)``."""
    h, w = grid
    b, heads, _, d = q.shape
    r_h = _rel_index(h, h, rel_pos_h).to(q.dtype)
    r_w = _rel_index(w, w, rel_pos_w).to(q.dtype)
    r_q = q.reshape(b, heads, h, w, d)
    bias_h = torch.einsum("bnyxc,ykc->bnyxk", r_q, r_h)
    bias_w = torch.einsum("bnyxc,xkc->bnyxk", r_q, r_w)
    bias = bias_h[..., :, None] + bias_w[..., None, :]
    return bias.reshape(b, heads, h * w, h * w)


#: The two relative-position-bias kinds (see the module docstring).
REL_POS_TYPES = ("decomposed", "beit")


class Attention(nn.Module):
    """Self-attention over ``(B, P + H*W, C)`` tokens: P prefix tokens, then an HxW patch grid."""

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True, window_size: int = 0,
                 rel_pos_grid: Optional[Tuple[int, int]] = None, fused: bool = True,
                 rel_pos_type: str = "decomposed"):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"embed dim {dim} is not divisible by {num_heads} heads")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim ** -0.5
        self.window_size = window_size
        self.fused = fused
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        if rel_pos_type not in REL_POS_TYPES:
            raise ValueError(f"rel_pos_type must be one of {REL_POS_TYPES}, got {rel_pos_type!r}")
        self.use_rel_pos = rel_pos_grid is not None
        self.rel_pos_type = rel_pos_type
        if not self.use_rel_pos:
            return
        # Tables start at zero (no bias: the pretrained attention), in both kinds.
        span = (window_size, window_size) if window_size else tuple(rel_pos_grid)
        if rel_pos_type == "decomposed":
            self.rel_pos_h = nn.Parameter(torch.zeros(2 * span[0] - 1, self.head_dim))
            self.rel_pos_w = nn.Parameter(torch.zeros(2 * span[1] - 1, self.head_dim))
        else:
            self.table_grid = span
            self.relative_position_bias_table = nn.Parameter(
                torch.zeros(beit_table_rows(span), num_heads))
            # Not persistent: derived from the grid, and kept out of checkpoints as in timm.
            self.register_buffer("relative_position_index",
                                 beit_rel_pos_index(span, span, 0 if window_size else 1),
                                 persistent=False)

    def _split_heads(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        b, n, _ = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        return qkv.unbind(0)

    def _attend(self, q, k, v, bias: Optional[torch.Tensor]) -> torch.Tensor:
        if self.fused:
            return F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
        attn = (q * self.scale) @ k.transpose(-2, -1)
        if bias is not None:
            attn = attn + bias
        return attn.softmax(dim=-1) @ v

    def _grid_bias(self, q: torch.Tensor, grid: Tuple[int, int], num_prefix: int):
        """Relative-position bias for grid queries; zero rows/columns for prefix tokens."""
        if not self.use_rel_pos:
            return None
        if self.rel_pos_type == "beit":
            return self._beit_bias(grid, num_prefix).to(q.dtype)
        bias = decomposed_rel_pos_bias(q[:, :, num_prefix:], grid, self.rel_pos_h, self.rel_pos_w)
        if num_prefix:
            bias = F.pad(bias, (num_prefix, 0, num_prefix, 0))
        return bias

    def _beit_bias(self, grid: Tuple[int, int], num_prefix: int) -> torch.Tensor:
        """``(1, heads, P + h*w, P + h*w)`` bias gathered from the BEiT table."""
        index = self.relative_position_index
        if index.shape[0] != grid[0] * grid[1] + num_prefix or tuple(grid) != self.table_grid:
            index = beit_rel_pos_index(grid, self.table_grid, num_prefix, index.device)
        n = index.shape[0]
        bias = self.relative_position_bias_table[index.reshape(-1)].reshape(n, n, -1)
        return bias.permute(2, 0, 1).unsqueeze(0)

    def forward(self, x: torch.Tensor, grid: Tuple[int, int], num_prefix: int = 0) -> torch.Tensor:
        if self.window_size:
            return self.proj(self._forward_windows(x, grid, num_prefix))
        b, n, c = x.shape
        q, k, v = self._split_heads(x)
        out = self._attend(q, k, v, self._grid_bias(q, grid, num_prefix))
        return self.proj(out.transpose(1, 2).reshape(b, n, c))

    def _forward_windows(self, x: torch.Tensor, grid: Tuple[int, int], num_prefix: int):
        b, _, c = x.shape
        h, w = grid
        ws = self.window_size
        prefix, patches = x[:, :num_prefix], x[:, num_prefix:].reshape(b, h, w, c)
        pad_h, pad_w = (ws - h % ws) % ws, (ws - w % ws) % ws
        # Pad the normed tokens (not q/k/v) with zeros, as ViTDet does, so that its weights give
        # the same function.
        patches = F.pad(patches, (0, 0, 0, pad_w, 0, pad_h))
        hp, wp = h + pad_h, w + pad_w
        windows = patches.reshape(b, hp // ws, ws, wp // ws, ws, c).permute(0, 1, 3, 2, 4, 5)
        windows = windows.reshape(-1, ws * ws, c)
        q, k, v = self._split_heads(windows)
        out = self._attend(q, k, v, self._grid_bias(q, (ws, ws), 0))
        out = out.transpose(1, 2).reshape(b, hp // ws, wp // ws, ws, ws, c)
        out = out.permute(0, 1, 3, 2, 4, 5).reshape(b, hp, wp, c)[:, :h, :w].reshape(b, h * w, c)
        if not num_prefix:
            return out
        # Prefix tokens see the whole (unpadded) sequence.
        pq, pk, pv = self._split_heads(prefix)
        _, gk, gv = self._split_heads(x[:, num_prefix:])
        p_out = self._attend(pq, torch.cat([pk, gk], 2), torch.cat([pv, gv], 2), None)
        p_out = p_out.transpose(1, 2).reshape(b, num_prefix, c)
        return torch.cat([p_out, out], dim=1)
