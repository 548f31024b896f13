"""Draw a trained detector's boxes and masks on images (Detectron2's Visualizer).

    python tools/demo_det.py --config detection/configs/mask_rcnn_vit_mini_cpu.py \
        --weights /tmp/det_smoke/model_final.pth --input img1.jpg img_folder/ --output /tmp/vis \
        [--confidence 0.5] [--dataset NAME=...] [key=value ...]

``--weights``: a detector checkpoint (``model_final.pth`` of ``tools/train_det.py``, or any
whole-detector state dict). Class names come from the config's test dataset when it is
registered (``--dataset`` as in train_det.py, or COCO 2017), else are drawn as ``class <i>``.
Each input is resized as the config's test loader does, and ``OUTPUT/<name>.jpg`` is written at
the original resolution; one line per image reports how many instances were drawn.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from mae_transfer import detection  # noqa: E402

detection.setup()  # the framework fixes (detection/compat.py), before any detectron2 import
import detectron2.data.transforms as T  # noqa: E402
from detectron2.config import instantiate  # noqa: E402
from detectron2.data import DatasetCatalog, MetadataCatalog  # noqa: E402
from detectron2.data.detection_utils import read_image  # noqa: E402
from detectron2.utils.visualizer import Visualizer  # noqa: E402

from mae_transfer.detection.checkpointing import load_init_checkpoint  # noqa: E402
from mae_transfer.detection.config_overrides import load_config  # noqa: E402
from mae_transfer.detection.cli import (add_dataset_arguments, apply_cpu_threads,  # noqa: E402
                           register_datasets, run_reporting_input_errors)
from mae_transfer.detection.datasets import DatasetError  # noqa: E402
from mae_transfer.tools.image_inputs import list_images  # noqa: E402


def class_metadata(cfg, num_classes: int):
    """The test dataset's metadata when its classes can be known, else placeholder names."""
    name = cfg.dataloader.test.dataset.names
    name = name if isinstance(name, str) else name[0]
    if name in DatasetCatalog.list():
        meta = MetadataCatalog.get(name)
        if meta.get("thing_classes") is None:
            try:
                DatasetCatalog.get(name)  # our loader sets thing_classes
            except (DatasetError, OSError):
                pass
        if meta.get("thing_classes") is not None and len(meta.thing_classes) == num_classes:
            return meta
    placeholder = "__demo_placeholder_classes"
    meta = MetadataCatalog.get(placeholder)
    if meta.get("thing_classes") is None:
        meta.thing_classes = [f"class {i}" for i in range(num_classes)]
    return meta


class Predictor:
    """The config's model + test-time resize, one image at a time: RGB uint8 in, Instances out."""

    def __init__(self, cfg, weights: str, device: str):
        self.model = instantiate(cfg.model).to(device).eval()
        load_init_checkpoint(self.model, weights)
        self.augment = T.AugmentationList(instantiate(cfg.dataloader.test.mapper.augmentations))
        self.input_format = cfg.model.input_format

    @torch.no_grad()
    def __call__(self, rgb: np.ndarray):
        height, width = rgb.shape[:2]
        aug = T.AugInput(rgb)
        self.augment(aug)
        image = aug.image if self.input_format == "RGB" else aug.image[:, :, ::-1]
        tensor = torch.as_tensor(np.ascontiguousarray(image.transpose(2, 0, 1)))
        return self.model([{"image": tensor, "height": height, "width": width}])[0]["instances"]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", required=True, metavar="FILE")
    ap.add_argument("--weights", required=True, help="detector checkpoint (e.g. model_final.pth)")
    ap.add_argument("--input", nargs="+", required=True, help="image files and/or folders")
    ap.add_argument("--output", required=True, help="folder for the drawn images")
    ap.add_argument("--confidence", type=float, default=0.5, help="minimum score to draw")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    add_dataset_arguments(ap)
    ap.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides key=value")
    args = ap.parse_args(argv)
    return run_reporting_input_errors(lambda: draw(args))


def draw(args) -> None:
    images = list_images(args.input)  # bad input fails before anything slow happens
    cfg = load_config(args.config, args.opts)
    apply_cpu_threads(cfg, args.device)
    register_datasets(args)
    predictor = Predictor(cfg, args.weights, args.device)
    metadata = class_metadata(cfg, cfg.model.roi_heads.num_classes)
    out_dir = Path(args.output)
    out_dir.mkdir(parents=True, exist_ok=True)
    for path in images:
        try:
            rgb = read_image(str(path), format="RGB")
        except OSError as exc:
            raise FileNotFoundError(f"cannot read image {path}: {exc}") from exc
        instances = predictor(rgb).to("cpu")
        instances = instances[instances.scores >= args.confidence]
        drawn = Visualizer(rgb, metadata).draw_instance_predictions(instances)
        target = out_dir / f"{path.stem}.jpg"
        drawn.save(str(target))
        print(f"{path}: {len(instances)} instances (score >= {args.confidence}) -> {target}")


if __name__ == "__main__":
    sys.exit(main())
