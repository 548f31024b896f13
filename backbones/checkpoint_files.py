"""Reading ViT checkpoint files of every format the toolkit meets (``tools.checkpoints`` writes).

Here, in ``backbones``, because ``backbones.load_pretrained`` needs it and the library's imports
run one way (``backbones`` imports no ``tools``); ``tools.checkpoints`` re-exports every name, so
either import works.

Accepted: official MAE releases and MAE training checkpoints (``{'model': ...}`` with or without
``decoder_*``/``mask_token``), timm state dicts, ours (safetensors with JSON metadata under the
``mae_transfer`` key, or ``.pth`` ``{'model': ..., 'meta': ...}``), Detectron2 exports
(``backbone.net.`` prefix, ``{'model': ...}``), MMSeg exports of ``MAEViT`` (``backbone.`` prefix,
``{'state_dict': ...}``), and MMSeg ``MAE`` / ``BEiT`` backbones or segmentors and unilm BEiT files
(renamed by ``backbones.beit_layout``). Files are read with ``weights_only=True``: a pickle that
would run code is refused, never executed.
"""
from __future__ import annotations

import argparse
import json
import os
import pickle
import re
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import torch

from mae_transfer.backbones.beit_layout import from_mmseg_beit, is_mmseg_beit, normalize_beit_quirks

StateDict = Dict[str, torch.Tensor]
META_KEY = "mae_transfer"
#: Keys of the MAE decoder that an encoder never uses: dropped (and reported) on load.
DECODER_KEY = re.compile(r"^(decoder_|mask_token$)")
#: Framework prefixes, most specific first: Detectron2's ``backbone.net.``, MMSeg's ``backbone.``.
BACKBONE_PREFIXES = ("backbone.net.", "backbone.")


class CheckpointError(ValueError):
    """A checkpoint that cannot be used; the message is one line that says why."""


def _torch_load(path: Path):
    # argparse.Namespace is a plain data holder that official MAE training checkpoints pickle
    # (``args``); allowing it keeps weights_only's guarantee that no code runs.
    with torch.serialization.safe_globals([argparse.Namespace]):
        return torch.load(path, map_location="cpu", weights_only=True)


def read_checkpoint(path: str | os.PathLike) -> Tuple[StateDict, dict]:
    """Return ``(tensor state dict, metadata)`` of any supported file, unwrapping containers."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint file at {path}")
    meta: dict = {}
    try:
        if path.suffix == ".safetensors":
            from safetensors import safe_open

            with safe_open(str(path), framework="pt") as f:
                raw_meta = f.metadata() or {}
                obj = {k: f.get_tensor(k) for k in f.keys()}
            meta = json.loads(raw_meta.get(META_KEY, "{}"))
        else:
            obj = _torch_load(path)
    except pickle.UnpicklingError as exc:
        found = re.search(r"GLOBAL ([\w.]+)", str(exc))
        if found is None:  # not a pickle of ours at all (garbage, another file type)
            raise CheckpointError(f"cannot read checkpoint {path}: truncated or not a checkpoint "
                                  f"(not a torch or safetensors file)") from exc
        raise CheckpointError(
            f"refusing to load {path}: it pickles a Python object ({found.group(1)}) that could "
            f"run code; only tensors, numbers and containers are loaded (weights_only=True)"
        ) from exc
    except Exception as exc:  # zip/safetensors/EOF errors of a damaged file
        detail = str(exc).splitlines()[0][:200] if str(exc) else ""
        raise CheckpointError(f"cannot read checkpoint {path}: truncated or not a checkpoint "
                              f"({type(exc).__name__}: {detail})") from exc
    return _unwrap(obj, path, meta)


def _unwrap(obj, path: Path, meta: dict) -> Tuple[StateDict, dict]:
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path} holds a {type(obj).__name__}, not a state dict")
    if isinstance(obj.get("meta"), dict):
        meta = {**obj["meta"], **meta}
    for container in ("model", "state_dict", "module"):
        if isinstance(obj.get(container), dict):
            obj = obj[container]
            break
    state = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if not state:
        raise CheckpointError(f"{path} holds no tensors (keys: {sorted(obj)[:8]})")
    return state, meta


def strip_ddp_prefix(state: StateDict) -> StateDict:
    """``state`` without the ``module.`` prefix DDP-wrapped models save their keys under."""
    return {k[len("module."):] if k.startswith("module.") else k: v for k, v in state.items()}


def meta_grid(meta: dict) -> Optional[Tuple[int, int]]:
    """The patch grid a checkpoint was made for, from its metadata (None if not recorded)."""
    if meta.get("img_size") and meta.get("patch_size"):
        return tuple(int(s) // int(p) for s, p in zip(meta["img_size"], meta["patch_size"]))
    return None


def split_encoder(state: StateDict) -> Tuple[StateDict, List[str]]:
    """Strip framework / DDP prefixes and drop MAE decoder keys: ``(encoder state, dropped keys)``.

    When a file holds a whole detector or segmentor, only its backbone keys are kept; the rest
    (heads, pyramids) are returned as dropped so the caller can report them. MMSeg ``MAE`` /
    ``BEiT`` names are renamed to ours (``backbones.beit_layout``), so every caller sees one naming.
    """
    state = strip_ddp_prefix(state)
    dropped: List[str] = []
    for prefix in BACKBONE_PREFIXES:
        if any(k.startswith(prefix) for k in state):
            dropped += [k for k in state if not k.startswith(prefix)]
            state = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
            break
    dropped += [k for k in state if DECODER_KEY.match(k)]
    state = {k: v for k, v in state.items() if not DECODER_KEY.match(k)}
    state, derived = (from_mmseg_beit if is_mmseg_beit(state) else normalize_beit_quirks)(state)
    return state, dropped + derived


def describe_architecture(state: StateDict) -> str:
    """A short human description (width, depth, patch) of a ViT state dict, for error messages."""
    parts = []
    w = state.get("patch_embed.proj.weight")
    if w is not None and w.ndim == 4:
        parts.append(f"embed_dim {w.shape[0]}, patch {w.shape[2]}")
    blocks = {int(m.group(1)) for k in state if (m := re.match(r"blocks\.(\d+)\.", k))}
    if blocks:
        parts.append(f"depth {max(blocks) + 1}")
    return ", ".join(parts) or "not a recognisable ViT"


#: Foreign layouts recognised by their key names: (pattern, what the file looks like).
_LAYOUTS = (
    (re.compile(r"^(module\.)?(roi_heads|proposal_generator|backbone\.bottom_up|backbone\.fpn_)"),
     "a Detectron2 detector (roi_heads.*, proposal_generator.*, backbone.bottom_up.*)"),
    (re.compile(r"^(module\.)?(backbone\.)?layers\.\d+\.attn\.attn\.in_proj"),
     "an MMSeg VisionTransformer (backbone.layers.{i}.attn.attn.in_proj_weight)"),
    (re.compile(r"^(module\.)?(backbone\.)?(layers\.\d+\.(ln1|ffn\.layers)|patch_embed\.projection)"),
     "an MMSeg MAE/BEiT checkpoint (backbone.layers.{i}.ln1, ffn.layers.0.0, ...)"),
    (re.compile(r"^(module\.)?(vit\.)?(encoder\.layer\.\d+\.attention|embeddings\.patch_embeddings)"),
     "a Hugging Face transformers ViT (encoder.layer.{i}.attention.*)"),
    (re.compile(r"^(module\.)?(conv1\.|layer[1-4]\.|fc\.|features\.|stem\.|stages\.)"),
     "a torchvision/timm classifier (conv1, layer1..4, fc / stem, stages)"),
)


def describe_layout(keys) -> str:
    """What a file with these (raw) keys looks like, for errors about checkpoints that do not fit."""
    keys = list(keys)
    for pattern, what in _LAYOUTS:
        if any(pattern.match(k) for k in keys):
            return what
    return f"an unrecognised layout (first keys: {sorted(keys)[:4]})"
