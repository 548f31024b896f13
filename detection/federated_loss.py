"""Sigmoid cross-entropy and the federated loss for the Fast R-CNN box predictor (LVIS).

ViTDet's LVIS configs train the box classifier with a per-class sigmoid (binary cross-entropy)
instead of a softmax, restricted by the *federated loss* (Zhou et al., CenterNet2): each
iteration, only the classes present in the batch's ground truth plus classes sampled at random,
with probability proportional to ``image_count ** 0.5`` of the training set, up to 50 in all,
get a loss. LVIS is federated (an image is only annotated for some classes), so penalising
every absent class as a negative would teach the model that unannotated objects are background.

Detectron2 added this after v0.6 (the release the registry installs here) as keyword arguments of
``FastRCNNOutputLayers``; ``FederatedFastRCNNOutputLayers`` is that predictor on any Detectron2
release, with the newer release's names and semantics:

- ``use_sigmoid_ce``: the classification loss is the sum over the kept classes of the binary
  cross-entropy of each foreground logit (the background column is ignored; a background proposal
  has all-zero targets), divided by the number of proposals; at inference the class scores are
  ``sigmoid(logits)`` instead of ``softmax``, so the Cascade heads (which average
  ``predict_probs`` over the stages) average sigmoids too;
- ``use_fed_loss`` (needs ``use_sigmoid_ce``): the kept classes are the batch's unique
  ``gt_classes`` (the background index counts towards the total, as in Detectron2) and, when
  fewer than ``fed_loss_num_classes``, that many minus them, drawn without replacement by
  ``torch.multinomial`` (the global RNG) with the weights ``get_fed_loss_cls_weights()``
  returned when the predictor was built (a buffer, ``fed_loss_cls_weights``, saved with the
  model as in Detectron2);
- box regression is unchanged (only foreground proposals, normalised by all proposals).

``get_fed_loss_cls_weights(dataset_names, freq_weight_power)`` reads the training set's
``MetadataCatalog.get(name).class_image_count`` (a list of ``{"id", "image_count"}``), sorted by
id, to the power ``freq_weight_power``. A config names it through ``fed_loss_class_weights``
(a ``LazyCall`` that makes the callable), which keeps the config serialisable where ViTDet's
configs use a ``lambda``.
"""
from __future__ import annotations

import functools
import logging
from typing import Callable, List, Optional, Sequence, Union

import torch
import torch.nn.functional as F

from mae_transfer.detection import compat

compat.setup()  # Detectron2 v0.6 cannot be imported without it (no compiled _C, Image.LINEAR)
from detectron2.data import DatasetCatalog, MetadataCatalog  # noqa: E402
from detectron2.modeling.roi_heads import FastRCNNOutputLayers  # noqa: E402

from mae_transfer.detection.datasets import DatasetError  # noqa: E402

logger = logging.getLogger("mae_transfer.detection")

#: Classes per iteration that get a loss, ground truth included (Detectron2's default, ViTDet's).
FED_LOSS_NUM_CLASSES = 50


def _class_image_count(name: str):
    """``class_image_count`` of dataset ``name``; a lazily registered dataset is loaded once
    first (its loader sets the metadata); missing: one line naming the dataset."""
    meta = MetadataCatalog.get(name)
    if not hasattr(meta, "class_image_count") and name in DatasetCatalog.list():
        logger.info("Loading dataset %s for its class_image_count (federated loss weights)", name)
        DatasetCatalog.get(name)
    counts = getattr(MetadataCatalog.get(name), "class_image_count", None)
    if not counts:
        raise DatasetError(
            f"dataset {name}: no class_image_count in its metadata (the federated loss weighs "
            "classes by their image counts: register an LVIS-style dataset, whose categories "
            "have 'image_count')")
    return counts


def get_fed_loss_cls_weights(dataset_names: Union[str, Sequence[str]],
                             freq_weight_power: float = 1.0) -> torch.Tensor:
    """Per-class sampling weights of the federated loss: ``image_count ** freq_weight_power``,
    in category-id order, from the first dataset's ``class_image_count`` (several datasets must
    agree, as Detectron2 checks)."""
    names = [dataset_names] if isinstance(dataset_names, str) else list(dataset_names)
    if not names:
        raise DatasetError("federated loss: no training dataset named")
    counts = _class_image_count(names[0])
    for other in names[1:]:
        if _class_image_count(other) != counts:
            raise DatasetError(f"datasets {names[0]} and {other} have different "
                               "class_image_count: the federated loss needs one set of weights")
    try:
        ordered = [int(c["image_count"]) for c in sorted(counts, key=lambda c: c["id"])]
    except (KeyError, TypeError, ValueError) as exc:
        raise DatasetError(f"dataset {names[0]}: class_image_count must be a list of "
                           f"{{'id', 'image_count'}} ({exc!r})") from None
    return torch.tensor(ordered).float() ** freq_weight_power


def fed_loss_class_weights(dataset_names: Union[str, Sequence[str]],
                           freq_weight_power: float = 1.0) -> Callable[[], torch.Tensor]:
    """The callable a config passes as ``get_fed_loss_cls_weights`` (ViTDet writes a lambda):
    ``LazyCall(fed_loss_class_weights)(dataset_names=..., freq_weight_power=0.5)``."""
    names = dataset_names if isinstance(dataset_names, str) else list(dataset_names)
    return functools.partial(get_fed_loss_cls_weights, names, freq_weight_power)


def fed_loss_classes(gt_classes: torch.Tensor, num_fed_loss_classes: int, num_classes: int,
                     weight: torch.Tensor) -> torch.Tensor:
    """The classes that get a loss: the unique ``gt_classes`` (background ``num_classes``
    included, if present) then, up to ``num_fed_loss_classes`` in all, foreground classes drawn
    without replacement with probability proportional to ``weight`` (never a ground-truth one).

    A data set with fewer classes than the quota (a custom or tiny LVIS-format set; LVIS has 1203)
    keeps every class that can be drawn: Detectron2's ``torch.multinomial`` call would fail there
    ("cannot sample n_sample > prob_dist.size(-1)"); with enough classes the draw is its draw."""
    unique = torch.unique(gt_classes)
    if len(unique) >= num_fed_loss_classes:
        return unique
    prob = weight.new_zeros(num_classes + 1, dtype=torch.float32)
    prob[:num_classes] = weight.float()
    prob[unique] = 0
    drawable = int((prob > 0).sum())
    wanted = num_fed_loss_classes - len(unique)
    if wanted >= drawable:  # every class takes part: no draw
        return torch.cat([unique, torch.nonzero(prob > 0).flatten()])
    sampled = torch.multinomial(prob, wanted, replacement=False)
    return torch.cat([unique, sampled])


class FederatedFastRCNNOutputLayers(FastRCNNOutputLayers):
    """``FastRCNNOutputLayers`` with the newer Detectron2's ``use_sigmoid_ce``, ``use_fed_loss``,
    ``get_fed_loss_cls_weights`` and ``fed_loss_num_classes`` (module docstring). With both off
    it is the plain predictor (softmax cross-entropy and softmax scores)."""

    def __init__(self, input_shape, *, use_sigmoid_ce: bool = False, use_fed_loss: bool = False,
                 get_fed_loss_cls_weights: Optional[Callable[[], torch.Tensor]] = None,
                 fed_loss_num_classes: int = FED_LOSS_NUM_CLASSES, **kwargs):
        super().__init__(input_shape, **kwargs)
        self.use_sigmoid_ce = bool(use_sigmoid_ce)
        self.use_fed_loss = bool(use_fed_loss)
        self.fed_loss_num_classes = int(fed_loss_num_classes)
        if not self.use_fed_loss:
            return
        if not self.use_sigmoid_ce:
            raise ValueError("use_fed_loss=True needs use_sigmoid_ce=True (the federated loss "
                             "is a per-class sigmoid loss)")
        if get_fed_loss_cls_weights is None:
            raise ValueError("use_fed_loss=True needs get_fed_loss_cls_weights (a callable "
                             "returning one weight per class)")
        weights = torch.as_tensor(get_fed_loss_cls_weights()).float()
        if weights.shape != (self.num_classes,):
            raise DatasetError(f"federated loss: {tuple(weights.shape)} class weights for "
                               f"{self.num_classes} classes (num_classes must match the "
                               "training dataset's categories)")
        self.register_buffer("fed_loss_cls_weights", weights)

    def losses(self, predictions, proposals):
        """Detectron2's losses, with the sigmoid (federated) classification loss when asked."""
        losses = super().losses(predictions, proposals)
        if self.use_sigmoid_ce:
            scores = predictions[0]
            gt_classes = (torch.cat([p.gt_classes for p in proposals], dim=0) if len(proposals)
                          else torch.empty(0, dtype=torch.long, device=scores.device))
            losses["loss_cls"] = (self.sigmoid_cross_entropy_loss(scores, gt_classes)
                                  * self.loss_weight.get("loss_cls", 1.0))
        return losses

    def get_fed_loss_classes(self, gt_classes, num_fed_loss_classes, num_classes, weight):
        """Detectron2's method name for ``fed_loss_classes``."""
        return fed_loss_classes(gt_classes, num_fed_loss_classes, num_classes, weight)

    def sigmoid_cross_entropy_loss(self, pred_class_logits: torch.Tensor,
                                   gt_classes: torch.Tensor) -> torch.Tensor:
        """Sum of the kept classes' binary cross-entropies over all proposals, / proposals."""
        if pred_class_logits.numel() == 0:
            return pred_class_logits.sum() * 0.0  # keeps the graph (Detectron2 returns a 0)
        n, k = pred_class_logits.shape[0], pred_class_logits.shape[1] - 1
        target = F.one_hot(gt_classes, k + 1)[:, :k].to(pred_class_logits.dtype)
        loss = F.binary_cross_entropy_with_logits(pred_class_logits[:, :k], target,
                                                  reduction="none")
        if self.use_fed_loss:
            kept = self.get_fed_loss_classes(gt_classes, self.fed_loss_num_classes, k,
                                              self.fed_loss_cls_weights)
            mask = torch.zeros(k + 1, dtype=loss.dtype, device=loss.device)
            mask[kept] = 1
            loss = loss * mask[:k]
        return loss.sum() / n

    def predict_probs(self, predictions, proposals) -> List[torch.Tensor]:
        """Per-image class scores: sigmoids with ``use_sigmoid_ce`` (as Detectron2), else the
        softmax. The background column stays (inference drops it)."""
        if not self.use_sigmoid_ce:
            return super().predict_probs(predictions, proposals)
        scores = predictions[0]
        return scores.sigmoid().split([len(p) for p in proposals], dim=0)
