"""ViTLayerDecayOptimizerConstructor: exact lr scale and weight decay for every parameter."""
from __future__ import annotations

import re

import pytest
import torch

import mae_transfer.segmentation.registration  # noqa: F401  (registers MAEViT, ...)

BASE_LR, WD, DECAY, DEPTH = 1e-3, 0.05, 0.65, 4


def build_model(tiny_cfg):
    from mmengine.registry import init_default_scope
    from mmseg.registry import MODELS

    init_default_scope("mmseg")
    return MODELS.build(tiny_cfg.model)


def expected_layer(name: str) -> int:
    """The rule of docs/backbone.md ("Layer-wise lr decay"), written out independently of
    tools.lr_decay."""
    if name in ("backbone.cls_token", "backbone.pos_embed") or \
            name.startswith("backbone.patch_embed."):
        return 0
    m = re.match(r"backbone\.blocks\.(\d+)\.", name)
    return int(m.group(1)) + 1 if m else DEPTH + 1


def expected_wd(name: str, p) -> float:
    no_decay = (p.ndim == 1 or name.endswith((".bias", "pos_embed", "cls_token", "rel_pos_h",
                                             "rel_pos_w", "relative_position_bias_table")))
    return 0.0 if no_decay else WD


@pytest.fixture
def built(tiny_cfg):
    from mmengine.optim import build_optim_wrapper

    model = build_model(tiny_cfg)
    cfg = dict(type="OptimWrapper",
               optimizer=dict(type="AdamW", lr=BASE_LR, weight_decay=WD),
               constructor="ViTLayerDecayOptimizerConstructor",
               paramwise_cfg=dict(layer_decay_rate=DECAY))
    return model, build_optim_wrapper(model, cfg)


def test_every_parameter_gets_its_exact_lr_and_weight_decay(built):
    model, wrapper = built
    where = {}
    for gi, group in enumerate(wrapper.optimizer.param_groups):
        for p in group["params"]:
            assert id(p) not in where, "a parameter is in two groups"
            where[id(p)] = group
    named = dict(model.named_parameters())
    assert len(where) == len(named)
    seen_layers = set()
    for name, p in named.items():
        group = where[id(p)]
        layer = expected_layer(name)
        seen_layers.add(layer)
        assert group["lr"] == pytest.approx(BASE_LR * DECAY ** (DEPTH + 1 - layer), rel=1e-12), name
        assert group["weight_decay"] == expected_wd(name, p), name
    assert seen_layers == set(range(DEPTH + 2))  # embeddings, each block, heads


def test_spot_checks_of_the_rule(built):
    model, wrapper = built
    group_of = {id(p): g for g in wrapper.optimizer.param_groups for p in g["params"]}
    named = dict(model.named_parameters())

    def lr_wd(name):
        g = group_of[id(named[name])]
        return g["lr"] / BASE_LR, g["weight_decay"]

    assert lr_wd("backbone.pos_embed") == (pytest.approx(DECAY ** 5), 0.0)
    assert lr_wd("backbone.cls_token") == (pytest.approx(DECAY ** 5), 0.0)
    assert lr_wd("backbone.patch_embed.proj.weight") == (pytest.approx(DECAY ** 5), WD)
    assert lr_wd("backbone.blocks.0.attn.qkv.weight") == (pytest.approx(DECAY ** 4), WD)
    assert lr_wd("backbone.blocks.0.norm1.weight") == (pytest.approx(DECAY ** 4), 0.0)
    # the tiny config inherits the recipe's BEiT tables and layer scale
    assert lr_wd("backbone.blocks.2.attn.relative_position_bias_table") == (
        pytest.approx(DECAY ** 2), 0.0)
    assert lr_wd("backbone.blocks.2.gamma_1") == (pytest.approx(DECAY ** 2), 0.0)
    assert lr_wd("backbone.blocks.3.mlp.fc1.bias") == (pytest.approx(DECAY), 0.0)
    assert lr_wd("backbone.adapter.ops.0.0.weight") == (1.0, WD)
    assert lr_wd("backbone.adapter.ops.0.1.weight") == (1.0, 0.0)  # BN in the x4 branch
    assert lr_wd("decode_head.conv_seg.weight") == (1.0, WD)
    assert lr_wd("auxiliary_head.conv_seg.bias") == (1.0, 0.0)
    # head group first: MMEngine logs the first group's lr, which is then the base lr
    assert wrapper.optimizer.param_groups[0]["lr"] == BASE_LR


def _run_schedulers(wrapper, steps):
    from mmengine.optim.scheduler import LinearLR, PolyLR

    scheds = [LinearLR(wrapper, start_factor=1e-3, by_epoch=False, begin=0, end=5),
              PolyLR(wrapper, eta_min=0.0, power=1.0, by_epoch=False, begin=5, end=40)]
    for _ in range(steps):
        for s in scheds:
            s.step()
        yield [g["lr"] for g in wrapper.optimizer.param_groups]


@pytest.mark.filterwarnings("ignore:Detected call of")
def test_schedulers_scale_every_group_from_its_own_initial_lr(built):
    """Warm-up + poly (eta_min 0): every group follows the schedule a lone lr-1 group follows."""
    from mmengine.optim import OptimWrapper

    _, wrapper = built
    initial = [g["lr"] for g in wrapper.optimizer.param_groups]
    lone = OptimWrapper(torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=1.0))
    for lrs, (factor,) in zip(_run_schedulers(wrapper, 30), _run_schedulers(lone, 30)):
        assert lrs == pytest.approx([lr0 * factor for lr0 in initial], rel=1e-9)
    assert 0 < factor < 1
    assert [g["initial_lr"] for g in wrapper.optimizer.param_groups] == initial


def test_bad_paramwise_cfg_is_one_clear_error():
    from mae_transfer.segmentation.optim_constructor import ViTLayerDecayOptimizerConstructor as C

    with pytest.raises(ValueError, match="layer_decay_rate"):
        C(dict(optimizer=dict(type="AdamW", lr=1e-4)), dict())
    with pytest.raises(ValueError, match="unknown paramwise_cfg keys"):
        C(dict(optimizer=dict(type="AdamW", lr=1e-4)), dict(layer_decay_rate=0.6, decay_mult=1))


def test_optimizer_state_round_trips(built, tiny_cfg):
    """What a resumed run does: the optimizer's state loads into a freshly built one."""
    from mmengine.optim import build_optim_wrapper

    model, wrapper = built
    wrapper.update_params(sum(p.float().square().sum() for p in model.parameters()))
    fresh = build_optim_wrapper(model, dict(
        type="OptimWrapper", optimizer=dict(type="AdamW", lr=BASE_LR, weight_decay=WD),
        constructor="ViTLayerDecayOptimizerConstructor", paramwise_cfg=dict(layer_decay_rate=DECAY)))
    fresh.load_state_dict(wrapper.state_dict())
    for a, b in zip(wrapper.optimizer.param_groups, fresh.optimizer.param_groups):
        assert (a["lr"], a["weight_decay"]) == (b["lr"], b["weight_decay"])
    p = dict(model.named_parameters())["backbone.blocks.1.attn.qkv.weight"]
    assert torch.equal(wrapper.optimizer.state[p]["exp_avg"], fresh.optimizer.state[p]["exp_avg"])
