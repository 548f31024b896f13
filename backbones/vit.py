"""The one Vision Transformer that pretraining, detection and segmentation share.

Built from timm layers (PatchEmbed, Mlp, DropPath) with the parameter names of the official MAE
and timm ViTs (``cls_token``, ``pos_embed``, ``patch_embed.proj``, ``blocks.{i}.norm1``,
``blocks.{i}.attn.qkv`` ...), so released MAE checkpoints load without renaming. With global
attention and no relative bias it computes exactly timm's ``VisionTransformer.forward_features``.

Downstream options: any input size divisible by the patch size (``pos_embed`` resized bicubically
from the pretraining grid), window attention with a list of global blocks, relative position bias
(``rel_pos_type``: ViTDet's decomposed one, or BEiT's table as in MAE's segmentation and MMSeg's
``MAE``), layer scale (BEiT's ``gamma_1``/``gamma_2``), drop path, activation checkpointing, fused
attention. Relative-position tables start at zero and layer scale at a constant, so every option
starts as the same function as the plain ViT (for ``layer_scale_init=1.0``); they train
differently.
"""
from __future__ import annotations

from functools import partial
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn
from timm.layers import DropPath, Mlp, PatchEmbed, resample_abs_pos_embed, trunc_normal_
from torch.utils.checkpoint import checkpoint

from mae_transfer.backbones.attention import Attention
from mae_transfer.backbones.pos_embed import POS_EMBED_RESAMPLING, sincos_2d

#: Named architectures: (patch_size, embed_dim, depth, num_heads). Tiny/mini exist for CPU runs.
VIT_ARCHS: Dict[str, Dict[str, int]] = {
    "vit_mini_patch16": dict(patch_size=16, embed_dim=64, depth=4, num_heads=4),
    "vit_mini_patch8": dict(patch_size=8, embed_dim=64, depth=4, num_heads=4),
    "vit_tiny_patch16": dict(patch_size=16, embed_dim=192, depth=12, num_heads=3),
    "vit_small_patch16": dict(patch_size=16, embed_dim=384, depth=12, num_heads=6),
    "vit_base_patch16": dict(patch_size=16, embed_dim=768, depth=12, num_heads=12),
    "vit_large_patch16": dict(patch_size=16, embed_dim=1024, depth=24, num_heads=16),
    "vit_huge_patch14": dict(patch_size=14, embed_dim=1280, depth=32, num_heads=16),
}

#: Head counts of the standard widths (ViT-Ti 3, S 6, B 12, L 16, H 16, MAE's 512-d decoder 16,
#: our mini 4). No tensor shape records the head count, so a file that carries only tensors
#: (official MAE releases, bare state dicts) is read with these, else with 64-d heads.
STANDARD_HEADS: Dict[int, int] = {64: 4, 192: 3, 384: 6, 512: 16, 768: 12, 1024: 16, 1280: 16}


def standard_num_heads(dim: int) -> int:
    """The head count of a ``dim``-wide ViT or MAE decoder that records none (``STANDARD_HEADS``)."""
    return STANDARD_HEADS.get(dim, max(1, dim // 64))


def _pair(v) -> Tuple[int, int]:
    return (int(v), int(v)) if isinstance(v, int) else (int(v[0]), int(v[1]))


class Block(nn.Module):
    """Pre-norm transformer block: ``x + drop_path(attn(norm1(x)))``, then the MLP likewise.

    With ``layer_scale_init`` (BEiT / CaiT layer scale) each branch is first multiplied
    channel-wise by a learnt ``gamma_1`` / ``gamma_2`` of shape ``(dim,)``, initialised to that value.
    """

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, qkv_bias: bool = True,
                 drop_path: float = 0.0, norm_layer=nn.LayerNorm, window_size: int = 0,
                 rel_pos_grid: Optional[Tuple[int, int]] = None, fused_attn: bool = True,
                 rel_pos_type: str = "decomposed", layer_scale_init: Optional[float] = None):
        super().__init__()
        self.norm1 = norm_layer(dim)
        self.attn = Attention(dim, num_heads, qkv_bias=qkv_bias, window_size=window_size,
                              rel_pos_grid=rel_pos_grid, fused=fused_attn,
                              rel_pos_type=rel_pos_type)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = norm_layer(dim)
        self.mlp = Mlp(in_features=dim, hidden_features=int(dim * mlp_ratio), act_layer=nn.GELU)
        if layer_scale_init is not None:
            self.gamma_1 = nn.Parameter(torch.full((dim,), float(layer_scale_init)))
            self.gamma_2 = nn.Parameter(torch.full((dim,), float(layer_scale_init)))
        else:
            self.gamma_1 = self.gamma_2 = None

    def forward(self, x: torch.Tensor, grid: Tuple[int, int], num_prefix: int) -> torch.Tensor:
        attn = self.attn(self.norm1(x), grid, num_prefix)
        if self.gamma_1 is not None:
            attn = self.gamma_1 * attn
        x = x + self.drop_path(attn)
        mlp = self.mlp(self.norm2(x))
        if self.gamma_2 is not None:
            mlp = self.gamma_2 * mlp
        return x + self.drop_path(mlp)


class VisionTransformer(nn.Module):
    """ViT encoder; see the module docstring. ``arch`` records the config for checkpoint metadata."""

    def __init__(self, img_size=224, patch_size=16, in_chans: int = 3, embed_dim: int = 768,
                 depth: int = 12, num_heads: int = 12, mlp_ratio: float = 4.0,
                 qkv_bias: bool = True, drop_path_rate: float = 0.0, window_size: int = 0,
                 global_blocks: Sequence[int] = (), use_rel_pos: bool = False,
                 rel_pos_type: str = "decomposed", layer_scale_init: Optional[float] = None,
                 use_cls_token: bool = True, final_norm: bool = True,
                 grad_checkpointing: bool = False, fused_attn: bool = True,
                 norm_eps: float = 1e-6):
        super().__init__()  # rel_pos_type is checked by each block's Attention
        self.arch = dict(img_size=_pair(img_size), patch_size=_pair(patch_size), in_chans=in_chans,
                         embed_dim=embed_dim, depth=depth, num_heads=num_heads,
                         mlp_ratio=mlp_ratio, qkv_bias=qkv_bias, window_size=window_size,
                         global_blocks=list(global_blocks), use_rel_pos=use_rel_pos,
                         rel_pos_type=rel_pos_type, layer_scale_init=layer_scale_init,
                         use_cls_token=use_cls_token, final_norm=final_norm)
        self.embed_dim = embed_dim
        self.depth = depth
        self.patch_size = _pair(patch_size)
        self.pretrain_grid = tuple(s // p for s, p in zip(_pair(img_size), self.patch_size))
        self.num_prefix_tokens = 1 if use_cls_token else 0
        self.grad_checkpointing = grad_checkpointing
        norm_layer = partial(nn.LayerNorm, eps=norm_eps)

        self.patch_embed = PatchEmbed(img_size=img_size, patch_size=patch_size, in_chans=in_chans,
                                      embed_dim=embed_dim, output_fmt="NHWC",
                                      strict_img_size=False)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim)) if use_cls_token else None
        # pos_embed always keeps the cls slot, as in MAE checkpoints, so the shapes match them.
        self.pos_embed = nn.Parameter(sincos_2d(embed_dim, self.pretrain_grid, num_prefix=1))
        dpr = [drop_path_rate * i / max(depth - 1, 1) for i in range(depth)]  # linear, as timm
        global_set = set(global_blocks)
        self.blocks = nn.ModuleList([
            Block(embed_dim, num_heads, mlp_ratio, qkv_bias, dpr[i], norm_layer,
                  window_size=0 if i in global_set else window_size,
                  rel_pos_grid=self.pretrain_grid if use_rel_pos else None,
                  fused_attn=fused_attn, rel_pos_type=rel_pos_type,
                  layer_scale_init=layer_scale_init)
            for i in range(depth)])
        self.norm = norm_layer(embed_dim) if final_norm else nn.Identity()
        self._init_weights()

    # --------------------------------------------------------------------------------- init
    def _init_weights(self) -> None:
        """MAE's init: xavier-uniform linears (patch embed as a linear), cls token N(0, 0.02)."""
        w = self.patch_embed.proj.weight
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        if self.cls_token is not None:
            trunc_normal_(self.cls_token, std=0.02)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def set_fused_attn(self, fused: bool) -> None:
        """Switch every block between the fused kernel and explicit softmax attention."""
        for blk in self.blocks:
            blk.attn.fused = fused

    # ------------------------------------------------------------------------------ forward
    def abs_pos(self, grid: Tuple[int, int]) -> torch.Tensor:
        """``pos_embed`` for a ``grid`` of patches (cls slot first), resized as MAE / ViTDet do."""
        return resample_abs_pos_embed(self.pos_embed, grid, self.pretrain_grid,
                                      num_prefix_tokens=1, **POS_EMBED_RESAMPLING)

    def embed(self, x: torch.Tensor) -> Tuple[torch.Tensor, Tuple[int, int]]:
        """Image ``(B, C, H, W)`` -> tokens ``(B, P + h*w, D)`` with position embeddings, and (h, w)."""
        patches = self.patch_embed(x)  # (B, h, w, D)
        b, h, w, d = patches.shape
        pos = self.abs_pos((h, w))
        tokens = patches.reshape(b, h * w, d) + pos[:, 1:]
        if self.cls_token is not None:
            cls = (self.cls_token + pos[:, :1]).expand(b, -1, -1)
            tokens = torch.cat([cls, tokens], dim=1)
        return tokens, (h, w)

    def run_block(self, i: int, x: torch.Tensor, grid: Tuple[int, int]) -> torch.Tensor:
        blk = self.blocks[i]
        if self.grad_checkpointing and self.training and torch.is_grad_enabled():
            return checkpoint(blk, x, grid, self.num_prefix_tokens, use_reentrant=False)
        return blk(x, grid, self.num_prefix_tokens)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Final normed tokens ``(B, P + N, D)``, the cls token first when the model has one."""
        tokens, grid = self.embed(x)
        for i in range(self.depth):
            tokens = self.run_block(i, tokens, grid)
        return self.norm(tokens)

    def forward_maps(self, x: torch.Tensor, out_indices: Optional[Sequence[int]] = None
                     ) -> List[torch.Tensor]:
        """Patch-token maps ``(B, D, h, w)`` after each block in ``out_indices`` (default: last).

        What the detection and segmentation adapters consume; prefix tokens are dropped and the
        final norm (if any) is applied to the last block's output only.
        """
        out_indices = [self.depth - 1] if out_indices is None else list(out_indices)
        tokens, (h, w) = self.embed(x)
        maps = []
        for i in range(max(out_indices) + 1):
            tokens = self.run_block(i, tokens, (h, w))
            if i in out_indices:
                out = self.norm(tokens) if i == self.depth - 1 else tokens
                out = out[:, self.num_prefix_tokens:]
                maps.append(out.transpose(1, 2).reshape(out.shape[0], -1, h, w))
        return maps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_features(x)

    def no_weight_decay(self) -> set:
        return {"pos_embed", "cls_token"}


def vit_kwargs(name: str = "vit_base_patch16", **overrides) -> Dict:
    """Constructor arguments of ``VisionTransformer`` for a named ViT (``VIT_ARCHS``) + overrides.

    Split out of ``build_vit`` for framework backbones that subclass ``VisionTransformer`` (so
    their parameters keep the plain ``blocks.{i}`` names) but resolve names the same way.
    """
    arch_keys = {"patch_size", "embed_dim", "depth", "num_heads"}
    if name in VIT_ARCHS:
        kwargs = dict(VIT_ARCHS[name])
    elif arch_keys <= overrides.keys():
        kwargs = {}
    else:
        raise ValueError(f"unknown ViT {name!r}: choose one of {sorted(VIT_ARCHS)} or give "
                         f"{sorted(arch_keys)} as overrides")
    kwargs.update(overrides)
    return kwargs


def build_vit(name: str = "vit_base_patch16", img_size=224, **overrides) -> VisionTransformer:
    """Build a named ViT (``VIT_ARCHS``) at ``img_size``; any constructor argument can be overridden.

    ``build_vit('custom', patch_size=8, embed_dim=96, depth=3, num_heads=3)`` builds an unnamed
    size: with overrides for all four architecture numbers the name is only a label.
    """
    return VisionTransformer(img_size=img_size, **vit_kwargs(name, **overrides))
