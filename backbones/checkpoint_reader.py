"""THE checkpoint reader: any supported file -> our parameter names + metadata + a report.

Every caller that reads weights (``backbones.load_pretrained``, detection's
``train.init_checkpoint``, pretraining's ``--init`` and ``pretrain.restore``, segmentation's
``MAEViT.load_pretrained``, ``tools/convert_checkpoint.py``) goes through ``read_weights`` and only
decides what to log and what to require, so a new layout is added here once and every report
reads the same. The layouts, how each is recognised and which test covers it: docs/checkpoints.md.

``read_weights(path)`` reads a file (or a Hugging Face folder) once (``backbones.checkpoint_files``:
``weights_only=True``, framework objects allow-listed) and recognises its layout; Hugging Face
names become ours right away (``backbones.hf_layout``), decoder included. ``read_weights(path_or_weights, model)``
also fits the tensors to ``model`` (position-embedding grid, relative-position tables, patch
kernel: ``backbones.loading``), refuses what cannot fit, and lists the missing /
unexpected / resized keys. It never loads anything: ``Weights.load_into(model)`` does, so a caller
may inspect the report first (a detector file read once, then fitted to the whole detector).
"""
from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, List, Sequence, Union

import torch.nn as nn

from mae_transfer.backbones.beit_layout import is_mmseg_beit
from mae_transfer.backbones.checkpoint_files import (DECODER_KEY, CheckpointError, StateDict,
                                                     describe_layout, read_file, split_encoder,
                                                     strip_backbone_prefix, strip_ddp_prefix)
from mae_transfer.backbones.hf_layout import from_hf, hf_has_decoder, is_hf_vit
from mae_transfer.backbones.loading import (CheckpointReport, adapt_state_dict, check_coverage,
                                            check_rel_pos_kind)

logger = logging.getLogger("mae_transfer.load")

#: What ``read_weights`` returns of a file: the ViT encoder (our names, MMSeg ``MAE`` names
#: renamed), the MAE decoder (``decoder_*``, ``mask_token``), or every tensor under the file's own
#: names less a DDP ``module.`` prefix (a whole detector / MAE, for a model of the same kind).
PARTS = ("encoder", "decoder", "all")

#: The layout of a whole Detectron2 detector (a run's ``model_final.pth``): keys only it has.
DETECTRON2_DETECTOR = "Detectron2 detector"
_DETECTOR_KEY = re.compile(r"^(roi_heads|proposal_generator|backbone\.pyramid)\.")
_VIT_KEY = re.compile(r"^(blocks\.\d+\.|patch_embed\.proj\.)")


def _has_vit(keys, prefix: str = "") -> bool:
    return any(k.startswith(prefix) and _VIT_KEY.match(k[len(prefix):]) for k in keys)


#: The Hugging Face layouts (``backbones.hf_layout``): renamed to ours as the file is read.
HF_MAE_LAYOUT = "Hugging Face ViTMAEForPreTraining (vit.*, decoder.*)"
HF_LAYOUT = "Hugging Face ViTMAEModel / ViTModel (embeddings.*, encoder.layer.{i}.*)"

#: Recognised layouts, most specific first: (name, test on the DDP-prefix-free keys).
_KEY_LAYOUTS = (
    (HF_MAE_LAYOUT, lambda keys: is_hf_vit(keys) and hf_has_decoder(keys)),
    (HF_LAYOUT, is_hf_vit),
    (DETECTRON2_DETECTOR, lambda keys: any(_DETECTOR_KEY.match(k) for k in keys)),
    ("Detectron2 ViT (backbone.net.*)", lambda keys: _has_vit(keys, "backbone.net.")),
    ("MMSeg MAE/BEiT (layers.{i}.*)", lambda keys: is_mmseg_beit(strip_backbone_prefix(
        dict.fromkeys(keys))[0])),
    ("MMSeg MAEViT (backbone.*)", lambda keys: _has_vit(keys, "backbone.")),
    ("unilm BEiT (q_bias/v_bias)", lambda keys: any(k.endswith("attn.q_bias") for k in keys)),
    ("MAE with decoder (decoder_*, mask_token)", lambda keys: any(DECODER_KEY.match(k)
                                                                  for k in keys)),
    ("timm ViT (head.*)", lambda keys: any(k.startswith("head.") for k in keys)),
    ("ViT encoder (blocks.{i}.*)", _has_vit),
)


def recognise_layout(path: Path, top_keys: Sequence[str], keys: Iterable[str]) -> str:
    """The layout's name (docs/checkpoints.md): the container, then how the tensors are named."""
    keys = [k[len("module."):] if k.startswith("module.") else k for k in keys]
    naming = next((name for name, test in _KEY_LAYOUTS if test(keys)),
                  f"not a ViT checkpoint: {describe_layout(keys)}")
    if path.is_dir():  # top_keys: the files read (config.json, an index, the shards)
        files = top_keys if len(top_keys) <= 3 else [*top_keys[:2], f"{len(top_keys) - 2} shards"]
        return f"Hugging Face folder ({', '.join(files)}): {naming}"
    if path.suffix == ".safetensors":
        container = "safetensors" if naming in (HF_LAYOUT, HF_MAE_LAYOUT) else "ours (safetensors)"
        return f"{container}: {naming}"
    if "message_hub" in top_keys:
        return f"MMEngine checkpoint: {naming}"
    if "meta" in top_keys and "model" in top_keys:
        return f"ours (.pth + meta): {naming}"
    return naming


@dataclass
class Weights:
    """A checkpoint as ``read_weights`` returns it."""

    state: StateDict  # the part asked for, our names; fitted to the model when one was given
    meta: dict
    report: CheckpointReport
    raw: StateDict  # every tensor of the file, DDP prefix stripped, under the file's names
    #                 (Hugging Face names excepted: renamed to ours as read, backbones.hf_layout)

    @property
    def whole_detector(self) -> bool:
        """The file holds a whole Detectron2 detector (heads, proposal generator, pyramid)."""
        return self.report.layout.endswith(DETECTRON2_DETECTOR)

    def load_into(self, model) -> CheckpointReport:
        """``model.load_state_dict(state, strict=False)``; returns the report (the same keys)."""
        model.load_state_dict(self.state, strict=False)
        return self.report


def _excluded(name: str, exclude: Sequence[str]) -> bool:
    return any(name == e or name.startswith(e + ".") for e in exclude)


def _part(raw: StateDict, part: str):
    """``(tensors of that part, keys of the file left out)``."""
    if part == "encoder":
        return split_encoder(raw)
    if part == "decoder":
        body, _ = strip_backbone_prefix(raw)
        decoder = {k: v for k, v in body.items() if DECODER_KEY.match(k)}
        return decoder, [k for k in raw if k not in decoder]
    return dict(raw), []


def _check_shapes(state: StateDict, own: StateDict, source: str, target: str) -> None:
    bad = [f"{k}: {tuple(v.shape)} vs model {tuple(own[k].shape)}"
           for k, v in state.items() if k in own and v.shape != own[k].shape]
    if bad:
        raise CheckpointError(f"{source} does not fit {target or 'this model'}: {len(bad)} tensors "
                              f"differ in shape (e.g. {'; '.join(bad[:2])})")


def read_weights(source: Union[str, os.PathLike, Weights], model=None, *, part: str = "encoder",
                 exclude: Sequence[str] = (), target: str = "") -> Weights:
    """Read ``source`` (a file, or ``Weights`` read before: the file is not read again).

    ``part``: one of ``PARTS``. ``model``: the module the tensors are for; when given, the
    encoder is fitted (resized, checked for coverage and relative-position kind) and any part is
    checked for shapes, and the report lists missing and unexpected keys. ``exclude``: model
    names (parameters or submodules) this read does not concern, removed from both sides and
    never reported (an MAE's decoder while its encoder loads, a segmentation adapter).
    ``target``: how the model is named in messages (e.g. ``model.backbone.net``).
    """
    if part not in PARTS:
        raise ValueError(f"part must be one of {PARTS}, got {part!r}")
    if isinstance(source, Weights):
        raw, meta, name, layout = source.raw, source.meta, source.report.source, \
            source.report.layout
    else:
        name = str(source)
        raw, meta, top_keys = read_file(source)
        layout = recognise_layout(Path(source), top_keys, raw)
        raw = strip_ddp_prefix(raw)
        if is_hf_vit(raw):
            raw = from_hf(raw)
    state, dropped = _part(raw, part)
    state = {k: v for k, v in state.items() if not _excluded(k, exclude)}
    report = CheckpointReport(name, layout, part, target, len(state), dropped_keys=dropped)
    if model is None:
        return Weights(state, meta, report, raw)
    own = {k: v for k, v in model.state_dict().items() if not _excluded(k, exclude)
           and (part != "decoder" or DECODER_KEY.match(k))}
    if part == "encoder":
        check_coverage(state, own, raw.keys(), name)
        check_rel_pos_kind(state, own, name)
        state, report.resized_keys = adapt_state_dict(state, model, meta, source=name)
    else:
        _check_shapes(state, own, name, target)
    report.missing_keys = [k for k in own if k not in state]
    report.unexpected_keys = [k for k in state if k not in own]
    report.tensors = len(state) - len(report.unexpected_keys)
    report.notes = _eps_notes(meta, model)
    return Weights(state, meta, report, raw)


def _eps_notes(meta: dict, model) -> List[str]:
    """The file's LayerNorm epsilon when the model computes with another one (Hugging Face
    configs record theirs; the model keeps its own: docs/checkpoints.md)."""
    theirs = meta.get("layer_norm_eps")
    ours = next((m.eps for m in model.modules() if isinstance(m, nn.LayerNorm)), None)
    if theirs is None or ours is None or float(theirs) == float(ours):
        return []
    return [f"the file's config says layer_norm_eps {float(theirs):g}, the model computes with "
            f"{float(ours):g}"]


def load_pretrained(model, path: str | os.PathLike, strict: bool = False,
                    exclude: Sequence[str] = ()) -> CheckpointReport:
    """Load ``path`` (any layout of docs/checkpoints.md) into a ViT; return the report.

    The policy of a plain ViT load: the report's summary line is logged (warning level when
    pretrained keys are missing or some are unused); ``strict=True`` turns any missing or
    unexpected key into a ``CheckpointError``. ``exclude``: see ``read_weights``.
    """
    report = read_weights(path, model, exclude=exclude).load_into(model)
    logger.log(logging.INFO if report.clean else logging.WARNING, "loaded %s", report.summary())
    if strict and (report.missing_keys or report.unexpected_keys):
        raise CheckpointError(f"{path}: strict load failed: missing {report.missing_keys}, "
                              f"unexpected {report.unexpected_keys}")
    return report
