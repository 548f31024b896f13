"""Tiny LVIS Mask R-CNN that trains on a CPU in seconds: ``mask_rcnn_vit_mini_cpu.py`` (model,
128 px LSJ, optimizer, schedule) with the LVIS settings of the full LVIS configs: train
``lvis_v1_train`` with repeat-factor sampling, evaluate ``lvis_v1_val`` with ``LVISEvaluator``
(300 detections, APr / APc / APf), sigmoid classifier with the federated loss, score threshold
0.02 and 300 detections per image (``common/lvis_loader.py``, ``common/lvis_recipe.py``).

80 classes: the LVIS-format set ``tools/make_lvis_dataset.py`` makes from COCO data, e.g. from
the real COCO sample (set ``model.roi_heads.num_classes`` to another set's category count, e.g.
3 for ``--synthetic``):

    python tools/make_lvis_dataset.py /tmp/lvis_mini --coco-root ../shared/data/coco-mini \
        --val-from-train 16 --rare-below 4 --common-below 12
    DETECTRON2_DATASETS=/tmp/lvis_mini python tools/train_det.py \
        --config detection/configs/mask_rcnn_vit_lvis_mini_cpu.py train.output_dir=/tmp/lvis_smoke
"""
from .common.lvis_loader import use_lvis
from .common.lvis_recipe import lvis_roi_heads
from .mask_rcnn_vit_mini_cpu import dataloader, lr_multiplier, model, optimizer, train

#: Categories of the LVIS-format COCO sample (tools/make_lvis_dataset.py --coco-root).
NUM_CLASSES = 80

use_lvis(dataloader)
lvis_roi_heads(model, num_classes=NUM_CLASSES)
train.output_dir = "./output/det_lvis_mini_cpu"
