"""bench/seg_step.py compares like with like: same heads, same pyramid shapes, same widths."""
from __future__ import annotations

import importlib.util

import torch

import mae_transfer.segmentation.registration  # noqa: F401  (registers MAEViT, ...)


def load_bench(repo_root):
    spec = importlib.util.spec_from_file_location("seg_step", repo_root / "bench" / "seg_step.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_both_segmentors_share_heads_and_pyramid(repo_root):
    from mmengine.registry import init_default_scope
    from mmseg.registry import MODELS

    bench = load_bench(repo_root)
    init_default_scope("mmseg")
    ours = MODELS.build(bench.segmentor_cfg("ours", "vit_mini_patch16", 64)).eval()
    theirs = MODELS.build(bench.segmentor_cfg("mmseg", "vit_mini_patch16", 64)).eval()
    assert type(ours.backbone).__name__ == "MAEViT" and type(theirs.backbone).__name__ == "MAE"

    def shapes(module):
        return {k: tuple(v.shape) for k, v in module.state_dict().items()}

    # The same attention (BEiT tables, layer scale) on both sides: same backbone tensor count.
    vit = {k: v for k, v in ours.backbone.named_parameters() if not k.startswith("adapter.")}
    assert sum(v.numel() for v in vit.values()) == sum(
        v.numel() for v in theirs.backbone.parameters())
    assert "blocks.0.attn.relative_position_bias_table" in vit and "blocks.0.gamma_1" in vit
    for head in ("decode_head", "auxiliary_head"):
        assert shapes(getattr(ours, head)) == shapes(getattr(theirs, head))
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        ours_maps = ours.extract_feat(x)
        their_maps = theirs.extract_feat(x)
    assert [m.shape for m in ours_maps] == [m.shape for m in their_maps]
    data = bench.fake_batch(2, 64)
    assert len(data["inputs"]) == 2 and data["data_samples"][0].gt_sem_seg.data.shape == (1, 64, 64)
