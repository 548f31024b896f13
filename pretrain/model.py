"""The masked autoencoder: the shared ViT as encoder, plus MAE's light decoder.

``MaskedAutoencoderViT`` *is* a ``backbones.VisionTransformer`` (subclass): the encoder's
parameters are the shared ViT's own (``patch_embed``, ``cls_token``, ``pos_embed``, ``blocks``,
``norm``), and the decoder's carry the official MAE names (``mask_token``, ``decoder_embed``,
``decoder_pos_embed``, ``decoder_blocks.{i}``, ``decoder_norm``, ``decoder_pred``). So a full
state dict of ours reads like an official MAE checkpoint, ``load_pretrained`` takes it directly
(dropping the decoder), and the encoder exports to the canonical format without renaming.

Pretraining as in He et al. 2021: fixed 2-D sin-cos position embeddings (frozen), a random 25% of
patches kept per sample, the encoder run on those only, mask tokens appended and unshuffled, a
decoder predicting every patch's pixels, MSE on the masked patches.
"""
from __future__ import annotations

from functools import partial
from typing import Dict, NamedTuple, Optional, Tuple

import torch
import torch.nn as nn

from mae_transfer.backbones.vit import VIT_ARCHS, Block, VisionTransformer
from mae_transfer.pretrain.masking import (gather_tokens, masking_from_noise, patchify,
                              reconstruction_loss, restore_order)
from mae_transfer.tools.checkpoints import split_encoder
from mae_transfer.backbones.pos_embed import sincos_2d

#: name -> (encoder ViT name, decoder (embed_dim, depth, num_heads)). The paper's decoder is
#: 512-d x 8 blocks; mini and tiny get smaller ones, so that the decoder stays lighter than the
#: encoder (its point) and CPU runs stay fast.
MAE_MODELS: Dict[str, Tuple[str, Tuple[int, int, int]]] = {
    "mae_vit_mini_patch16": ("vit_mini_patch16", (64, 2, 4)),
    "mae_vit_mini_patch8": ("vit_mini_patch8", (64, 2, 4)),
    "mae_vit_tiny_patch16": ("vit_tiny_patch16", (256, 4, 8)),
    "mae_vit_small_patch16": ("vit_small_patch16", (512, 8, 16)),
    "mae_vit_base_patch16": ("vit_base_patch16", (512, 8, 16)),
    "mae_vit_large_patch16": ("vit_large_patch16", (512, 8, 16)),
    "mae_vit_huge_patch14": ("vit_huge_patch14", (512, 8, 16)),
}

#: Encoder options that make no sense for pretraining on visible tokens only.
_UNSUPPORTED = ("window_size", "global_blocks", "use_rel_pos")


class MAEOutput(NamedTuple):
    loss: torch.Tensor  # scalar, float32
    pred: torch.Tensor  # (B, N, ph*pw*C) predicted pixels (normalised per patch with norm_pix_loss)
    mask: torch.Tensor  # (B, N) 1 = masked


class MaskedAutoencoderViT(VisionTransformer):
    """MAE around the shared ViT; see the module docstring.

    ``mask_tokens_in_encoder=True`` builds the paper's ablation (Table 1c, "encoder w/ [M]"): the
    encoder sees every patch, masked ones replaced by a learned token, and the decoder gets no
    mask tokens. Only the throughput benchmark uses it, to measure what encoding the visible
    patches alone saves.
    """

    def __init__(self, img_size=224, patch_size=16, embed_dim: int = 768, depth: int = 12,
                 num_heads: int = 12, mlp_ratio: float = 4.0, in_chans: int = 3,
                 decoder_embed_dim: int = 512, decoder_depth: int = 8,
                 decoder_num_heads: int = 16, norm_pix_loss: bool = False,
                 mask_tokens_in_encoder: bool = False, fused_attn: bool = True,
                 norm_eps: float = 1e-6, **vit_kwargs):
        bad = [k for k in _UNSUPPORTED if vit_kwargs.get(k)]
        if bad:
            raise ValueError(f"MAE pretraining needs global attention without relative position "
                             f"bias; unsupported options: {bad}")
        super().__init__(img_size=img_size, patch_size=patch_size, in_chans=in_chans,
                         embed_dim=embed_dim, depth=depth, num_heads=num_heads,
                         mlp_ratio=mlp_ratio, fused_attn=fused_attn, norm_eps=norm_eps,
                         **vit_kwargs)
        #: Everything needed to rebuild this model (stored in training checkpoints).
        self.config = dict(img_size=list(self.arch["img_size"]),
                           patch_size=list(self.arch["patch_size"]), embed_dim=embed_dim,
                           depth=depth, num_heads=num_heads, mlp_ratio=mlp_ratio,
                           in_chans=in_chans, decoder_embed_dim=decoder_embed_dim,
                           decoder_depth=decoder_depth, decoder_num_heads=decoder_num_heads,
                           norm_pix_loss=norm_pix_loss,
                           mask_tokens_in_encoder=mask_tokens_in_encoder, norm_eps=norm_eps,
                           **vit_kwargs)
        self.norm_pix_loss = norm_pix_loss
        self.in_chans = in_chans
        self.decoder_config = dict(decoder_embed_dim=decoder_embed_dim,
                                   decoder_depth=decoder_depth,
                                   decoder_num_heads=decoder_num_heads)
        # Fixed sin-cos position embeddings: frozen, as in MAE.
        self.pos_embed.requires_grad_(False)
        norm_layer = partial(nn.LayerNorm, eps=norm_eps)
        self.encoder_mask_token = (nn.Parameter(torch.zeros(1, 1, embed_dim))
                                   if mask_tokens_in_encoder else None)

        self.decoder_embed = nn.Linear(embed_dim, decoder_embed_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, decoder_embed_dim))
        self.decoder_pos_embed = nn.Parameter(
            sincos_2d(decoder_embed_dim, self.pretrain_grid, num_prefix=1), requires_grad=False)
        self.decoder_blocks = nn.ModuleList([
            Block(decoder_embed_dim, decoder_num_heads, mlp_ratio, qkv_bias=True,
                  norm_layer=norm_layer, fused_attn=fused_attn)
            for _ in range(decoder_depth)])
        self.decoder_norm = norm_layer(decoder_embed_dim)
        self.decoder_pred = nn.Linear(decoder_embed_dim,
                                      self.patch_size[0] * self.patch_size[1] * in_chans)
        self._init_decoder()

    def _init_decoder(self) -> None:
        """MAE's init for the new parts: xavier-uniform linears, tokens N(0, 0.02), unit norms."""
        for tok in (self.mask_token, self.encoder_mask_token):
            if tok is not None:
                nn.init.normal_(tok, std=0.02)
        for name, m in self.named_modules():
            if not name.startswith("decoder_"):
                continue
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def set_fused_attn(self, fused: bool) -> None:
        super().set_fused_attn(fused)
        for blk in self.decoder_blocks:
            blk.attn.fused = fused

    @property
    def num_patches(self) -> int:
        return self.pretrain_grid[0] * self.pretrain_grid[1]

    # ------------------------------------------------------------------------------ forward
    def forward_encoder(self, imgs: torch.Tensor, mask_ratio: float, noise: torch.Tensor
                        ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Encode the visible patches: ``(latent (B, P + n_visible, D), mask, ids_restore)``."""
        tokens, grid = self.embed(imgs)
        self._check_grid(grid)
        p = self.num_prefix_tokens
        prefix, patches = tokens[:, :p], tokens[:, p:]
        masking = masking_from_noise(noise, mask_ratio)
        if self.encoder_mask_token is None:
            patches = gather_tokens(patches, masking.ids_keep)
        else:
            token = (self.encoder_mask_token + self.pos_embed[:, 1:]).to(patches.dtype)
            patches = torch.where(masking.mask.unsqueeze(-1).bool(), token, patches)
        x = torch.cat([prefix, patches], dim=1)
        # Global attention without relative bias ignores the grid, so a visible-only sequence is
        # fine; the grid is passed for the blocks' signature.
        for i in range(self.depth):
            x = self.run_block(i, x, grid)
        return self.norm(x), masking.mask, masking.ids_restore

    def forward_decoder(self, latent: torch.Tensor, ids_restore: torch.Tensor) -> torch.Tensor:
        """Append mask tokens, unshuffle, decode: predicted pixels ``(B, N, ph*pw*C)``."""
        x = self.decoder_embed(latent)
        p = self.num_prefix_tokens
        prefix, visible = x[:, :p], x[:, p:]
        if visible.shape[1] < ids_restore.shape[1]:  # encoder saw the visible patches only
            visible = restore_order(visible, self.mask_token, ids_restore)
        pos = self.decoder_pos_embed
        x = torch.cat([prefix, visible], dim=1) + (pos if p else pos[:, 1:])
        for blk in self.decoder_blocks:
            if self.grad_checkpointing and self.training and torch.is_grad_enabled():
                x = torch.utils.checkpoint.checkpoint(blk, x, self.pretrain_grid, p,
                                                      use_reentrant=False)
            else:
                x = blk(x, self.pretrain_grid, p)
        return self.decoder_pred(self.decoder_norm(x))[:, p:]

    def forward(self, imgs: torch.Tensor, mask_ratio: float = 0.75,
                noise: Optional[torch.Tensor] = None) -> MAEOutput:
        """Loss on the masked patches, predictions and mask for normalised images ``imgs``.

        ``noise`` (B, N) decides the masking (smallest values stay visible); drawn from the global
        RNG when not given. The training loop passes noise made by the data loader.
        """
        if noise is None:
            noise = torch.rand(imgs.shape[0], self.num_patches, device=imgs.device)
        latent, mask, ids_restore = self.forward_encoder(imgs, mask_ratio, noise)
        pred = self.forward_decoder(latent, ids_restore)
        target = patchify(imgs, self.patch_size)
        loss = reconstruction_loss(pred, target, mask, self.norm_pix_loss)
        return MAEOutput(loss, pred, mask)

    def _check_grid(self, grid: Tuple[int, int]) -> None:
        if tuple(grid) != tuple(self.pretrain_grid):
            raise ValueError(f"MAE was built for {self.arch['img_size']} images "
                             f"({self.pretrain_grid} patches); got a {grid} patch grid")

    # ------------------------------------------------------------------------------- export
    def encoder_state_dict(self) -> Dict[str, torch.Tensor]:
        """The encoder's tensors under the shared ViT's names (decoder and mask tokens removed)."""
        state, _ = split_encoder(self.state_dict())
        state.pop("encoder_mask_token", None)
        return state


def mae_config(name: str, **overrides) -> dict:
    """Constructor arguments of a named MAE (``MAE_MODELS``) with ``overrides`` applied."""
    if name not in MAE_MODELS:
        raise ValueError(f"unknown MAE model {name!r}; choose one of {sorted(MAE_MODELS)}")
    vit_name, (dec_dim, dec_depth, dec_heads) = MAE_MODELS[name]
    cfg = dict(VIT_ARCHS[vit_name], decoder_embed_dim=dec_dim, decoder_depth=dec_depth,
               decoder_num_heads=dec_heads)
    cfg.update(overrides)
    return cfg


def build_mae(name: str = "mae_vit_base_patch16", img_size=224, **overrides
              ) -> MaskedAutoencoderViT:
    """Build a named MAE at ``img_size``; any constructor argument can be overridden."""
    model = MaskedAutoencoderViT(img_size=img_size, **mae_config(name, **overrides))
    model.config["name"] = name
    return model


def mae_from_config(config: dict) -> MaskedAutoencoderViT:
    """Rebuild a model from its ``config`` (as stored in a training checkpoint)."""
    kwargs = {k: v for k, v in config.items() if k != "name"}
    model = MaskedAutoencoderViT(**kwargs)
    if "name" in config:
        model.config["name"] = config["name"]
    return model


def encoder_name(mae_name: str) -> str:
    """``build_vit`` name of a named MAE's encoder: ``mae_vit_base_patch16`` -> ``vit_base_patch16``."""
    return MAE_MODELS[mae_name][0]
