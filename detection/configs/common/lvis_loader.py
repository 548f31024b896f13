"""LVIS v1 data as ViTDet's LVIS configs set it: COCO's LSJ loader (``coco_lsj.py``) with

- train ``lvis_v1_train`` through Detectron2's ``RepeatFactorTrainingSampler``, its repeat
  factors from ``repeat_factors_from_category_frequency(<the train dataset>, 0.001)``: category c
  seen in a fraction f(c) of the training images gets r(c) = max(1, sqrt(0.001 / f(c))), an image
  the largest r(c) of its categories (fractional parts by stochastic rounding each epoch);
- test ``lvis_v1_val``, evaluated by ``LVISEvaluator`` (``detection/lvis_evaluation.py``:
  Detectron2's, the ``lvis`` package's ``LVISEval``) with at most 300 detections per image.

``tools/train_det.py`` registers ``lvis_v1_{train,val}`` from ``$DETECTRON2_DATASETS/lvis`` (images
in ``$DETECTRON2_DATASETS/coco``) or ``--coco-root``; ``--dataset NAME=JSON:IMAGES`` registers
another LVIS-format json. ``use_lvis(dataloader)`` turns any COCO dataloader config into this
one (``mask_rcnn_vit_lvis_mini_cpu.py`` uses it on the tiny CPU loader). As in ViTDet, the
sampler's dataset node is an interpolation of the train loader's: the train json is loaded twice
when the loader is built.
"""
from detectron2.config import LazyCall as L
from detectron2.data.samplers import RepeatFactorTrainingSampler

from mae_transfer.detection.lvis_evaluation import MAX_DETS_PER_IMAGE, LVISEvaluator

from .coco_lsj import dataloader as _coco_dataloader

#: Images whose rarest category is in fewer than this fraction of the training images repeat.
REPEAT_THRESH = 0.001


def use_lvis(dataloader, train: str = "lvis_v1_train", test: str = "lvis_v1_val"):
    """Make ``dataloader`` (a COCO dataloader config, changed in place) ViTDet's LVIS one."""
    dataloader.train.dataset.names = train
    dataloader.train.sampler = L(RepeatFactorTrainingSampler)(
        repeat_factors=L(RepeatFactorTrainingSampler.repeat_factors_from_category_frequency)(
            dataset_dicts="${dataloader.train.dataset}", repeat_thresh=REPEAT_THRESH))
    dataloader.test.dataset.names = test
    dataloader.evaluator = L(LVISEvaluator)(
        dataset_name="${..test.dataset.names}", max_dets_per_image=MAX_DETS_PER_IMAGE)
    return dataloader


dataloader = use_lvis(_coco_dataloader)
