"""Convert a ViT checkpoint between formats: official MAE / timm / ours / Detectron2 / MMSeg.

    python tools/convert_checkpoint.py SRC DST --to {ours,timm,detectron2,mmseg,mmseg-mae,hf}

The source layout is recognised by the one reader (``backbones.checkpoint_reader``; the list is
docs/checkpoints.md: MMSeg ``MAE`` / ``BEiT`` names, our MMEngine ``iter_N.pth`` and Detectron2
``model_final.pth`` included). Only encoder
tensors are written (MAE decoder keys and detector / segmentor heads are dropped and listed),
unchanged bit for bit, under the names the target framework's model uses: Detectron2
``backbone.net.*`` in ``{'model': ...}``, MMSeg (our ``MAEViT``) ``backbone.*`` in
``{'state_dict': ...}``, MMSeg's own ``MAE`` backbone (``mmseg-mae``: ``layers.{i}.ln1`` ... in
``{'state_dict': ...}``, what its ``model.pretrained`` / ``init_cfg`` loads; models with ViTDet's
decomposed relative position bias have no such layout and are refused), timm and ours with plain
names (ours as .safetensors or .pth with metadata). ``--to hf`` writes a folder (``config.json`` +
``model.safetensors``) that ``transformers``' ``ViTMAEModel.from_pretrained`` loads, or, when SRC
holds the MAE decoder too (an MAE training checkpoint, a ``ViTMAEForPreTraining`` folder),
``ViTMAEForPreTraining.from_pretrained`` (``backbones.hf_layout``); SRC may itself be a Hugging
Face folder. Errors are one line on stderr and exit status 2.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from mae_transfer.backbones.hf_layout import to_hf  # noqa: E402
from mae_transfer.tools.checkpoints import (FORMATS, CheckpointError, describe_architecture,  # noqa: E402
                               read_weights, write_checkpoint)

#: Metadata of a training framework's own checkpoint (MMEngine: the config text, message-hub
#: bookkeeping) that describes the run, not the weights: not carried into a converted file.
RUN_META = ("cfg", "message_hub", "experiment_name", "seed", "time", "mmengine_version")


def convert(src: str, dst: str, to: str, num_heads: int = 0, decoder_num_heads: int = 0) -> dict:
    """Convert ``src`` to ``dst`` in format ``to``; returns a summary dict (counts, dropped keys,
    the layout the one reader recognised).

    ``to="hf"`` also writes the MAE decoder when ``src`` has one. Head counts are recorded by no
    tensor: ``num_heads`` / ``decoder_num_heads`` override what ``src``'s metadata says (or the
    standard counts, for a file without metadata).
    """
    weights = read_weights(src)
    if not any(k.startswith(("blocks.", "patch_embed.")) for k in weights.state):
        raise CheckpointError(f"{src} holds no ViT encoder ({weights.report.layout}); "
                              f"nothing written")
    meta = {k: v for k, v in weights.meta.items() if k not in RUN_META}
    meta = {**meta, "converted_from": os.path.basename(os.path.normpath(src))}
    state, dropped = weights.state, list(weights.report.dropped_keys)
    if to == "hf":
        decoder = read_weights(weights, part="decoder").state
        state = {**state, **decoder}
        dropped = [k for k in dropped if k not in decoder] + to_hf(state)[1]
        model_config = dict(meta.get("model_config") or {})
        if num_heads:
            meta["num_heads"] = model_config["num_heads"] = num_heads
        if decoder_num_heads:
            model_config["decoder_num_heads"] = decoder_num_heads
        meta["model_config"] = model_config
    write_checkpoint(state, dst, to, meta)
    summary = {"tensors": len(state), "dropped": dropped,
               "architecture": describe_architecture(state), "layout": weights.report.layout}
    if to == "hf":  # what no tensor records: say what config.json got
        config = json.loads((Path(dst) / "config.json").read_text())
        summary["config"] = (
            f"{config['architectures'][0]}, {config['num_attention_heads']} heads"
            + (f", decoder {config['decoder_num_attention_heads']} heads"
               if "decoder_num_attention_heads" in config else "")
            + f", layer_norm_eps {config['layer_norm_eps']:g}, mask_ratio "
              f"{config['mask_ratio']:g}, norm_pix_loss {config['norm_pix_loss']}")
    return summary


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("src", help="input checkpoint (.pth / .pt / .safetensors / .bin, or a Hugging "
                                "Face save_pretrained folder)")
    ap.add_argument("dst", help="output path (--to hf: a folder)")
    ap.add_argument("--to", choices=FORMATS, default="ours", help="target format (default: ours)")
    ap.add_argument("--num-heads", type=int, default=0,
                    help="--to hf: the encoder's attention heads, when SRC does not record them "
                         "(default: SRC's metadata, else 12 for 768-d, 16 for 1024/1280-d, ...)")
    ap.add_argument("--decoder-num-heads", type=int, default=0,
                    help="--to hf: the MAE decoder's heads (default: SRC's metadata, else 16 for "
                         "512-d)")
    args = ap.parse_args(argv)
    try:
        summary = convert(args.src, args.dst, args.to, args.num_heads, args.decoder_num_heads)
    except (CheckpointError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"read {args.src} as {summary['layout']}; "
          f"wrote {args.dst} ({args.to}): {summary['tensors']} tensors, "
          f"ViT with {summary['architecture']}; dropped {len(summary['dropped'])} non-encoder keys"
          + (f"; config.json: {summary['config']}" if "config" in summary else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
