"""Reading and writing ViT checkpoints in every format the toolkit meets (reading: re-exported
from ``backbones.checkpoint_files`` and ``backbones.checkpoint_reader``, the one reader; the list
of layouts is docs/checkpoints.md).

Canonical ("ours") format: a plain tensor state dict with the official MAE / timm parameter names
(``cls_token``, ``pos_embed``, ``patch_embed.proj.*``, ``blocks.{i}.*``, ``norm.*``), stored as
safetensors (preferred; metadata as JSON under the ``mae_transfer`` key) or ``.pth``
(``{'model': state_dict, 'meta': {...}}``).

Readers also accept: official MAE releases and MAE training checkpoints (``{'model': ...}`` with or
without ``decoder_*``/``mask_token``), timm state dicts, Detectron2 exports (``backbone.net.``
prefix, ``{'model': ...}``), MMSeg exports of ``MAEViT`` (``backbone.`` prefix,
``{'state_dict': ...}``), and MMSeg ``MAE`` / ``BEiT`` backbones or segmentors and unilm BEiT files
(renamed by ``backbones.beit_layout``), and Hugging Face ViT / ViTMAE folders or state dicts
(renamed by ``backbones.hf_layout``). Writers: ``ours``, ``timm``, ``detectron2``, ``mmseg`` (our
``MAEViT`` inside an MMSeg ``EncoderDecoder``), ``mmseg-mae`` (MMSeg's own ``MAE`` backbone:
the file its ``init_cfg=dict(type='Pretrained', ...)`` / ``model.pretrained`` loads, unprefixed
keys in ``{'state_dict': ...}``) and ``hf`` (a Hugging Face ``ViTMAEModel`` /
``ViTMAEForPreTraining`` folder, ``backbones.hf_layout``).

Files are read with ``weights_only=True`` (the framework objects of our MMEngine and Detectron2
checkpoints allow-listed): a pickle that would run code is refused, never executed.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import torch

# The readers live in backbones (backbones.load_pretrained uses them); re-exported here.
from mae_transfer.backbones.beit_layout import to_mmseg_beit
from mae_transfer.backbones.checkpoint_files import (BACKBONE_PREFIXES, DECODER_KEY, META_KEY,
                                        CheckpointError, StateDict, describe_architecture,
                                        describe_layout, meta_grid, read_checkpoint,
                                        split_encoder, strip_ddp_prefix)
from mae_transfer.backbones.checkpoint_reader import CheckpointReport, Weights, read_weights
from mae_transfer.backbones.hf_layout import hf_config, to_hf
from mae_transfer.tools.atomic import atomic_torch_save, atomic_write

__all__ = ["BACKBONE_PREFIXES", "DECODER_KEY", "FORMATS", "META_KEY", "CheckpointError",
           "CheckpointReport", "StateDict", "Weights", "describe_architecture", "describe_layout",
           "meta_grid", "read_checkpoint", "read_weights", "split_encoder", "strip_ddp_prefix",
           "write_checkpoint"]
FORMATS = ("ours", "timm", "detectron2", "mmseg", "mmseg-mae", "hf")


def _safetensors_bytes(state: StateDict, metadata: dict) -> bytes:
    from safetensors.torch import save

    # Bytes written by Python: a full disk is an OSError(ENOSPC), and the file gets the
    # umask's mode (safetensors' save_file makes it 0600).
    return save({k: v.detach().contiguous().clone() for k, v in state.items()}, metadata=metadata)


def write_hf_folder(state: StateDict, folder: str | os.PathLike, meta: dict | None = None
                    ) -> Path:
    """A Hugging Face ``save_pretrained``-style folder: ``config.json`` + ``model.safetensors``.

    ``state``: our names, the encoder and, if present, the MAE decoder (then the folder is a
    ``ViTMAEForPreTraining``, else a ``ViTMAEModel``); renamed by ``backbones.hf_layout``, whose
    ``hf_config`` writes ``config.json`` (LayerNorm epsilon: ours). Each file is written
    atomically, the weights first: a folder with a ``config.json`` has its weights.
    """
    folder = Path(folder)
    if folder.is_file() or folder.suffix in (".safetensors", ".pth", ".pt", ".bin"):
        raise ValueError(f"{folder} names a file; --to hf writes a folder (config.json + "
                         f"model.safetensors): give a folder name")
    config = hf_config(state, meta)
    hf_state, _ = to_hf(state)
    data = _safetensors_bytes(hf_state, {"format": "pt", META_KEY: json.dumps(meta or {})})
    atomic_write(folder / "model.safetensors", lambda tmp: tmp.write_bytes(data))
    text = json.dumps(config, indent=2, sort_keys=True) + "\n"
    atomic_write(folder / "config.json", lambda tmp: tmp.write_text(text))
    return folder


def write_checkpoint(state: StateDict, path: str | os.PathLike, fmt: str = "ours",
                     meta: dict | None = None) -> Path:
    """Write an encoder state dict in ``fmt`` (one of ``FORMATS``) atomically (temp + rename).

    ``hf``: ``path`` is a folder (``write_hf_folder``); ``state`` may hold the MAE decoder too.
    """
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; choose from {FORMATS}")
    path = Path(path)
    meta = dict(meta or {})
    if fmt == "hf":
        return write_hf_folder(state, path, meta)
    if path.suffix == ".safetensors":
        if fmt in ("detectron2", "mmseg", "mmseg-mae"):
            raise ValueError(f"{fmt} loads .pth files; give the output a .pth name")
        data = _safetensors_bytes(state, {META_KEY: json.dumps(meta)})
        return atomic_write(path, lambda tmp: tmp.write_bytes(data))
    if fmt == "ours":
        obj = {"model": dict(state), "meta": meta}
    elif fmt == "timm":
        obj = dict(state)
    elif fmt == "detectron2":
        obj = {"model": {f"backbone.net.{k}": v for k, v in state.items()}, "meta": meta}
    elif fmt == "mmseg":
        obj = {"state_dict": {f"backbone.{k}": v for k, v in state.items()}, "meta": meta}
    else:  # mmseg-mae: what MMSeg's MAE backbone loads itself (its init_cfg reads unprefixed keys)
        obj = {"state_dict": to_mmseg_beit(state, meta_grid(meta)), "meta": meta}
    return atomic_torch_save(obj, path)

