"""The shipped ADE20K configs' optimizer, next to MMSeg's own and to what docs/recipes.md states.

The models are the shipped configs with the ViT and heads made narrow (32-d, 64 px) but with the
configs' depth (12 / 24 blocks), out_indices, rel-pos and layer-scale settings: parameter names,
shapes' ranks and layer ids are those of the full models.
"""
from __future__ import annotations

from pathlib import Path

import pytest

import mae_transfer.segmentation.registration  # noqa: F401  (registers MAEViT, ...)

CONFIGS = {
    "B": "segmentation/configs/upernet_mae-vit-b_8xb2-160k_ade20k-512x512.py",
    "L": "segmentation/configs/upernet_mae-vit-l_8xb2-160k_ade20k-512x512.py",
}


def narrow_recipe(repo_root: Path, size: str):
    """The shipped config, its model narrowed for CPU; returns (config, model, depth)."""
    from mmengine.config import Config
    from mmengine.registry import init_default_scope
    from mmseg.registry import MODELS

    from mae_transfer.segmentation.entry import adapt_to_device

    cfg = Config.fromfile(str(repo_root / CONFIGS[size]))
    adapt_to_device(cfg, cuda=False)
    bn = dict(type="BN", requires_grad=True)
    cfg.model.data_preprocessor.size = (64, 64)
    cfg.model.backbone.update(embed_dim=32, num_heads=2, img_size=(64, 64), norm_cfg=bn)
    cfg.model.decode_head.update(in_channels=[32] * 4, channels=16, pool_scales=(1, 2), norm_cfg=bn)
    cfg.model.auxiliary_head.update(in_channels=32, channels=8, norm_cfg=bn)
    init_default_scope("mmseg")
    model = MODELS.build(cfg.model)
    return cfg, model, model.backbone.depth


def settings_by_param(model, optimizer):
    """``{name: (lr, weight decay)}`` of every trainable parameter in ``optimizer``."""
    by_id = {id(p): (g["lr"], g["weight_decay"]) for g in optimizer.param_groups for p in g["params"]}
    named = {n: p for n, p in model.named_parameters() if p.requires_grad}
    assert set(by_id) == {id(p) for p in named.values()}, "a parameter is missing or extra"
    return {n: by_id[id(p)] for n, p in named.items()}


@pytest.mark.parametrize("size", ["B", "L"])
def test_ade_configs_use_mmsegs_own_weight_decay_and_layer_rule(repo_root, size):
    """Every parameter's weight decay is what MMSeg's ``LayerDecayOptimizerConstructor`` (the MAE
    config's) gives the same model, and its lr is MMSeg's ``get_layer_id_for_vit`` rule read with
    ``blocks.{i}`` as MMSeg's ``layers.{i}``."""
    from mmengine.optim import build_optim_wrapper
    from mmseg.engine.optimizers import LayerDecayOptimizerConstructor
    from mmseg.engine.optimizers.layer_decay_optimizer_constructor import get_layer_id_for_vit

    cfg, model, depth = narrow_recipe(repo_root, size)
    ours = settings_by_param(model, build_optim_wrapper(model, cfg.optim_wrapper).optimizer)

    opt = cfg.optim_wrapper.optimizer
    decay = cfg.optim_wrapper.paramwise_cfg.layer_decay_rate
    reference = LayerDecayOptimizerConstructor(
        dict(type="OptimWrapper", optimizer=dict(opt)),
        dict(num_layers=depth, layer_decay_rate=decay))(model)
    theirs = settings_by_param(model, reference.optimizer)

    assert {n: wd for n, (_, wd) in ours.items()} == {n: wd for n, (_, wd) in theirs.items()}
    for name, (lr, _) in ours.items():
        layer = get_layer_id_for_vit(name.replace("backbone.blocks.", "backbone.layers."),
                                     depth + 2)
        assert lr == pytest.approx(opt.lr * decay ** (depth + 1 - layer), rel=1e-12), name
    # MMSeg's rule, spelled out: 1-D parameters and biases only; tokens, pos_embed, rel-pos decayed
    exempt = {n for n, (_, wd) in ours.items() if wd == 0}
    params = dict(model.named_parameters())
    assert exempt == {n for n, p in params.items() if p.ndim == 1 or n.endswith(".bias")}
    decayed_specials = [n for n in ours if n.endswith(("pos_embed", "cls_token", "rel_pos_h",
                                                       "relative_position_bias_table"))]
    assert "backbone.pos_embed" in decayed_specials and "backbone.cls_token" in decayed_specials
    assert all(ours[n][1] == opt.weight_decay for n in decayed_specials)


def test_vit_l_uses_beits_layer_decay_with_the_scales_the_doc_states(repo_root):
    """BEiT's ViT-L recipe: lr 2e-5, layer decay 0.95 over 24 blocks (not the B recipe's 0.65,
    which left blocks 0-11 at <= 0.37% of the head's lr); docs/recipes.md quotes these scales."""
    from mmengine.optim import build_optim_wrapper

    cfg, model, depth = narrow_recipe(repo_root, "L")
    assert depth == 24
    assert cfg.optim_wrapper.optimizer.lr == 2e-5
    assert cfg.optim_wrapper.optimizer.weight_decay == 0.05
    assert cfg.optim_wrapper.paramwise_cfg.layer_decay_rate == 0.95
    assert cfg.model.backbone.drop_path_rate == 0.2
    assert cfg.model.backbone.out_indices == (7, 11, 15, 23)
    lrs = settings_by_param(model, build_optim_wrapper(model, cfg.optim_wrapper).optimizer)
    scale = {n: lr / 2e-5 for n, (lr, _) in lrs.items()}
    for i in range(24):
        assert scale[f"backbone.blocks.{i}.attn.qkv.weight"] == pytest.approx(0.95 ** (24 - i))
    assert scale["backbone.patch_embed.proj.weight"] == pytest.approx(0.95 ** 25)
    assert scale["backbone.pos_embed"] == pytest.approx(0.95 ** 25)
    assert scale["decode_head.conv_seg.weight"] == 1.0
    assert scale["backbone.adapter.ops.0.0.weight"] == 1.0
    assert min(scale[f"backbone.blocks.{i}.mlp.fc1.weight"] for i in range(12)) > 0.29

    doc = (repo_root / "docs" / "recipes.md").read_text()
    section = doc[doc.index("## Segmentation"):doc.index("## Pretraining")]
    for quoted in (f"{0.95 ** 24:.3f}", f"{0.95 ** 25:.3f}", f"{0.95 ** 13:.3f}", "0.95^(24−i)",
                   "2e-5", "upernet_beit_large_24_512_slide_160k_ade20k.py"):
        assert quoted in section, quoted
