"""Convert a ViT checkpoint between formats: official MAE / timm / ours / Detectron2 / MMSeg.

    python tools/convert_checkpoint.py SRC DST --to {ours,timm,detectron2,mmseg,mmseg-mae}

The source layout is recognised by the one reader (``backbones.checkpoint_reader``; the list is
docs/checkpoints.md: MMSeg ``MAE`` / ``BEiT`` names, our MMEngine ``iter_N.pth`` and Detectron2
``model_final.pth`` included). Only encoder
tensors are written (MAE decoder keys and detector / segmentor heads are dropped and listed),
unchanged bit for bit, under the names the target framework's model uses: Detectron2
``backbone.net.*`` in ``{'model': ...}``, MMSeg (our ``MAEViT``) ``backbone.*`` in
``{'state_dict': ...}``, MMSeg's own ``MAE`` backbone (``mmseg-mae``: ``layers.{i}.ln1`` ... in
``{'state_dict': ...}``, what its ``model.pretrained`` / ``init_cfg`` loads; models with ViTDet's
decomposed relative position bias have no such layout and are refused), timm and ours with plain
names (ours as .safetensors or .pth with metadata). Errors are one line on stderr and exit status 2.
"""
from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from mae_transfer.tools.checkpoints import (FORMATS, CheckpointError, describe_architecture,  # noqa: E402
                               read_weights, write_checkpoint)

#: Metadata of a training framework's own checkpoint (MMEngine: the config text, message-hub
#: bookkeeping) that describes the run, not the weights: not carried into a converted file.
RUN_META = ("cfg", "message_hub", "experiment_name", "seed", "time", "mmengine_version")


def convert(src: str, dst: str, to: str) -> dict:
    """Convert ``src`` to ``dst`` in format ``to``; returns a summary dict (counts, dropped keys,
    the layout the one reader recognised)."""
    weights = read_weights(src)
    if not any(k.startswith(("blocks.", "patch_embed.")) for k in weights.state):
        raise CheckpointError(f"{src} holds no ViT encoder ({weights.report.layout}); "
                              f"nothing written")
    meta = {k: v for k, v in weights.meta.items() if k not in RUN_META}
    meta = {**meta, "converted_from": os.path.basename(src)}
    write_checkpoint(weights.state, dst, to, meta)
    return {"tensors": len(weights.state), "dropped": weights.report.dropped_keys,
            "architecture": describe_architecture(weights.state),
            "layout": weights.report.layout}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("src", help="input checkpoint (.pth / .pt / .safetensors)")
    ap.add_argument("dst", help="output path")
    ap.add_argument("--to", choices=FORMATS, default="ours", help="target format (default: ours)")
    args = ap.parse_args(argv)
    try:
        summary = convert(args.src, args.dst, args.to)
    except (CheckpointError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"read {args.src} as {summary['layout']}; "
          f"wrote {args.dst} ({args.to}): {summary['tensors']} tensors, "
          f"ViT with {summary['architecture']}; dropped {len(summary['dropped'])} non-encoder keys")
    return 0


if __name__ == "__main__":
    sys.exit(main())
