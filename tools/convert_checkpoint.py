"""Convert a ViT checkpoint between formats: official MAE / timm / ours / Detectron2 / MMSeg.

    python tools/convert_checkpoint.py SRC DST --to {ours,timm,detectron2,mmseg,mmseg-mae}

The source format is detected from its keys (MMSeg ``MAE`` / ``BEiT`` names included). Only encoder
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
                               read_checkpoint, split_encoder, write_checkpoint)


def convert(src: str, dst: str, to: str) -> dict:
    """Convert ``src`` to ``dst`` in format ``to``; returns a summary dict (counts, dropped keys)."""
    state, meta = read_checkpoint(src)
    encoder, dropped = split_encoder(state)
    meta = {**meta, "converted_from": os.path.basename(src)}
    write_checkpoint(encoder, dst, to, meta)
    return {"tensors": len(encoder), "dropped": dropped,
            "architecture": describe_architecture(encoder)}


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
    print(f"wrote {args.dst} ({args.to}): {summary['tensors']} tensors, "
          f"ViT with {summary['architecture']}; dropped {len(summary['dropped'])} non-encoder keys")
    return 0


if __name__ == "__main__":
    sys.exit(main())
