"""The six LVIS v1 configs against ViTDet's ``projects/ViTDet/configs/LVIS/*_100ep.py`` values
(issue #22): each builds (structure on the meta device, predictors for real) and carries ViTDet's
settings, table below."""
import math
import uuid
from pathlib import Path

import pytest
import torch

from detectron2.config import LazyConfig, instantiate
from detectron2.data import MetadataCatalog
from detectron2.data.samplers import RepeatFactorTrainingSampler
from detectron2.evaluation import LVISEvaluator
from detectron2.modeling.roi_heads import CascadeROIHeads, StandardROIHeads

from mae_transfer.detection.federated_loss import FederatedFastRCNNOutputLayers
from mae_transfer.detection.training import build_optimizer

CONFIGS = Path(__file__).resolve().parents[2] / "detection" / "configs"

#: ViTDet's LVIS values per size: (dim, depth), global blocks, drop path, layer decay, lr,
#: weight-decay policy (H: overrides={}, weight_decay_norm=None).
VITDET_LVIS = {
    "b": ((768, 12), [2, 5, 8, 11], 0.1, 0.7, 2e-4, "vitdet"),
    "l": ((1024, 24), [5, 11, 17, 23], 0.4, 0.8, 2e-4, "vitdet"),
    "h": ((1280, 32), [7, 15, 23, 31], 0.4, 0.9, 1e-4, "vitdet_h"),
}
#: Shared by all six: 100 ep = 156250 iterations, ViTDet's milestones, 250 warm-up iterations.
MAX_ITER, MILESTONES, WARMUP, EVAL_PERIOD = 156250, [138889, 150463], 250, 30000
#: ViTDet's cascade stages: (IoU, box2box weights).
STAGES = [(0.5, [10, 10, 5, 5]), (0.6, [20, 20, 10, 10]), (0.7, [30, 30, 15, 15])]
COUNTS = [{"id": i + 1, "image_count": (i % 7) + 1} for i in range(1203)]
CONFIG_NAMES = [f"{kind}_vitdet_{size}_lvis.py" for kind in ("mask_rcnn", "cascade_mask_rcnn")
                for size in "blh"]


@pytest.fixture(scope="module")
def counts_dataset():
    """A dataset name whose metadata has 1203 class image counts (no LVIS files needed)."""
    name = f"lvis_counts_test_{uuid.uuid4().hex[:8]}"
    MetadataCatalog.get(name).set(class_image_count=COUNTS)
    return name


def _load(name, train_set):
    cfg = LazyConfig.load(str(CONFIGS / name))
    assert cfg.dataloader.train.dataset.names == "lvis_v1_train"
    cfg.dataloader.train.dataset.names = train_set  # the class weights follow this name
    return cfg


def _check_predictor(cfg_node, expected_weights, agnostic):
    assert cfg_node.test_score_thresh == 0.02 and cfg_node.test_topk_per_image == 300
    assert cfg_node.use_sigmoid_ce and cfg_node.use_fed_loss
    assert cfg_node.fed_loss_num_classes == 50
    assert cfg_node.get_fed_loss_cls_weights.freq_weight_power == 0.5
    predictor = instantiate(cfg_node)
    assert isinstance(predictor, FederatedFastRCNNOutputLayers)
    assert predictor.cls_score.out_features == 1204
    assert predictor.bbox_pred.out_features == (4 if agnostic else 4 * 1203)
    assert torch.equal(predictor.fed_loss_cls_weights, expected_weights)
    return predictor


@pytest.mark.parametrize("config", CONFIG_NAMES)
def test_lvis_config_builds_with_vitdets_settings(config, counts_dataset):
    size = config.split("_lvis")[0][-1]
    arch, global_blocks, drop_path, decay, lr, policy = VITDET_LVIS[size]
    cfg = _load(config, counts_dataset)
    weights = torch.tensor([float(c["image_count"]) for c in COUNTS]) ** 0.5

    # data: ViTDet's LVIS loader
    data = cfg.dataloader
    sampler = data.train.sampler
    assert sampler._target_ is RepeatFactorTrainingSampler
    assert sampler.repeat_factors.repeat_thresh == 0.001
    assert data.test.dataset.names == "lvis_v1_val"
    assert issubclass(data.evaluator._target_, LVISEvaluator)
    assert data.evaluator.max_dets_per_image == 300
    assert data.evaluator.dataset_name == "lvis_v1_val"
    assert data.train.total_batch_size == 64

    # schedule and optimizer
    assert cfg.train.max_iter == MAX_ITER and cfg.train.eval_period == EVAL_PERIOD
    assert cfg.lr_multiplier.scheduler.milestones == MILESTONES
    assert cfg.lr_multiplier.scheduler.num_updates == MAX_ITER
    assert cfg.lr_multiplier.warmup_length * MAX_ITER == pytest.approx(WARMUP)
    assert cfg.optimizer.lr == lr and cfg.optimizer.weight_decay == 0.1
    assert cfg.optimizer.params.layer_decay == decay and cfg.optimizer.params.wd_policy == policy

    # the model: structure on the meta device
    with torch.device("meta"):
        model = instantiate(cfg.model)
    net = model.backbone.net
    assert (net.embed_dim, net.depth, net.patch_size) == (*arch, (16, 16))
    assert [i for i, b in enumerate(net.blocks) if b.attn.window_size == 0] == global_blocks
    assert net.blocks[-1].drop_path.drop_prob == pytest.approx(drop_path)
    heads = model.roi_heads
    assert heads.mask_head.predictor.out_channels == 1203  # class-specific masks
    cascade = config.startswith("cascade")
    assert type(heads) is (CascadeROIHeads if cascade else StandardROIHeads)
    predictors = list(heads.box_predictor) if cascade else [heads.box_predictor]
    assert len(predictors) == (3 if cascade else 1)
    assert all(isinstance(p, FederatedFastRCNNOutputLayers) and p.use_fed_loss
               and p.fed_loss_cls_weights.shape == (1203,) for p in predictors)
    if cascade:
        assert [(m.thresholds[1], m.allow_low_quality_matches)
                for m in heads.proposal_matchers] == [(iou, False) for iou, _ in STAGES]
        for node, (_, box_weights) in zip(cfg.model.roi_heads.box_predictors, STAGES):
            p = _check_predictor(node, weights, agnostic=True)
            assert list(p.box2box_transform.weights) == box_weights
    else:
        p = _check_predictor(cfg.model.roi_heads.box_predictor, weights, agnostic=False)
        assert list(p.box2box_transform.weights) == [10, 10, 5, 5]

    # every parameter in a group with its layer's lr
    optimizer = build_optimizer(cfg, model)
    depth = arch[1]
    for group in optimizer.param_groups:
        assert math.isclose(group["lr"], lr * decay ** (depth + 1 - group["layer_id"]))
    assert sum(len(g["params"]) for g in optimizer.param_groups) == \
        len(list(model.parameters()))


@pytest.mark.parametrize("size", "blh")
def test_lvis_configs_change_only_what_vitdets_lvis_configs_change(size):
    """Against our COCO config of the same size (itself tested against ViTDet's COCO one)."""
    lvis = LazyConfig.load(str(CONFIGS / f"mask_rcnn_vitdet_{size}_lvis.py"))
    coco = LazyConfig.load(str(CONFIGS / f"mask_rcnn_vitdet_{size}_coco.py"))
    backbone = {k: v for k, v in lvis.model.backbone.net.items() if k != "drop_path_rate"}
    assert backbone == {k: v for k, v in coco.model.backbone.net.items()
                        if k != "drop_path_rate"}
    for key in ("proposal_generator", "pixel_mean", "pixel_std"):
        assert lvis.model[key] == coco.model[key], key
    for key in ("box_head", "mask_pooler", "box_pooler", "batch_size_per_image",
                "positive_fraction", "proposal_matcher"):
        assert lvis.model.roi_heads[key] == coco.model.roi_heads[key], key
    assert lvis.dataloader.train.mapper == coco.dataloader.train.mapper  # LSJ
    assert lvis.dataloader.test.mapper == coco.dataloader.test.mapper
    def but_lr(node):
        return {k: v for k, v in node.items() if k != "lr"}
    assert but_lr(lvis.optimizer.params) == but_lr(coco.optimizer.params)
    assert {k: v for k, v in but_lr(lvis.optimizer).items() if k != "params"} == \
        {k: v for k, v in but_lr(coco.optimizer).items() if k != "params"}
    assert lvis.optimizer.params.lr == lvis.optimizer.lr  # the groups' lr follows the LVIS one
    changed = {"max_iter", "eval_period", "output_dir"}
    assert {k: v for k, v in lvis.train.items() if k not in changed} == \
        {k: v for k, v in coco.train.items() if k not in changed}
    # the cascade config is the Mask R-CNN one but for the box branch
    cascade = LazyConfig.load(str(CONFIGS / f"cascade_mask_rcnn_vitdet_{size}_lvis.py"))
    for part in ("optimizer", "lr_multiplier", "dataloader"):
        assert cascade[part] == lvis[part], part
    assert cascade.model.backbone == lvis.model.backbone
    assert cascade.model.roi_heads.mask_head == lvis.model.roi_heads.mask_head


def test_the_class_weights_come_from_the_training_set_the_config_names():
    cfg = LazyConfig.load(str(CONFIGS / "mask_rcnn_vitdet_b_lvis.py"))
    node = cfg.model.roi_heads.box_predictor.get_fed_loss_cls_weights
    assert node.dataset_names == "lvis_v1_train"
    cfg.dataloader.train.dataset.names = "my_lvis_train"
    assert node.dataset_names == "my_lvis_train"


def test_the_config_saves_as_yaml_and_rebuilds_the_same_predictor(tmp_path, counts_dataset):
    """``default_setup`` writes ``config.yaml``: no lambda (ViTDet's) that forces a pickle."""
    cfg = _load("cascade_mask_rcnn_vitdet_b_lvis.py", counts_dataset)
    LazyConfig.save(cfg, str(tmp_path / "config.yaml"))
    assert [p.name for p in tmp_path.iterdir()] == ["config.yaml"]
    back = LazyConfig.load(str(tmp_path / "config.yaml"))
    weights = torch.tensor([float(c["image_count"]) for c in COUNTS]) ** 0.5
    _check_predictor(back.model.roi_heads.box_predictors[2], weights, agnostic=True)
