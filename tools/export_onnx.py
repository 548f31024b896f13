"""Export a trained detector or segmentor to ONNX and check the file with onnxruntime.

    python tools/export_onnx.py det CONFIG model_final.pth OUT.onnx [--image IMG] [key=value ...]
    python tools/export_onnx.py seg CONFIG iter_N.pth OUT.onnx [--image IMG] [--size H W]
    ... --check-only      (check an existing OUT.onnx against the checkpoint, write nothing)

``det``: a Detectron2 ViTDet config and a whole-detector checkpoint (``model_final.pth`` of
``tools/train_det.py``); the graph takes one image at the model's fixed square size
(``mae_transfer.detection.export``). ``seg``: an MMSeg config and an ``iter_N.pth`` of
``tools/train_seg.py``; the graph is one forward at the slide crop size or ``--size``
(``mae_transfer.segmentation.export``). Inputs, outputs and the preprocessing a caller does:
docs/deploy.md.

Before the file is written, onnxruntime runs it on an image (``--image``, e.g. a photo of
``../shared/data/coco-mini``; else a generated one) and on a flipped copy, PyTorch runs the
model on the same pixels, and the largest differences are printed. Exit status: 0 when every
difference is within its tolerance (the file is then at OUT.onnx), 1 when not or when
onnxruntime cannot load or run the file (no file is written), 2 for bad input (a missing file,
a config or checkpoint of the wrong kind): one ``error:`` line, no traceback.
"""
from __future__ import annotations

import argparse
import os
import sys
import warnings
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

from mae_transfer.tools.onnx_check import (OnnxMismatch, describe_outputs, first_line,  # noqa: E402
                                           write_checked_onnx)

EXIT_MISMATCH, EXIT_BAD_INPUT = 1, 2


def read_image(path: str | None) -> np.ndarray:
    """``path`` as HxWx3 uint8 RGB; without a path, a generated 120x160 image (smooth colours,
    not square, so the detector's padding is exercised)."""
    if path is None:
        from mae_transfer.tools.synthetic_data import smooth_background

        background = smooth_background(np.random.default_rng(0), (160, 120))
        return ((background + 1) * 127.5).round().astype(np.uint8)
    from PIL import Image, UnidentifiedImageError

    if not Path(path).is_file():
        raise FileNotFoundError(f"no image file {path}")
    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"))
    except (UnidentifiedImageError, OSError) as exc:
        raise ValueError(f"cannot read image {path}: {exc}") from None


def publish(out: str, check_only: bool, export, check) -> str:
    """Check ``out`` as it is (``--check-only``), or export, check and then write it."""
    if check_only:
        if not Path(out).is_file():
            raise FileNotFoundError(f"no ONNX file {out} to check")
        return check(out)
    print(f"exporting to {out} ...", flush=True)

    def check_written(path: Path) -> str:
        size = path.stat().st_size / 2 ** 20
        print(f"exported ({size:.1f} MiB); running it with onnxruntime and the model with "
              f"PyTorch ...", flush=True)
        return check(path)

    return write_checked_onnx(out, export, check_written)


def run_det(args) -> None:
    from mae_transfer.detection import export as det

    rgb = read_image(args.image)
    cfg, model = det.load_detector(args.config, args.checkpoint, args.opts)
    examples = det.example_inputs(cfg, model, rgb)
    print(f"checking on {args.image or 'a generated image'} "
          f"(resized to {'x'.join(map(str, examples[0].image_size))} in a "
          f"{det.square_side(model)} px square) and a flipped, cropped copy", flush=True)
    line = publish(args.out, args.check_only,
                   lambda path: det.export_detector(model, examples[0], path),
                   lambda path: det.check_detector(path, model, examples))
    print(line)


def run_seg(args) -> None:
    from mae_transfer.segmentation import export as seg
    from mae_transfer.tools.demo_seg import load_segmentor  # the demo's loading, as it is

    rgb = read_image(args.image)
    seg.check_config(args.config)
    try:
        model = load_segmentor(args.config, args.checkpoint, "cpu")
    except RuntimeError as exc:  # MMEngine's strict load: missing, unexpected or resized keys
        raise ValueError(f"checkpoint {args.checkpoint} does not fit {args.config}: "
                         f"{first_line(exc)}") from None
    size = seg.export_size(model, args.size)
    examples = seg.example_inputs(rgb, size)
    print(f"checking on {args.image or 'a generated image'} (resized to {size[0]}x{size[1]}) "
          f"and a flipped copy", flush=True)
    line = publish(args.out, args.check_only,
                   lambda path: seg.export_segmentor(model, examples[0], path),
                   lambda path: seg.check_segmentor(path, model, examples))
    print(line)


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    kinds = ap.add_subparsers(dest="kind", required=True)
    for kind, helps in (("det", "Detectron2 ViTDet detector"), ("seg", "MMSeg UperNet segmentor")):
        p = kinds.add_parser(kind, help=f"export a {helps}")
        p.add_argument("config")
        p.add_argument("checkpoint")
        p.add_argument("out", help="the ONNX file to write")
        p.add_argument("--image", default=None, help="image to check the export on "
                       "(default: a generated one)")
        p.add_argument("--check-only", action="store_true",
                       help="check an existing OUT against the checkpoint, export nothing")
        if kind == "det":
            p.epilog = "Anything else of the form key=value overrides the config."
        else:
            p.add_argument("--size", type=int, nargs=2, metavar=("H", "W"), default=None,
                           help="input size (default: the config's slide crop)")
    args, rest = ap.parse_known_args(argv)
    # det: config overrides (key=value) anywhere after the kind, flags before or after them
    bad = [a for a in rest if args.kind != "det" or a.startswith("-") or "=" not in a]
    if bad:
        ap.error(f"unrecognized arguments: {' '.join(bad)}")
    args.opts = rest
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    with warnings.catch_warnings():
        # torchvision's NMS wrappers call torch.jit.script (deprecated since torch 2.10) when
        # Detectron2 imports them: not the user's business, and it would drown the report
        warnings.filterwarnings("ignore", message=".*torch.jit.script.* is deprecated")
        # Detectron2 v0.6's anchor generator calls torch.meshgrid without indexing=
        warnings.filterwarnings("ignore", message="torch.meshgrid: in an upcoming release")
        # MMSeg's notes on building its (unused here) losses: no news for an export either
        warnings.filterwarnings("ignore", category=UserWarning, module=r"mmseg\.models\.")
        return export(args)


def export(args) -> int:
    if args.kind == "det":
        from mae_transfer import detection

        detection.setup()  # the framework fixes (detection/compat.py)
        from mae_transfer.detection.cli import INPUT_ERRORS
        bad_input = INPUT_ERRORS + (ValueError, OSError)
    else:
        from mae_transfer import segmentation

        segmentation.setup()  # the framework fixes (segmentation/compat.py)
        bad_input = (ValueError, OSError)
    try:
        (run_det if args.kind == "det" else run_seg)(args)
    except OnnxMismatch as exc:
        print(f"error: {first_line(exc)}", file=sys.stderr)
        return EXIT_MISMATCH
    except bad_input as exc:
        print(f"error: {first_line(exc)}", file=sys.stderr)
        return EXIT_BAD_INPUT
    for line in describe_outputs(args.out):
        print(f"  {line}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
