"""Reconstruction pictures of an MAE checkpoint: original | masked | reconstruction | + visible.

    python tools/visualize_mae.py CKPT IMAGE [IMAGE ...] --out recon.png [--mask_ratio 0.75]

CKPT is a training checkpoint of ours (``checkpoint-*.pth``) or an official MAE checkpoint that
includes the decoder. Images are resized (shorter side) and centre-cropped to the model's input
size. The masks are reproducible (``--seed``). Errors are one line on stderr, exit status 2.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

from mae_transfer.pretrain.restore import load_mae  # noqa: E402
from mae_transfer.pretrain.visualize import (center_crop_tensor, noise_for, reconstruction_rows,  # noqa: E402
                                save_png)
from mae_transfer.tools.checkpoints import CheckpointError  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("checkpoint", help="MAE checkpoint with its decoder")
    ap.add_argument("images", nargs="+", help="image files")
    ap.add_argument("--out", required=True, help="PNG to write")
    ap.add_argument("--mask_ratio", type=float, default=0.75)
    ap.add_argument("--seed", type=int, default=0, help="seed of the random masks")
    ap.add_argument("--norm_pix_loss", action=argparse.BooleanOptionalAction, default=None,
                    help="whether the model predicts per-patch normalised pixels (default: "
                         "from the checkpoint; official ones: no)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args(argv)
    try:
        model = load_mae(args.checkpoint, args.norm_pix_loss).to(args.device)
        size = model.config["img_size"][0]
        imgs = []
        for path in args.images:
            try:
                imgs.append(center_crop_tensor(Path(path), size))
            except (OSError, ValueError) as exc:
                raise ValueError(f"cannot read image {path}: {exc}") from exc
        batch = torch.stack(imgs).to(args.device)
        noise = noise_for(len(imgs), model.num_patches, args.seed).to(args.device)
        picture = reconstruction_rows(model, batch, noise, args.mask_ratio)
    except (CheckpointError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    out = save_png(picture, Path(args.out))
    print(f"wrote {out}: {len(imgs)} rows of original | masked | reconstruction | + visible")
    return 0


if __name__ == "__main__":
    sys.exit(main())
