"""Colour overlays of the classes a trained UperNet predicts.

    python tools/demo_seg.py CONFIG CHECKPOINT IMG [IMG or FOLDER ...] --out DIR
                             [--opacity 0.5] [--device cpu|cuda]

For each image, writes ``DIR/<name>.png`` (the image blended with one colour per predicted class)
and ``DIR/<name>_labels.png`` (8-bit class map in the ADE20K convention: class k -> value k + 1,
0 unused), and prints the classes covering the most pixels. The class names, palette and number of
classes come from the checkpoint (MMEngine stores the training set's ``dataset_meta``; the count
is read off the heads' weights), so the config used for training works even when ``--data-root``
gave it a custom class list, and a checkpoint whose class list disagrees with its weights is a
one-line error instead of a failed load. So is a file that is no segmentor (a Detectron2 detector,
a bare ViT): the line says what it looks like and which tool takes it.
"""
from __future__ import annotations

import argparse
import os
import re
import sys
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from mae_transfer import segmentation  # noqa: E402

segmentation.setup()  # the framework fixes (segmentation/compat.py), before any mmseg import
import mae_transfer.segmentation.registration  # noqa: E402,F401  (MAEViT, the dataset, ...)

import numpy as np  # noqa: E402
from PIL import Image, UnidentifiedImageError  # noqa: E402

from mae_transfer.backbones.checkpoint_files import describe_layout  # noqa: E402
from mae_transfer.segmentation.class_count import checkpoint_num_classes, head_cfgs  # noqa: E402
from mae_transfer.segmentation.runner import runner_checkpoint_loading  # noqa: E402
from mae_transfer.tools.image_inputs import list_images  # noqa: E402


def read_rgb(path: Path) -> np.ndarray:
    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"))
    except (UnidentifiedImageError, OSError) as exc:
        raise ValueError(f"cannot read image {path}: {exc}") from exc


def make_palette(num_classes: int, palette=None) -> np.ndarray:
    """The checkpoint's palette where it fits, else fixed distinct-looking colours."""
    if palette is not None and len(palette) >= num_classes:
        return np.asarray(palette[:num_classes], dtype=np.uint8)
    rng = np.random.default_rng(42)
    return rng.integers(40, 256, size=(num_classes, 3), dtype=np.uint8)


def overlay(image: np.ndarray, labels: np.ndarray, palette: np.ndarray, opacity: float
            ) -> np.ndarray:
    colours = palette[labels]
    return (image * (1 - opacity) + colours * opacity).round().astype(np.uint8)


def set_heads_from_checkpoint(cfg, state_dict, classes, checkpoint: str) -> None:
    """Give each head as many classes as its classifier in the checkpoint predicts.

    The checkpoint is what the demo shows, whatever the config says; its ``dataset_meta`` class
    list must agree with its weights (else the names would be wrong): one-line error if not.
    """
    counts = checkpoint_num_classes(state_dict, cfg.model)
    if classes and counts.get("decode_head", len(classes)) != len(classes):
        raise ValueError(f"checkpoint {checkpoint} lists {len(classes)} classes in its "
                         f"dataset_meta but its decode head predicts {counts['decode_head']}: use "
                         f"a checkpoint saved by tools/train_seg.py, whose class list matches "
                         f"its weights")
    for key, head in head_cfgs(cfg.model):
        if head.get("out_channels") is None:  # binary sigmoid heads keep their num_classes
            head["num_classes"] = counts.get(key, len(classes) if classes else
                                             head.get("num_classes"))


def check_is_segmentor(ckpt, checkpoint: str) -> dict:
    """The segmentor state dict of ``ckpt``; one line naming the layout and the tool to use when
    the file is something else (a Detectron2 detector, a bare ViT), not a failed strict load."""
    state = ckpt.get("state_dict", ckpt) if isinstance(ckpt, dict) else {}
    if any(str(k).removeprefix("module.").startswith("decode_head.") for k in state):
        return state
    inner = state.get("model") if isinstance(state.get("model"), dict) else state  # Detectron2
    keys = [str(k).removeprefix("module.") for k in inner]
    what = describe_layout(keys)
    if "Detectron2" in what:
        what += f"; draw its detections with tools/demo_det.py --weights {checkpoint}"
    elif any(re.match(r"(backbone\.)?(net\.)?blocks\.\d+\.", k) for k in keys):
        what = (f"a ViT backbone without segmentation heads; fine-tune it first with "
                f"tools/train_seg.py CONFIG --pretrained {checkpoint}")
    raise ValueError(f"checkpoint {checkpoint} has no decode_head.* weights, so it is no MMSeg "
                     f"segmentor: it looks like {what}")


def load_segmentor(config: str, checkpoint: str, device: str):
    """Build the model with the checkpoint's class count and load its weights and metadata."""
    from mmengine.config import Config
    from mmengine.model import revert_sync_batchnorm
    from mmengine.runner.checkpoint import _load_checkpoint, _load_checkpoint_to_model
    from mmseg.apis import init_model

    if not os.path.isfile(config):
        raise FileNotFoundError(f"no config file {config}")
    if not os.path.isfile(checkpoint):
        raise FileNotFoundError(f"no checkpoint file {checkpoint}")
    try:
        with runner_checkpoint_loading():  # a checkpoint tools/train_seg.py (MMEngine) wrote
            ckpt = _load_checkpoint(checkpoint, map_location="cpu")
    except Exception as exc:  # torch / pickle errors of a truncated or foreign file
        raise ValueError(f"cannot read checkpoint {checkpoint}: {type(exc).__name__}") from exc
    state = check_is_segmentor(ckpt, checkpoint)
    meta = ckpt.get("meta", {}) if isinstance(ckpt, dict) else {}
    dataset_meta = meta.get("dataset_meta") or {}
    cfg = Config.fromfile(config)
    cfg.model.backbone.pretrained = None  # the weights come from the checkpoint
    classes = dataset_meta.get("classes")
    set_heads_from_checkpoint(cfg, state, classes, checkpoint)
    model = init_model(cfg, None, device="cpu")
    model = revert_sync_batchnorm(model)
    _load_checkpoint_to_model(model, ckpt, strict=True)
    if classes:
        model.dataset_meta = dataset_meta
    else:
        n = model.decode_head.num_classes
        model.dataset_meta = {"classes": [f"class_{i + 1}" for i in range(n)]}
    return model.to(device).eval()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("config")
    ap.add_argument("checkpoint")
    ap.add_argument("images", nargs="+", help="image files and/or folders of images")
    ap.add_argument("--out", required=True, help="output folder")
    ap.add_argument("--opacity", type=float, default=0.5)
    ap.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    args = ap.parse_args(argv)
    try:
        import torch
        from mmseg.apis import inference_model

        device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
        paths = list_images(args.images)
        model = load_segmentor(args.config, args.checkpoint, device)
        classes = list(model.dataset_meta["classes"])
        palette = make_palette(len(classes), model.dataset_meta.get("palette"))
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        for path in paths:
            image = read_rgb(path)
            # MMSeg pipelines read BGR (LoadImageFromFile); give the array in that order.
            with torch.no_grad():
                result = inference_model(model, np.ascontiguousarray(image[..., ::-1]))
            labels = result.pred_sem_seg.data[0].cpu().numpy().astype(np.int64)
            Image.fromarray(overlay(image, labels, palette, args.opacity)).save(
                out / f"{path.stem}.png")
            Image.fromarray((labels + 1).astype(np.uint8)).save(out / f"{path.stem}_labels.png")
            counts = np.bincount(labels.ravel(), minlength=len(classes))
            top = [f"{classes[c]} {100 * counts[c] / labels.size:.0f}%"
                   for c in np.argsort(-counts)[:3] if counts[c]]
            print(f"{path.name}: {', '.join(top)} -> {out / (path.stem + '.png')}")
        return 0
    except (FileNotFoundError, ValueError) as exc:
        print(f"error: {str(exc).splitlines()[0]}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
