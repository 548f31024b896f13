"""ViTDet's Cascade Mask R-CNN heads, as an edit of a ``mask_rcnn_vitdet`` model config.

ViTDet's ``cascade_mask_rcnn_vitdet_{b,l,h}`` configs keep the Mask R-CNN model (backbone, RPN,
poolers, mask head) and replace the box branch with ``CascadeROIHeads``: three stages, each with
its own 4conv1fc box head (LayerNorm) and a class-agnostic box predictor, trained on proposals
matched at IoU 0.5, 0.6 and 0.7 with box2box weights (10, 10, 5, 5), (20, 20, 10, 10) and
(30, 30, 15, 15). ``cascade_roi_heads`` makes that edit on any model config built from
``mask_rcnn_vitdet`` (so a size change made before it, e.g. the tiny CPU heads, carries over).
"""
import copy

from detectron2.config import LazyCall as L
from detectron2.modeling.box_regression import Box2BoxTransform
from detectron2.modeling.matcher import Matcher
from detectron2.modeling.roi_heads import CascadeROIHeads

#: (IoU threshold of the stage's proposal matcher, its Box2BoxTransform weights), ViTDet's.
CASCADE_STAGES = ((0.5, (10, 10, 5, 5)), (0.6, (20, 20, 10, 10)), (0.7, (30, 30, 15, 15)))


def cascade_roi_heads(model, stages=CASCADE_STAGES):
    """Turn ``model.roi_heads`` (a ``StandardROIHeads`` config) into ViTDet's cascade, in place.

    Each stage's box head is a copy of the Mask R-CNN box head; each predictor a copy of its
    predictor, made class-agnostic with the stage's box2box weights. Channel counts and the class
    count stay interpolations of ``model.backbone.out_channels`` / ``roi_heads.num_classes``.
    """
    heads = model.roi_heads
    box_head = heads.pop("box_head")
    predictor = heads.pop("box_predictor")
    heads.pop("proposal_matcher")
    heads._target_ = CascadeROIHeads
    heads.box_heads, heads.box_predictors = [], []
    for i, (_, weights) in enumerate(stages):
        stage_head = copy.deepcopy(box_head)
        # One level deeper than in StandardROIHeads (inside the list): one dot more.
        stage_head.input_shape.channels = "${.....backbone.out_channels}"
        stage_predictor = copy.deepcopy(predictor)
        stage_predictor.input_shape.channels = f"${{....box_heads[{i}].fc_dims[0]}}"
        stage_predictor.num_classes = "${...num_classes}"
        stage_predictor.cls_agnostic_bbox_reg = True
        stage_predictor.box2box_transform = L(Box2BoxTransform)(weights=weights)
        heads.box_heads.append(stage_head)
        heads.box_predictors.append(stage_predictor)
    heads.proposal_matchers = [
        L(Matcher)(thresholds=[iou], labels=[0, 1], allow_low_quality_matches=False)
        for iou, _ in stages]
    return model
