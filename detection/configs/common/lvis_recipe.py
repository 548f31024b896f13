"""ViTDet's LVIS v1 edits to a COCO ``mask_rcnn_vitdet`` config: heads and schedule.

ViTDet's ``projects/ViTDet/configs/LVIS/mask_rcnn_vitdet_{b,l,h}_100ep.py`` take the COCO configs
and change, besides the data (``common/lvis_loader.py``):

- the box predictor (``lvis_roi_heads``): 1203 classes; a per-class sigmoid classifier trained
  with the federated loss (``mae_transfer.detection.federated_loss``: 50 classes per
  iteration, drawn with weights ``image_count ** 0.5`` of the training set named by
  ``dataloader.train.dataset.names``); score threshold 0.02 and 300 detections per image (LVIS
  AP is computed over 300). The mask head follows ``roi_heads.num_classes``;
  ``common/cascade.py``'s stages copy this predictor, as ViTDet's LVIS cascade configs set each
  stage's;
- the schedule (``LVIS_MAX_ITER``, ``lvis_schedule``): 100 epochs of LVIS v1 train counted as
  100k images at batch 64 = 156250 iterations, x0.1 at 8/9 and 26/27 (ViTDet's 138889 and
  150463), warm-up 250 iterations; for every size, H included (COCO H: 75 epochs);
- the base lr (``LVIS_LR``): 2e-4 for B and L; ViTDet's H keeps 1e-4 (its config says so
  explicitly), and its drop path 0.4 (COCO H: 0.5);
- evaluation every 30000 iterations.
"""
from detectron2.config import LazyCall as L

from mae_transfer.detection.federated_loss import (FED_LOSS_NUM_CLASSES,
                                                   FederatedFastRCNNOutputLayers,
                                                   fed_loss_class_weights)

from .recipe import coco_iterations, step_schedule

LVIS_NUM_CLASSES = 1203
#: ViTDet counts an LVIS v1 epoch as 100k images ("100 ep = 156250 iters * 64 images/iter /
#: 100000 images/ep").
LVIS_TRAIN_IMAGES = 100_000
LVIS_MAX_ITER = coco_iterations(100, num_images=LVIS_TRAIN_IMAGES)  # 156250
LVIS_LR = 2e-4  # B and L; H keeps 1e-4
LVIS_EVAL_PERIOD = 30000
#: The federated loss samples classes with probability ~ image_count ** this.
FREQ_WEIGHT_POWER = 0.5


def lvis_roi_heads(model, num_classes: int = LVIS_NUM_CLASSES):
    """Turn ``model.roi_heads.box_predictor`` into ViTDet's LVIS predictor, in place.

    The class weights are read, when the model is built, from the metadata of the datasets
    ``dataloader.train.dataset.names`` names at that time (an override of the training set
    carries over)."""
    heads = model.roi_heads
    heads.num_classes = num_classes
    predictor = heads.box_predictor
    predictor._target_ = FederatedFastRCNNOutputLayers
    predictor.update(
        test_score_thresh=0.02,
        test_topk_per_image=300,
        use_sigmoid_ce=True,
        use_fed_loss=True,
        fed_loss_num_classes=FED_LOSS_NUM_CLASSES,
        get_fed_loss_cls_weights=L(fed_loss_class_weights)(
            dataset_names="${dataloader.train.dataset.names}",
            freq_weight_power=FREQ_WEIGHT_POWER),
    )
    return model


def lvis_schedule(max_iter: int = LVIS_MAX_ITER):
    """ViTDet's LVIS lr multiplier: 250 warm-up iterations, x0.1 at 8/9 and 26/27."""
    return step_schedule(max_iter)
