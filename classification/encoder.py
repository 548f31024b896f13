"""The encoder of a classification run: our ViT under official MAE's ``--model`` names, and its
pretrained weights read through the one checkpoint reader.

``--model`` takes official MAE's names (``vit_base_patch16``, ``vit_large_patch16``,
``vit_huge_patch14``; ``models_vit.py``), which are our ``VIT_ARCHS`` names too, plus the
CPU-sized ones and the ``mae_``-prefixed names pretraining uses (``mae_vit_base_patch16`` means
its encoder). ``load_encoder_weights`` reads ``--finetune CKPT`` in any layout
``read_weights`` takes (our ``encoder.safetensors`` / training checkpoints, official MAE releases,
timm, Detectron2, MMSeg, ...), resizes ``pos_embed`` to the run's ``--input_size``, logs the
report (missing / unexpected keys by name) and refuses an encoder of another size (width, depth
or patch) with one line: a classification run is judged by its encoder, and a ViT-L file
half-loaded into a ViT-B (or a 12-block file filling the first blocks of a 24-block model, which
the reader allows for detection) is never what a user meant.
"""
from __future__ import annotations

import logging
import os
import re
from typing import Dict, Sequence

import torch

from mae_transfer.backbones.checkpoint_files import CheckpointError, describe_architecture
from mae_transfer.backbones.checkpoint_reader import read_weights
from mae_transfer.backbones.loading import CheckpointReport
from mae_transfer.backbones.vit import VIT_ARCHS, VisionTransformer, vit_kwargs

logger = logging.getLogger("mae_transfer.classification")

_BLOCK = re.compile(r"^blocks\.(\d+)\.")


def resolve_model(name: str) -> str:
    """Our ``VIT_ARCHS`` name for ``--model`` (official MAE names; ``mae_`` prefix accepted);
    a one-line ``ValueError`` for an unknown name."""
    key = name[len("mae_"):] if name.startswith("mae_") else name
    if key not in VIT_ARCHS:
        raise ValueError(f"unknown --model {name!r}: choose one of {sorted(VIT_ARCHS)}")
    return key


def encoder_kwargs(model: str, input_size: int = 224, drop_path: float = 0.0,
                   **overrides) -> Dict:
    """``VisionTransformer`` arguments of ``--model`` at ``--input_size`` (square), with MAE's
    fine-tuning drop path (linear over depth); refuses a size the patch does not divide."""
    kwargs = vit_kwargs(resolve_model(model), **overrides)
    patch = kwargs["patch_size"]
    if input_size < patch or input_size % patch:
        raise ValueError(f"--input_size {input_size} is not a multiple of {model}'s patch size "
                         f"{patch}")
    return dict(kwargs, img_size=input_size, drop_path_rate=drop_path)


def build_encoder(model: str, input_size: int = 224, drop_path: float = 0.0,
                  **overrides) -> VisionTransformer:
    """The plain ViT encoder of ``--model`` (final norm, cls token) at ``input_size``."""
    return VisionTransformer(**encoder_kwargs(model, input_size, drop_path, **overrides))


def _depth(keys) -> int:
    ids = {int(m.group(1)) for k in keys if (m := _BLOCK.match(k))}
    return max(ids) + 1 if ids else 0


def check_same_size(state: Dict[str, torch.Tensor], vit: VisionTransformer, source: str,
                    model_name: str = "") -> None:
    """Refuse (one-line ``CheckpointError``) encoder tensors of another width, depth or patch
    size than ``vit``."""
    name = f"--model {model_name}" if model_name else "the model"
    own = vit.state_dict()
    theirs_kernel = state.get("patch_embed.proj.weight")
    ours_kernel = own["patch_embed.proj.weight"]
    depth = _depth(state)
    same = (depth == vit.depth and theirs_kernel is not None
            and tuple(theirs_kernel.shape) == tuple(ours_kernel.shape))
    if not same:
        raise CheckpointError(f"{source} holds a ViT with {describe_architecture(state)}, {name} "
                              f"has {describe_architecture(own)}: pass the --model it was "
                              f"trained as")


def load_encoder_weights(vit: VisionTransformer, path: str | os.PathLike, model_name: str = "",
                         exclude: Sequence[str] = ("head",)) -> CheckpointReport:
    """Load the encoder of ``path`` (any layout the one reader takes) into ``vit`` (a plain
    encoder or a classifier built on it); returns the report, whose summary line is logged.

    ``pos_embed`` is resized bicubically to ``vit``'s grid (``--input_size``), as MAE's
    ``interpolate_pos_embed``. ``exclude``: model names left at their init and out of the
    report (by default the classifier's ``head``, which fine-tuning always starts afresh).
    """
    weights = read_weights(path, exclude=exclude)
    check_same_size(weights.state, vit, str(path), model_name)
    report = read_weights(weights, vit, exclude=exclude).load_into(vit)
    # a classifier's fc_norm is new and, with global pooling, the encoder's norm unused (MAE's)
    expected = all(k.startswith("fc_norm.") for k in report.missing_pretrained) and all(
        k.startswith("norm.") and getattr(vit, "global_pool", False)
        for k in report.unexpected_keys)
    logger.log(logging.INFO if expected else logging.WARNING, "loaded %s", report.summary())
    return report


@torch.no_grad()
def encoder_features(vit: VisionTransformer, images: torch.Tensor, pool: str = "cls"
                     ) -> torch.Tensor:
    """Frozen features ``(B, D)`` of normalised ``images``: the cls token after the final norm
    (``pool="cls"``, what MAE's linear probe reads) or the mean of the normed patch tokens
    (``pool="mean"``)."""
    tokens = vit.forward_features(images)
    if pool == "cls":
        if vit.num_prefix_tokens == 0:
            raise ValueError("pool='cls' needs a ViT with a cls token")
        return tokens[:, 0]
    if pool == "mean":
        return tokens[:, vit.num_prefix_tokens:].mean(dim=1)
    raise ValueError(f"pool must be 'cls' or 'mean', got {pool!r}")
