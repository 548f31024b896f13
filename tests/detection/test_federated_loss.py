"""Sigmoid cross-entropy + federated loss box predictor (``detection/federated_loss.py``), against
hand-written computations of Detectron2's (post-v0.6) ``FastRCNNOutputLayers`` semantics."""
import math
import uuid
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from detectron2.config import LazyCall as L
from detectron2.config import LazyConfig, instantiate
from detectron2.data import MetadataCatalog
from detectron2.layers import ShapeSpec
from detectron2.modeling.box_regression import Box2BoxTransform
from detectron2.modeling.roi_heads import FastRCNNOutputLayers
from detectron2.structures import Boxes, Instances, PolygonMasks
from detectron2.utils.events import EventStorage

from mae_transfer.detection.datasets import DatasetError
from mae_transfer.detection.federated_loss import (FederatedFastRCNNOutputLayers,
                                                   fed_loss_class_weights, fed_loss_classes,
                                                   get_fed_loss_cls_weights)

CONFIGS = Path(__file__).resolve().parents[2] / "detection" / "configs"
K = 6  # foreground classes; index 6 is the background
IN = 8  # feature size


def predictor(weights=None, **kwargs):
    torch.manual_seed(0)
    args = dict(box2box_transform=Box2BoxTransform(weights=(10, 10, 5, 5)), num_classes=K)
    args.update(kwargs)
    if weights is not None:
        args.update(use_sigmoid_ce=True, use_fed_loss=True,
                    get_fed_loss_cls_weights=lambda: torch.tensor(weights, dtype=torch.float))
    return FederatedFastRCNNOutputLayers(ShapeSpec(channels=IN), **args)


def proposals(gt_classes, size=(100, 120)):
    """One image with one proposal per class label (boxes that do not overlap)."""
    n = len(gt_classes)
    boxes = torch.tensor([[10.0 * i, 5.0, 10.0 * i + 8, 15.0] for i in range(n)])
    return [Instances(size, proposal_boxes=Boxes(boxes), gt_boxes=Boxes(boxes + 1.0),
                      gt_classes=torch.tensor(gt_classes))]


def bce_by_hand(logits, gt_classes, kept):
    """sum over proposals i and kept foreground classes c of -[t log s + (1-t) log(1-s)], / N."""
    total = 0.0
    for i, gt in enumerate(gt_classes):
        for c in kept:
            s = 1.0 / (1.0 + math.exp(-float(logits[i, c])))
            t = 1.0 if c == gt else 0.0
            total -= t * math.log(s) + (1.0 - t) * math.log(1.0 - s)
    return total / len(gt_classes)


def losses_of(pred, feats, props):
    with EventStorage(0):
        return pred.losses(pred(feats), props)


GT = [0, 2, 2, K, K, 4]  # unique: {0, 2, 4, background} -> 4 of the 6 classes kept


def test_federated_loss_equals_the_hand_written_sigmoid_bce_over_the_sampled_classes():
    # Only classes 1 and 5 (and the ground truth, never drawn) have weight: with 6 classes kept
    # and 4 unique labels (the background counts, as in Detectron2), exactly 1 and 5 are drawn.
    pred = predictor(weights=[2.0, 1.0, 3.0, 0.0, 7.0, 0.5], fed_loss_num_classes=6)
    feats = torch.randn(len(GT), IN, generator=torch.Generator().manual_seed(1)) * 20
    logits = pred(feats)[0].detach()
    assert logits.abs().max() > 0.5  # the test sees real logits, not ~0
    loss = losses_of(pred, feats, proposals(GT))["loss_cls"]
    assert loss.item() == pytest.approx(bce_by_hand(logits, GT, kept=[0, 1, 2, 4, 5]), rel=1e-5)
    assert loss.item() != pytest.approx(bce_by_hand(logits, GT, kept=range(K)), rel=1e-3)


def test_no_class_is_drawn_when_the_ground_truth_already_fills_the_quota():
    pred = predictor(weights=[1.0] * K, fed_loss_num_classes=3)
    feats = torch.randn(len(GT), IN, generator=torch.Generator().manual_seed(2)) * 20
    logits = pred(feats)[0].detach()
    loss = losses_of(pred, feats, proposals(GT))["loss_cls"]
    assert loss.item() == pytest.approx(bce_by_hand(logits, GT, kept=[0, 2, 4]), rel=1e-5)


def test_fewer_classes_than_the_quota_keep_every_drawable_class():
    # 3 classes, quota 50 (ViTDet's): Detectron2's draw would raise; every class with a weight
    # takes part, ground truth (background 3 included) first, and a zero-weight class never.
    gt = torch.tensor([1, 3, 3, 3])
    kept = fed_loss_classes(gt, 50, 3, torch.tensor([2.0, 1.0, 0.5]))
    assert kept.tolist() == [1, 3, 0, 2]
    kept = fed_loss_classes(gt, 50, 3, torch.tensor([0.0, 1.0, 0.5]))
    assert kept.tolist() == [1, 3, 2]
    # a quota the classes just fill is still a weighted draw without replacement
    torch.manual_seed(0)
    kept = fed_loss_classes(torch.tensor([1]), 3, 4, torch.tensor([1.0, 1.0, 1.0, 1.0]))
    assert len(kept) == 3 and len(set(kept.tolist())) == 3 and 1 in kept.tolist()


def test_sigmoid_ce_without_federation_covers_every_class_and_box_loss_is_detectron2s():
    plain = FastRCNNOutputLayers(ShapeSpec(channels=IN), num_classes=K,
                                 box2box_transform=Box2BoxTransform(weights=(10, 10, 5, 5)))
    pred = predictor(use_sigmoid_ce=True)
    plain.load_state_dict(pred.state_dict())
    feats = torch.randn(len(GT), IN, generator=torch.Generator().manual_seed(3)) * 20
    logits = pred(feats)[0].detach()
    ours, ref = losses_of(pred, feats, proposals(GT)), losses_of(plain, feats, proposals(GT))
    assert ours["loss_cls"].item() == pytest.approx(bce_by_hand(logits, GT, range(K)), rel=1e-5)
    assert ours["loss_box_reg"].item() == pytest.approx(ref["loss_box_reg"].item(), rel=1e-6)
    assert ref["loss_box_reg"].item() > 0


def test_both_off_is_the_plain_softmax_predictor():
    plain = FastRCNNOutputLayers(ShapeSpec(channels=IN), num_classes=K,
                                 box2box_transform=Box2BoxTransform(weights=(10, 10, 5, 5)))
    pred = predictor()
    plain.load_state_dict(pred.state_dict())
    feats = torch.randn(len(GT), IN, generator=torch.Generator().manual_seed(4)) * 20
    props = proposals(GT)
    ours, ref = losses_of(pred, feats, props), losses_of(plain, feats, props)
    assert ours["loss_cls"].item() == pytest.approx(ref["loss_cls"].item(), rel=1e-6)
    assert torch.allclose(pred.predict_probs(pred(feats), props)[0],
                          F.softmax(pred(feats)[0], dim=-1))


def test_drawn_classes_follow_the_weights_and_never_repeat_a_ground_truth_class():
    torch.manual_seed(0)
    weight = torch.tensor([5.0, 1.0, 4.0, 9.0]) ** 0.5  # class 0 is ground truth
    counts = torch.zeros(4)
    for _ in range(3000):
        kept = fed_loss_classes(torch.tensor([0, 0, 4]), 3, 4, weight)
        assert kept[:2].tolist() == [0, 4] and len(set(kept.tolist())) == 3
        counts[kept[2]] += 1
    assert counts[0] == 0  # never the ground truth
    freq = counts[1:] / counts.sum()
    assert torch.allclose(freq, torch.tensor([1.0, 2.0, 3.0]) / 6, atol=0.03), freq
    torch.manual_seed(7)
    first = fed_loss_classes(torch.tensor([1]), 3, 4, weight)
    torch.manual_seed(7)
    assert torch.equal(first, fed_loss_classes(torch.tensor([1]), 3, 4, weight))


def test_the_background_label_counts_towards_the_quota_as_in_detectron2():
    weight = torch.tensor([1.0, 1.0, 1.0, 1.0, 0.0, 1.0])  # candidates: 1, 3, 5
    for seed in range(20):
        torch.manual_seed(seed)
        kept = fed_loss_classes(torch.tensor([0, 2, K, K]), 5, K, weight).tolist()
        assert kept[:3] == [0, 2, K] and len(kept) == 5
        assert len(set(kept[3:]) & {1, 3, 5}) == 2  # 5 - 3 unique labels, background included


def test_inference_scores_are_sigmoids_of_the_class_logits():
    pred = predictor(weights=[1.0] * K, test_score_thresh=0.3, test_topk_per_image=100)
    with torch.no_grad():
        pred.bbox_pred.weight.zero_()  # boxes stay the (disjoint) proposals: NMS keeps all
        feats = torch.randn(5, IN, generator=torch.Generator().manual_seed(5)) * 20
        outputs = pred(feats)
        props = [Instances((100, 120), proposal_boxes=proposals([0] * 5)[0].proposal_boxes)]
        probs = pred.predict_probs(outputs, props)[0]
        result, kept = pred.inference(outputs, props)
    assert torch.allclose(probs, torch.sigmoid(outputs[0]))
    assert not torch.allclose(probs.sum(1), torch.ones(5))  # not a softmax
    expected = sorted((i, c, torch.sigmoid(outputs[0][i, c]).item()) for i in range(5)
                      for c in range(K) if torch.sigmoid(outputs[0][i, c]) > 0.3)
    got = sorted(zip(kept[0].tolist(), result[0].pred_classes.tolist(),
                     result[0].scores.tolist()))
    assert len(got) == len(expected) > 0
    for (i, c, s), (gi, gc, gs) in zip(expected, got):
        assert (i, c) == (gi, gc) and s == pytest.approx(gs, rel=1e-6)


def test_a_batch_without_proposals_gives_a_zero_loss_with_a_graph():
    pred = predictor(weights=[1.0] * K)
    feats = torch.zeros(0, IN)
    loss = losses_of(pred, feats, [Instances((10, 10), proposal_boxes=Boxes(torch.zeros(0, 4)),
                                             gt_boxes=Boxes(torch.zeros(0, 4)),
                                             gt_classes=torch.zeros(0, dtype=torch.long))])
    assert loss["loss_cls"].item() == 0.0 and loss["loss_cls"].requires_grad


def _register_counts(counts):
    name = f"fedloss_test_{uuid.uuid4().hex[:8]}"
    MetadataCatalog.get(name).set(class_image_count=counts)
    return name


def test_class_weights_read_the_metadata_image_counts_in_id_order():
    name = _register_counts([{"id": 3, "image_count": 16}, {"id": 1, "image_count": 4},
                             {"id": 2, "image_count": 1}])
    assert get_fed_loss_cls_weights(name, 0.5).tolist() == [2.0, 1.0, 4.0]
    assert get_fed_loss_cls_weights([name, name], 1.0).tolist() == [4.0, 1.0, 16.0]
    assert fed_loss_class_weights(name, 0.5)().tolist() == [2.0, 1.0, 4.0]
    other = _register_counts([{"id": 1, "image_count": 5}])
    with pytest.raises(DatasetError, match="different class_image_count"):
        get_fed_loss_cls_weights([name, other])


def test_bad_weights_stop_in_one_line_naming_the_dataset():
    missing = f"fedloss_none_{uuid.uuid4().hex[:8]}"
    with pytest.raises(DatasetError, match=f"dataset {missing}: no class_image_count") as err:
        get_fed_loss_cls_weights(missing, 0.5)
    assert "\n" not in str(err.value)
    with pytest.raises(DatasetError, match=r"\(3,\) class weights for 6 classes"):
        predictor(weights=[1.0, 2.0, 3.0])
    with pytest.raises(ValueError, match="needs use_sigmoid_ce"):
        predictor(use_fed_loss=True, get_fed_loss_cls_weights=lambda: torch.ones(K))


def test_cascade_stages_train_with_the_federated_loss_and_average_sigmoid_scores():
    """The tiny cascade with ViTDet's LVIS predictors in each stage: three losses, gradients,
    and every detection's score is the mean over the stages of that proposal's sigmoid."""
    cfg = LazyConfig.load(str(CONFIGS / "cascade_mask_rcnn_vit_mini_cpu.py"))
    name = _register_counts([{"id": i + 1, "image_count": 10 * (i + 1)} for i in range(3)])
    for stage in cfg.model.roi_heads.box_predictors:
        stage._target_ = FederatedFastRCNNOutputLayers
        stage.update(use_sigmoid_ce=True, use_fed_loss=True, fed_loss_num_classes=2,
                     get_fed_loss_cls_weights=L(fed_loss_class_weights)(
                         dataset_names=name, freq_weight_power=0.5))
    torch.manual_seed(0)
    model = instantiate(cfg.model)
    heads = model.roi_heads
    for p in heads.box_predictor:
        assert torch.allclose(p.fed_loss_cls_weights, torch.tensor([10.0, 20.0, 30.0]) ** 0.5)
    g = torch.Generator().manual_seed(0)
    boxes = torch.tensor([[10.0, 12.0, 60.0, 70.0], [70.0, 20.0, 120.0, 90.0]])
    polys = [[[x0, y0, x1, y0, x1, y1, x0, y1]] for x0, y0, x1, y1 in boxes.tolist()]
    batch = [{"image": torch.randint(0, 256, (3, 128, 128), dtype=torch.uint8, generator=g),
              "instances": Instances((128, 128), gt_boxes=Boxes(boxes),
                                     gt_masks=PolygonMasks(polys),
                                     gt_classes=torch.tensor([0, 2]))}]
    model.train()
    with EventStorage(0):
        losses = model(batch)
    assert all(torch.isfinite(losses[f"loss_cls_stage{s}"]) for s in range(3))
    sum(losses.values()).backward()
    assert all(p.cls_score.weight.grad.abs().sum() > 0 for p in heads.box_predictor)

    logits = []
    hooks = [p.register_forward_hook(lambda m, i, o: logits.append(o[0].detach()))
             for p in heads.box_predictor]
    model.eval()
    for p in heads.box_predictor:
        p.test_score_thresh = 0.0
    with torch.no_grad():
        out = model([{"image": batch[0]["image"]}])[0]["instances"]
    for h in hooks:
        h.remove()
    assert len(logits) == 3 and len(out) > 0
    mean = sum(torch.sigmoid(x) for x in logits) / 3
    for score, cls in zip(out.scores.tolist(), out.pred_classes.tolist()):
        assert torch.isclose(mean[:, cls], torch.tensor(score), rtol=1e-5).any(), (score, cls)
    softmax_mean = sum(F.softmax(x, dim=-1) for x in logits) / 3
    assert not all(torch.isclose(softmax_mean[:, c], torch.tensor(s), rtol=1e-5).any()
                   for s, c in zip(out.scores.tolist(), out.pred_classes.tolist()))


def test_class_weights_of_a_registered_lvis_json_come_from_its_categories(tmp_path):
    """An LVIS registration (``detection/lvis_datasets.py``) gives the counts from its json's
    categories without loading the set (the images do not even exist here)."""
    import json

    from mae_transfer.detection.lvis_datasets import register_lvis_instances

    cats = [{"id": 2, "name": "b", "frequency": "c", "image_count": 9},
            {"id": 1, "name": "a", "frequency": "r", "image_count": 4}]
    images = [{"id": 1, "coco_url": "http://images.cocodataset.org/train2017/x.jpg",
               "height": 10, "width": 10, "neg_category_ids": [],
               "not_exhaustive_category_ids": []}]
    (tmp_path / "lvis.json").write_text(json.dumps(
        {"images": images, "categories": cats, "annotations": []}))
    name = register_lvis_instances(f"fedloss_lvis_{uuid.uuid4().hex[:8]}",
                                   tmp_path / "lvis.json", tmp_path)
    assert get_fed_loss_cls_weights(name, 0.5).tolist() == [2.0, 3.0]
    gone = register_lvis_instances(f"fedloss_gone_{uuid.uuid4().hex[:8]}",
                                   tmp_path / "missing.json", tmp_path)
    with pytest.raises(DatasetError, match="missing.json") as err:
        get_fed_loss_cls_weights(gone, 0.5)
    assert "\n" not in str(err.value)
