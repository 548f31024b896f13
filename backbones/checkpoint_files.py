"""Reading ViT checkpoint files (the file step of ``backbones.checkpoint_reader``, THE reader).

Here, in ``backbones``, because the reader needs it and the library's imports run one way
(``backbones`` imports no ``tools``); ``tools.checkpoints`` re-exports the names, so either import
works. Callers read weights through ``checkpoint_reader.read_weights``; ``read_checkpoint`` is the
raw step (tensors and metadata) for tools that inspect a file.

Accepted: official MAE releases and MAE training checkpoints (``{'model': ...}`` with or without
``decoder_*``/``mask_token``), timm state dicts, ours (safetensors with JSON metadata under the
``mae_transfer`` key, or ``.pth`` ``{'model': ..., 'meta': ...}``), Detectron2 exports
(``backbone.net.`` prefix, ``{'model': ...}``), MMSeg exports of ``MAEViT`` (``backbone.`` prefix,
``{'state_dict': ...}``), and MMSeg ``MAE`` / ``BEiT`` backbones or segmentors and unilm BEiT files
(renamed by ``backbones.beit_layout``), our MMEngine segmentation checkpoints and a Detectron2
run's ``model_final.pth``, and Hugging Face ViT / ViTMAE ``save_pretrained`` folders
(``read_hf_folder``; their names are turned into ours by the reader, ``backbones.hf_layout``).
Files are read with ``weights_only=True`` and exactly the framework
objects those hold allow-listed (``checkpoint_safe_globals``): a pickle that would run code is
refused, never executed. The list of layouts: docs/checkpoints.md.
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
from mae_transfer.backbones.hf_layout import (check_config_fits, from_hf, hf_has_decoder,
                                              meta_from_hf_config)

StateDict = Dict[str, torch.Tensor]
META_KEY = "mae_transfer"
#: Keys of the MAE decoder that an encoder never uses: dropped (and reported) on load.
DECODER_KEY = re.compile(r"^(decoder_|mask_token$)")
#: Framework prefixes, most specific first: Detectron2's ``backbone.net.``, MMSeg's ``backbone.``.
BACKBONE_PREFIXES = ("backbone.net.", "backbone.")
#: Keys of a (prefix-free) file that are not the encoder's: the MAE decoder, and the multi-scale
#: ``adapter`` our segmentation backbone (``MAEViT``) puts on top of the ViT.
NON_ENCODER_KEY = re.compile(r"^(decoder_|mask_token$|adapter\.)")


class CheckpointError(ValueError):
    """A checkpoint that cannot be used; the message is one line that says why."""


class FrameworkRecord:
    """Inert stand-in for a training framework's bookkeeping object inside a checkpoint.

    MMEngine checkpoints (``iter_N.pth``) pickle ``HistoryBuffer`` objects (the logged losses and
    timings of ``message_hub``). A weights reader needs none of them, so their pickled name maps
    to this class: their state is kept as data (``pickled_state``) and no framework code runs,
    nor does the framework need to be installed.
    """

    pickled_as = ""

    def __setstate__(self, state) -> None:
        self.pickled_state = state

    def __repr__(self) -> str:
        return f"<{self.pickled_as} (read as data)>"


def _record_class(qualified_name: str) -> type:
    return type(qualified_name.rsplit(".", 1)[1], (FrameworkRecord,),
                {"pickled_as": qualified_name, "__module__": __name__})


#: Framework objects allowed in a checkpoint, read as ``FrameworkRecord`` data (never their code).
HistoryBufferRecord = _record_class("mmengine.logging.history_buffer.HistoryBuffer")
FRAMEWORK_RECORDS = (HistoryBufferRecord,)
#: What each record's pickle fetches by ``getattr``: MMEngine's ``HistoryBuffer`` pickles its
#: statistics table, whose values are its own methods, as ``getattr(HistoryBuffer, name)``.
PICKLED_ATTRIBUTES = {HistoryBufferRecord: frozenset({"min", "max", "current", "mean"})}


def _pickled_attribute(owner, name: str) -> str:
    """``builtins.getattr`` as a checkpoint may call it: only the names ``PICKLED_ATTRIBUTES``
    lists, answered with a label (the method itself is never needed to read weights)."""
    if name in PICKLED_ATTRIBUTES.get(owner, ()):
        return f"{owner.pickled_as}.{name}"
    owner_name = getattr(owner, "pickled_as", None) or getattr(owner, "__qualname__", None) \
        or type(owner).__name__
    raise pickle.UnpicklingError(f"GLOBAL {owner_name}.{name} (fetched with getattr)")


def _numpy_globals() -> list:
    """numpy arrays and scalars (MMEngine's logs and runtime info): reconstructed as data by
    numpy's own functions, under the names numpy 1.x (``numpy.core``) and 2.x
    (``numpy._core``) pickle them by; numeric and bool dtypes only (no object arrays)."""
    import numpy as np

    core = np._core.multiarray if hasattr(np, "_core") else np.core.multiarray
    dtypes = [type(np.dtype(t)) for t in (np.bool_, np.int8, np.int16, np.int32, np.int64,
                                          np.uint8, np.uint16, np.uint32, np.uint64,
                                          np.float16, np.float32, np.float64)]
    named = [(getattr(core, fn), f"{module}.multiarray.{fn}")
             for fn in ("_reconstruct", "scalar") for module in ("numpy.core", "numpy._core")]
    return [np.ndarray, np.dtype, *dtypes, *named]


def checkpoint_safe_globals() -> list:
    """Everything ``weights_only`` loading allows beyond tensors, numbers and containers.

    ``argparse.Namespace``: official MAE training checkpoints pickle their ``args``. numpy arrays
    and dtypes, MMEngine's ``HistoryBuffer`` (as ``FrameworkRecord``) and the ``getattr`` calls
    of its pickle: what our MMEngine segmentation checkpoints (``iter_N.pth``) hold next to the
    tensors. Any other Python object in a file is refused, naming the file and the object.
    """
    return [argparse.Namespace, *_numpy_globals(),
            *[(cls, cls.pickled_as) for cls in FRAMEWORK_RECORDS],
            (_pickled_attribute, "builtins.getattr")]


#: How ``weights_only`` loading names what it refused: a global it does not allow, or an instance
#: of a type it may not build (a numpy object or string dtype: the global was allowed, the type not).
_REFUSED_OBJECT = re.compile(r"GLOBAL ([\w.]+)|WeightsUnpickler error: .*?<class '([\w.]+)'>",
                             re.S)


def _torch_load(path: Path):
    with torch.serialization.safe_globals(checkpoint_safe_globals()):
        return torch.load(path, map_location="cpu", weights_only=True)


def read_checkpoint(path: str | os.PathLike) -> Tuple[StateDict, dict]:
    """Return ``(tensor state dict, metadata)`` of any supported file, unwrapping containers."""
    state, meta, _ = read_file(path)
    return state, meta


def read_file(path: str | os.PathLike) -> Tuple[StateDict, dict, List[str]]:
    """``read_checkpoint`` plus the file's top-level keys (what tells the container apart).

    A folder is read as Hugging Face ``save_pretrained`` output (``read_hf_folder``); its
    "top-level keys" are the files read.
    """
    path = Path(path)
    if path.is_dir():
        return read_hf_folder(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint file at {path}")
    obj, meta = _load(path)
    top_keys = sorted(k for k in obj if isinstance(k, str)) if isinstance(obj, dict) else []
    state, meta = _unwrap(obj, path, meta)
    return state, meta, top_keys


def _load(path: Path) -> Tuple[object, dict]:
    """The object a file holds (safetensors: its tensors) and its safetensors metadata."""
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
        found = _REFUSED_OBJECT.search(str(exc))
        if found is None:  # not a pickle of ours at all (garbage, another file type)
            raise CheckpointError(f"cannot read checkpoint {path}: truncated or not a checkpoint "
                                  f"(not a torch or safetensors file)") from exc
        raise CheckpointError(
            f"refusing to load {path}: it pickles a Python object "
            f"({found.group(1) or found.group(2)}) that could "
            f"run code; only tensors, numbers, containers and the framework objects of "
            f"checkpoint_safe_globals() are loaded (weights_only=True)"
        ) from exc
    except Exception as exc:  # zip/safetensors/EOF errors of a damaged file
        detail = str(exc).splitlines()[0][:200] if str(exc) else ""
        raise CheckpointError(f"cannot read checkpoint {path}: truncated or not a checkpoint "
                              f"({type(exc).__name__}: {detail})") from exc
    return obj, meta


#: The weights ``save_pretrained`` writes, in the order transformers prefers them.
HF_WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                   "pytorch_model.bin.index.json")


def _read_json(path: Path) -> dict:
    try:
        obj = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise CheckpointError(f"cannot read {path}: {type(exc).__name__}: "
                              f"{str(exc).splitlines()[0][:200] if str(exc) else ''}") from exc
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path} holds a JSON {type(obj).__name__}, not an object")
    return obj


def read_hf_folder(path: Path) -> Tuple[StateDict, dict, List[str]]:
    """A Hugging Face ``save_pretrained`` folder of a ViT / ViTMAE: ``(tensors under the file's
    names, our metadata from config.json, the files read)``.

    ``config.json`` is checked first (a folder of another model type stops before any weight is
    read), then the weights: ``model.safetensors`` or ``pytorch_model.bin``, or their shards as
    the ``*.index.json`` lists them (every listed tensor must be found). Shards are read like any
    checkpoint file (``weights_only=True``). Names are turned into ours by the reader
    (``backbones.hf_layout``).
    """
    config_file = path / "config.json"
    if not config_file.is_file():
        raise CheckpointError(f"{path} is a folder without config.json: not a Hugging Face "
                              f"save_pretrained folder (give a checkpoint file, or the folder "
                              f"transformers wrote)")
    config = _read_json(config_file)
    try:
        meta_from_hf_config(config, with_decoder=False)  # the model type, before any weight
    except ValueError as exc:
        raise CheckpointError(f"{config_file}: {exc}") from None
    name = next((n for n in HF_WEIGHT_FILES if (path / n).is_file()), None)
    if name is None:
        raise CheckpointError(f"{path}: config.json but no weights (looked for "
                              f"{', '.join(HF_WEIGHT_FILES)})")
    weight_map: Dict[str, str] = {}
    shards = [name]
    if name.endswith(".index.json"):
        weight_map = _read_json(path / name).get("weight_map") or {}
        if not isinstance(weight_map, dict) or not weight_map:
            raise CheckpointError(f"{path / name} has no weight_map: not a sharding index")
        shards = sorted(set(weight_map.values()))
        absent = [s for s in shards if not (path / s).is_file()]
        if absent:
            raise CheckpointError(f"{path / name} lists shard {absent[0]}, which is not in "
                                  f"{path} ({len(absent)} of {len(shards)} shards missing)")
    state: StateDict = {}
    for shard in shards:
        obj, _ = _load(path / shard)
        state.update(_unwrap(obj, path / shard, {})[0])
    lost = [k for k in weight_map if k not in state]
    if lost:
        raise CheckpointError(f"{path / name} lists {len(lost)} tensors that its shards do not "
                              f"hold (e.g. {lost[0]} in {weight_map[lost[0]]})")
    meta = meta_from_hf_config(config, with_decoder=hf_has_decoder(state))
    problem = check_config_fits(meta, from_hf(state))
    if problem:
        raise CheckpointError(f"{config_file} does not describe the weights beside it: {problem}")
    return state, meta, ["config.json", *([name] if weight_map else []), *shards]


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


def strip_backbone_prefix(state: StateDict) -> Tuple[StateDict, List[str]]:
    """Keep a detector's / segmentor's backbone keys without their prefix (``BACKBONE_PREFIXES``):
    ``(backbone state, the other keys)``. A file without such a prefix is returned as it is."""
    for prefix in BACKBONE_PREFIXES:
        if any(k.startswith(prefix) for k in state):
            return ({k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)},
                    [k for k in state if not k.startswith(prefix)])
    return state, []


def split_encoder(state: StateDict) -> Tuple[StateDict, List[str]]:
    """Strip framework / DDP prefixes and drop MAE decoder keys: ``(encoder state, dropped keys)``.

    When a file holds a whole detector or segmentor, only its backbone keys are kept; the rest
    (heads, pyramids, our segmentation backbone's ``adapter.*``) are returned as dropped so the
    caller can report them. MMSeg ``MAE`` / ``BEiT`` names are renamed to ours
    (``backbones.beit_layout``), so every caller sees one naming.
    """
    state, dropped = strip_backbone_prefix(strip_ddp_prefix(state))
    dropped += [k for k in state if NON_ENCODER_KEY.match(k)]
    state = {k: v for k, v in state.items() if not NON_ENCODER_KEY.match(k)}
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
