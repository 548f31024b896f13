"""COCO 2017 data with large-scale jitter (ViTDet's recipe) and COCO box + mask evaluation.

Train: horizontal flip, resize by a random factor in [0.1, 2.0] of 1024x1024, then a 1024x1024
crop; boxes are recomputed from the cropped masks. As in ViTDet, the crop does not pad a smaller
image (``pad=False``): the model zero-pads the normalised batch to 1024x1024 and keeps the real
image size (``detection.rcnn.ViTDetRCNN``), exactly as at test time, so training never sees grey
128 borders and proposals are clipped to the image. Test: the longer side resized to 1024.
64 images per iteration in total (over all GPUs). Dataset names are Detectron2 catalog names;
``tools/train_det.py`` registers ``coco_2017_{train,val}`` from ``$DETECTRON2_DATASETS/coco`` (or
``--coco-root``) and any ``--dataset NAME=...`` you add. The mapper is Detectron2's
``DatasetMapper`` that names an image it cannot read in one line (``detection/mapper.py``).
"""
from omegaconf import OmegaConf

import detectron2.data.transforms as T
from detectron2.config import LazyCall as L
from detectron2.data import (build_detection_test_loader, build_detection_train_loader,
                             get_detection_dataset_dicts)
from mae_transfer.detection.coco_evaluator import FastCOCOEvaluator
from mae_transfer.detection.mapper import CheckedDatasetMapper

IMAGE_SIZE = 1024

dataloader = OmegaConf.create()
dataloader.train = L(build_detection_train_loader)(
    dataset=L(get_detection_dataset_dicts)(names="coco_2017_train"),
    mapper=L(CheckedDatasetMapper)(
        is_train=True,
        augmentations=[
            L(T.RandomFlip)(horizontal=True),
            L(T.ResizeScale)(min_scale=0.1, max_scale=2.0, target_height=IMAGE_SIZE,
                             target_width=IMAGE_SIZE),
            L(T.FixedSizeCrop)(crop_size=(IMAGE_SIZE, IMAGE_SIZE), pad=False),
        ],
        image_format="RGB",
        use_instance_mask=True,
        recompute_boxes=True,
    ),
    total_batch_size=64,
    num_workers=4,
)
dataloader.test = L(build_detection_test_loader)(
    dataset=L(get_detection_dataset_dicts)(names="coco_2017_val", filter_empty=False),
    mapper=L(CheckedDatasetMapper)(
        is_train=False,
        augmentations=[L(T.ResizeShortestEdge)(short_edge_length=IMAGE_SIZE, max_size=IMAGE_SIZE)],
        image_format="RGB",
    ),
    num_workers=4,
)
# Detectron2's COCOEvaluator with the AP computed by faster-coco-eval (pycocotools' numbers, 4-7x
# less CPU time); backend="pycocotools" runs pycocotools itself, as does "auto" without it.
dataloader.evaluator = L(FastCOCOEvaluator)(
    dataset_name="${..test.dataset.names}", tasks=("bbox", "segm"), backend="auto")
