"""Rebuild a whole MAE (encoder and decoder) from a checkpoint file, for pictures and evaluation.

Our training checkpoints carry the model's constructor arguments (``meta['model_config']``).
Official MAE checkpoints with a decoder (e.g. the released ``mae_visualize_vit_large.pth``) carry
only tensors: the architecture is then read off the shapes, and the head counts, which no shape
records, come from the standard sizes (ViT-Ti 3, S 6, B 12, L 16, H 16; decoder 512-d: 16),
falling back to 64-dimensional heads.
"""
from __future__ import annotations

import math
import os
import re
from typing import Dict

import torch

from mae_transfer.backbones.checkpoint_reader import read_weights
from mae_transfer.backbones.vit import standard_num_heads
from mae_transfer.pretrain.model import MaskedAutoencoderViT, mae_from_config
from mae_transfer.tools.checkpoints import CheckpointError


def _count(state: Dict[str, torch.Tensor], prefix: str) -> int:
    pattern = re.compile(rf"^{re.escape(prefix)}\.(\d+)\.")
    ids = {int(m.group(1)) for k in state if (m := pattern.match(k))}
    return max(ids) + 1 if ids else 0


def infer_config(state: Dict[str, torch.Tensor]) -> dict:
    """Constructor arguments of ``MaskedAutoencoderViT`` read off an MAE state dict's shapes."""
    needed = ("patch_embed.proj.weight", "pos_embed", "decoder_embed.weight", "decoder_pred.weight")
    missing = [k for k in needed if k not in state]
    if missing:
        raise CheckpointError(f"not a full MAE checkpoint (no {', '.join(missing)}): an encoder "
                              f"export has no decoder to reconstruct with")
    dim, in_chans, ph, pw = state["patch_embed.proj.weight"].shape
    num_patches = state["pos_embed"].shape[1] - 1
    side = math.isqrt(num_patches)
    if side * side != num_patches:
        raise CheckpointError(f"cannot infer a square image size from {num_patches} patches")
    dec_dim = state["decoder_embed.weight"].shape[0]
    return dict(img_size=[side * ph, side * pw], patch_size=[ph, pw], embed_dim=dim,
                depth=_count(state, "blocks"), num_heads=standard_num_heads(dim),
                mlp_ratio=state["blocks.0.mlp.fc1.weight"].shape[0] / dim, in_chans=in_chans,
                decoder_embed_dim=dec_dim, decoder_depth=_count(state, "decoder_blocks"),
                decoder_num_heads=standard_num_heads(dec_dim), norm_pix_loss=False)


def load_mae(path: str | os.PathLike, norm_pix_loss: bool | None = None) -> MaskedAutoencoderViT:
    """A ``MaskedAutoencoderViT`` with the weights of ``path`` (ours or official MAE).

    Read once by the one reader (``part="all"``: encoder and decoder under their own names), then
    fitted to the MAE the file describes; a file that does not fill it exactly is refused.
    """
    weights = read_weights(path, part="all")
    config = dict(weights.meta.get("model_config") or infer_config(weights.state))
    if norm_pix_loss is not None:
        config["norm_pix_loss"] = norm_pix_loss
    model = mae_from_config(config)
    fitted = read_weights(weights, model, part="all", target="the MAE it describes")
    report = fitted.report
    if report.missing_keys or report.unexpected_keys:
        raise CheckpointError(f"{path} does not match the MAE it describes: missing "
                              f"{report.missing_keys[:5]}, unexpected {report.unexpected_keys[:5]}")
    fitted.load_into(model)
    return model.eval()
