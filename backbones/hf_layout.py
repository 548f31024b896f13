"""The Hugging Face ``transformers`` ViT / ViTMAE layout of a ViT and MAE decoder, to and from ours.

Most MAE weights are shared on the Hugging Face hub (``facebook/vit-mae-base/large/huge`` and
many domain MAEs trained with ``ViTMAEForPreTraining``). They are the official MAE tensors under
other names (transformers' ``convert_vit_mae_to_pytorch.py`` renamed the official release; it
goes one way only). This module is the one place that knows the names, both ways: the one reader
(``backbones.checkpoint_reader``) renames a Hugging Face file to ours with ``from_hf``, and the
``--to hf`` writer (``tools.checkpoints``) renames ours with ``to_hf``.

=====================================  ==========================================================
ours (= official MAE / timm)           Hugging Face (``ViTMAEForPreTraining``: encoder under
                                       ``vit.``; ``ViTMAEModel`` / ``ViTModel``: no prefix)
=====================================  ==========================================================
``cls_token``                          ``embeddings.cls_token``
``pos_embed`` (cls row first)          ``embeddings.position_embeddings`` (the same rows)
``patch_embed.proj.*``                 ``embeddings.patch_embeddings.projection.*``
``blocks.{i}.norm1.*`` / ``norm2.*``   ``encoder.layer.{i}.layernorm_before.*`` / ``_after.*``
``blocks.{i}.attn.qkv.*`` (q, k, v     ``encoder.layer.{i}.attention.attention.{query,key,value}.*``
stacked in that order)
``blocks.{i}.attn.proj.*``             ``encoder.layer.{i}.attention.output.dense.*``
``blocks.{i}.mlp.fc1.*`` / ``fc2.*``   ``encoder.layer.{i}.intermediate.dense.*`` / ``output.dense``
``norm.*``                             ``layernorm.*``
``mask_token``, ``decoder_embed.*``,   ``decoder.mask_token``, ``decoder.decoder_embed.*``,
``decoder_pos_embed``,                 ``decoder.decoder_pos_embed``,
``decoder_norm.*``, ``decoder_pred.*`` ``decoder.decoder_norm.*``, ``decoder.decoder_pred.*``
``decoder_blocks.{i}.*``               ``decoder.decoder_layers.{i}.*`` (block names as above)
=====================================  ==========================================================

That is the layout of the released hub checkpoints and what ``to_hf`` writes. Read as well:
transformers 5's module names (``layers.{i}.attention.{q,k,v,o}_proj``, ``layers.{i}.mlp.fc1`` /
``fc2``: a ``state_dict()`` saved from a model in memory) and the decoder name its
``save_pretrained`` writes (``decoder.decoder_encoder.layer.{i}``: its loading-time renames
reversed). Keys with no counterpart (``ViTModel``'s ``pooler.*``, a classifier) are kept under
their own names, so that the reader reports them as unexpected. The LayerNorm epsilon is the
function's, not the tensors': see ``NORM_EPS`` and docs/checkpoints.md.
"""
from __future__ import annotations

import re
from typing import Dict, Iterable, List, Mapping, Optional, Tuple

import torch

from mae_transfer.backbones.pos_embed import infer_grid
from mae_transfer.backbones.vit import standard_num_heads

StateDict = Dict[str, torch.Tensor]

#: ``config.json`` ``model_type``s read: (model type, the classes that write it).
HF_MODEL_TYPES = {"vit_mae": "ViTMAEForPreTraining, ViTMAEModel", "vit": "ViTModel"}
#: The LayerNorm epsilon of our ViT and MAE decoder (official MAE's, ``VisionTransformer``'s
#: default): what ``hf_config`` writes, so that transformers computes our function. Hub MAE
#: configs say 1e-12 (``ViTMAEConfig``'s default), for weights trained with this one.
NORM_EPS = 1e-6

_VIT_PREFIX = "vit."
#: Top-level names: (ours, Hugging Face's, without the ``vit.`` prefix).
_TOP = (("cls_token", "embeddings.cls_token"), ("pos_embed", "embeddings.position_embeddings"),
        ("patch_embed.proj.", "embeddings.patch_embeddings.projection."), ("norm.", "layernorm."))
_DECODER_TOP = (("mask_token", "decoder.mask_token"),
                ("decoder_pos_embed", "decoder.decoder_pos_embed"),
                ("decoder_embed.", "decoder.decoder_embed."),
                ("decoder_norm.", "decoder.decoder_norm."),
                ("decoder_pred.", "decoder.decoder_pred."))
#: Per-block names: (ours, hub / transformers 4 name (written), transformers 5 module name).
_BLOCK = (("norm1.", "layernorm_before.", "layernorm_before."),
          ("attn.proj.", "attention.output.dense.", "attention.o_proj."),
          ("norm2.", "layernorm_after.", "layernorm_after."),
          ("mlp.fc1.", "intermediate.dense.", "mlp.fc1."),
          ("mlp.fc2.", "output.dense.", "mlp.fc2."))
#: q, k, v in the order our fused ``qkv`` stacks them: (hub name, transformers 5 name).
_QKV = (("attention.attention.query.", "attention.q_proj."),
        ("attention.attention.key.", "attention.k_proj."),
        ("attention.attention.value.", "attention.v_proj."))
_ENCODER_BLOCK = re.compile(r"^(?:encoder\.layer|layers)\.(\d+)\.(.+)$")
_DECODER_BLOCK = re.compile(r"^decoder\.(?:decoder_layers|decoder_encoder\.layer)\.(\d+)\.(.+)$")
#: Names only a Hugging Face ViT has (what ``is_hf_vit`` looks for), ``vit.`` prefix or not.
_HF_MARKERS = re.compile(r"^(?:vit\.)?(?:embeddings\.patch_embeddings\.projection\.|"
                         r"encoder\.layer\.\d+\.attention\.attention\.|"
                         r"layers\.\d+\.(?:attention\.q_proj|layernorm_before)\.)")
_OURS_BLOCK = re.compile(r"^(blocks|decoder_blocks)\.(\d+)\.(.+)$")
#: What a transformers ViT cannot compute: relative position bias, layer scale.
_NO_HF_COUNTERPART = ("rel_pos_h", "rel_pos_w", "relative_position_bias_table", "gamma_1",
                      "gamma_2")


def is_hf_vit(keys: Iterable[str]) -> bool:
    """True when the (DDP-prefix-free) keys are a Hugging Face ViT's / ViTMAE's."""
    return any(_HF_MARKERS.match(k) for k in keys)


def hf_has_decoder(keys: Iterable[str]) -> bool:
    """True when a Hugging Face file holds ``ViTMAEForPreTraining``'s decoder."""
    return any(k.startswith("decoder.decoder_") or k == "decoder.mask_token" for k in keys)


def _block_name(rest: str) -> Tuple[Optional[str], Optional[int]]:
    """(our sub-name, None) or (None, index of q / k / v) of a block's sub-name; (None, None)."""
    for ours, hub, current in _BLOCK:
        for theirs in (hub, current):
            if rest.startswith(theirs):
                return ours + rest[len(theirs):], None
    for index, names in enumerate(_QKV):
        for theirs in names:
            if rest.startswith(theirs):
                return rest[len(theirs):], index
    return None, None


def from_hf(state: Mapping[str, torch.Tensor]) -> StateDict:
    """Hugging Face names -> ours (q, k, v fused into ``qkv``); keys without a counterpart kept.

    A block whose q, k and v are not all there keeps them under their Hugging Face names (the
    reader then reports them as unexpected and ``qkv`` as missing), rather than guessing.
    """
    out: StateDict = {}
    pieces: Dict[str, Dict[int, Tuple[str, torch.Tensor]]] = {}
    for key, value in state.items():
        name = key[len(_VIT_PREFIX):] if key.startswith(_VIT_PREFIX) else key
        block = _ENCODER_BLOCK.match(name) or _DECODER_BLOCK.match(name)
        if block:
            ours = "blocks" if block.re is _ENCODER_BLOCK else "decoder_blocks"
            sub, qkv_index = _block_name(block.group(2))
            if qkv_index is not None:
                pieces.setdefault(f"{ours}.{block.group(1)}.attn.qkv.{sub}", {})[qkv_index] = \
                    (key, value)
                continue
            out[f"{ours}.{block.group(1)}.{sub}" if sub else key] = value
            continue
        renamed = next((ours + name[len(theirs):] for ours, theirs in _TOP + _DECODER_TOP
                        if name == theirs or (theirs.endswith(".") and name.startswith(theirs))),
                       None)
        out[renamed or key] = value
    for fused, parts in pieces.items():
        if sorted(parts) == [0, 1, 2]:
            out[fused] = torch.cat([parts[i][1] for i in range(3)], dim=0)
        else:
            out.update(dict(parts.values()))
    return out


def to_hf(state: Mapping[str, torch.Tensor]) -> Tuple[StateDict, List[str]]:
    """Our names -> the hub layout: ``(Hugging Face state, our keys left out)``.

    With decoder tensors the result is ``ViTMAEForPreTraining``'s (encoder under ``vit.``),
    without them ``ViTMAEModel``'s (no prefix), as transformers' ``save_pretrained`` writes them.
    Left out: keys a ViTMAE has no place for (a classifier ``head.*``, ``fc_norm.*``, a pooler).
    Relative-position tables and layer scale are a ``ValueError``: dropping them would change
    the function.
    """
    extra = [k for k in state if k.endswith(_NO_HF_COUNTERPART)]
    if extra:
        raise ValueError(f"{extra[0]}: transformers' ViT / ViTMAE has no relative position bias "
                         f"or layer scale, so this model has no Hugging Face layout (convert the "
                         f"pretrained encoder, not a fine-tuned one)")
    if "cls_token" not in state:
        raise ValueError("no cls_token: transformers' ViTMAE always has one")
    prefix = _VIT_PREFIX if any(k.startswith("decoder_") or k == "mask_token" for k in state) \
        else ""
    out: StateDict = {}
    skipped: List[str] = []
    for key, value in state.items():
        block = _OURS_BLOCK.match(key)
        if block:
            kind, index, rest = block.groups()
            base = (f"{prefix}encoder.layer.{index}." if kind == "blocks"
                    else f"decoder.decoder_layers.{index}.")
            if rest.startswith("attn.qkv."):
                for (hub, _), chunk in zip(_QKV, value.chunk(3, dim=0)):
                    out[base + hub + rest[len("attn.qkv."):]] = chunk.contiguous()
                continue
            hub = next((h + rest[len(o):] for o, h, _ in _BLOCK if rest.startswith(o)), None)
            if hub is None:
                skipped.append(key)
            else:
                out[base + hub] = value
            continue
        top = next((theirs + key[len(ours):] for ours, theirs in _TOP
                    if key == ours or (ours.endswith(".") and key.startswith(ours))), None)
        if top is not None:
            out[prefix + top] = value
            continue
        decoder = next((theirs + key[len(ours):] for ours, theirs in _DECODER_TOP
                        if key == ours or (ours.endswith(".") and key.startswith(ours))), None)
        if decoder is None:
            skipped.append(key)
        else:
            out[decoder] = value
    return out, skipped


def _count_blocks(state: Mapping[str, torch.Tensor], prefix: str) -> int:
    pattern = re.compile(rf"^{prefix}\.(\d+)\.")
    ids = {int(m.group(1)) for k in state if (m := pattern.match(k))}
    return max(ids) + 1 if ids else 0


def _pair(value) -> List[int]:
    return [int(value), int(value)] if isinstance(value, (int, float)) else [int(v) for v in value]


def meta_from_hf_config(config: Mapping, with_decoder: bool) -> dict:
    """Our checkpoint metadata from a ``config.json``; ``ValueError`` for another model type.

    ``model_config`` (what ``pretrain.restore`` rebuilds a whole MAE from) is added when the
    weights hold a decoder. ``layer_norm_eps`` keeps the file's value for the load report: our
    models compute with ``NORM_EPS`` (docs/checkpoints.md).
    """
    model_type = config.get("model_type")
    if model_type not in HF_MODEL_TYPES:
        known = "; ".join(f"'{t}' ({c})" for t, c in HF_MODEL_TYPES.items())
        raise ValueError(f"model_type {model_type!r} "
                         f"({', '.join(config.get('architectures') or ['no architectures'])}) is "
                         f"not a ViT this reader knows: it reads model_type {known}")
    dim, depth = int(config.get("hidden_size", 768)), int(config.get("num_hidden_layers", 12))
    meta = {"img_size": _pair(config.get("image_size", 224)),
            "patch_size": _pair(config.get("patch_size", 16)),
            "embed_dim": dim, "depth": depth,
            "num_heads": int(config.get("num_attention_heads", 12)),
            "mlp_ratio": int(config.get("intermediate_size", 4 * dim)) / dim,
            "in_chans": int(config.get("num_channels", 3)),
            "qkv_bias": bool(config.get("qkv_bias", True)),
            "layer_norm_eps": float(config.get("layer_norm_eps", 1e-12)),
            "producer": f"transformers {', '.join(config.get('architectures') or [model_type])} "
                        f"(model_type {model_type}, transformers "
                        f"{config.get('transformers_version', '?')})"}
    if model_type == "vit_mae":
        meta.update(mask_ratio=float(config.get("mask_ratio", 0.75)),
                    norm_pix_loss=bool(config.get("norm_pix_loss", False)))
        if with_decoder:
            meta["model_config"] = dict(
                img_size=meta["img_size"], patch_size=meta["patch_size"], embed_dim=dim,
                depth=depth, num_heads=meta["num_heads"], mlp_ratio=meta["mlp_ratio"],
                in_chans=meta["in_chans"],
                decoder_embed_dim=int(config.get("decoder_hidden_size", 512)),
                decoder_depth=int(config.get("decoder_num_hidden_layers", 8)),
                decoder_num_heads=int(config.get("decoder_num_attention_heads", 16)),
                norm_pix_loss=meta["norm_pix_loss"])
    return meta


def check_config_fits(meta: Mapping, state: Mapping[str, torch.Tensor]) -> Optional[str]:
    """Why a folder's ``config.json`` does not describe its weights (our names), or None."""
    w = state.get("patch_embed.proj.weight")
    found = {"hidden_size": None if w is None else int(w.shape[0]),
             "patch_size": None if w is None else [int(s) for s in w.shape[2:]],
             "num_hidden_layers": _count_blocks(state, "blocks") or None}
    said = {"hidden_size": meta["embed_dim"], "patch_size": meta["patch_size"],
            "num_hidden_layers": meta["depth"]}
    bad = [f"{k} {said[k]} but the weights have {v}" for k, v in found.items()
           if v is not None and v != said[k]]
    return "; ".join(bad) or None


def hf_config(state: Mapping[str, torch.Tensor], meta: Optional[Mapping] = None) -> dict:
    """The ``config.json`` of a ``ViTMAEModel`` / ``ViTMAEForPreTraining`` holding ``state``.

    Sizes are read off the tensors; head counts (no shape records them), ``mask_ratio`` and
    ``norm_pix_loss`` come from ``meta`` (ours: ``num_heads``, ``model_config``), else the
    standard head counts (``backbones.vit.STANDARD_HEADS``), 0.75 and False. ``layer_norm_eps``
    is ``NORM_EPS`` (or the model's recorded ``norm_eps``): the function our model computes.
    ``ValueError`` for what a ViTMAE cannot hold (non-square patches or grid, no cls slot).
    """
    meta = dict(meta or {})
    model_config = dict(meta.get("model_config") or {})
    kernel = state["patch_embed.proj.weight"]
    dim, channels, ph, pw = (int(s) for s in kernel.shape)
    if ph != pw:
        raise ValueError(f"patches of {ph}x{pw}: transformers' ViTMAE has square patches only")
    grid_hint = None
    if meta.get("img_size") and meta.get("patch_size"):
        grid_hint = tuple(int(s) // int(p) for s, p in zip(_pair(meta["img_size"]),
                                                           _pair(meta["patch_size"])))
    prefix, grid = infer_grid(state["pos_embed"].shape[1], hint=grid_hint)
    if prefix != 1 or grid[0] != grid[1]:
        raise ValueError(f"pos_embed of {state['pos_embed'].shape[1]} rows is not a cls row "
                         f"plus a square grid, which transformers' ViTMAE needs")
    fc1 = state["blocks.0.mlp.fc1.weight"]
    config = {
        "architectures": ["ViTMAEModel"], "model_type": "vit_mae",
        "hidden_size": dim, "num_hidden_layers": _count_blocks(state, "blocks"),
        "num_attention_heads": int(meta.get("num_heads") or model_config.get("num_heads")
                                   or standard_num_heads(dim)),
        "intermediate_size": int(fc1.shape[0]), "hidden_act": "gelu",
        "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0,
        "initializer_range": 0.02,
        "layer_norm_eps": float(meta.get("norm_eps") or model_config.get("norm_eps") or NORM_EPS),
        "image_size": grid[0] * ph, "patch_size": ph, "num_channels": channels,
        "qkv_bias": "blocks.0.attn.qkv.bias" in state,
        "mask_ratio": float(meta.get("mask_ratio", 0.75)),
        "norm_pix_loss": bool(meta.get("norm_pix_loss", model_config.get("norm_pix_loss", False))),
    }
    if "decoder_embed.weight" in state:
        dec_dim = int(state["decoder_embed.weight"].shape[0])
        config.update(
            architectures=["ViTMAEForPreTraining"], decoder_hidden_size=dec_dim,
            decoder_num_hidden_layers=_count_blocks(state, "decoder_blocks"),
            decoder_num_attention_heads=int(model_config.get("decoder_num_heads")
                                            or standard_num_heads(dec_dim)),
            decoder_intermediate_size=int(state["decoder_blocks.0.mlp.fc1.weight"].shape[0]))
    return config
