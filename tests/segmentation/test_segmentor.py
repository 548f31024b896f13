"""The tiny UperNet (MAEViT + UPerHead + FCNHead in MMSeg's EncoderDecoder): train step, slide."""
from __future__ import annotations

import torch
from mmengine.structures import PixelData

import mae_transfer.segmentation.registration  # noqa: F401  (registers MAEViT, ...)


def build(cfg):
    from mmengine.model import revert_sync_batchnorm
    from mmengine.registry import init_default_scope
    from mmseg.registry import MODELS

    init_default_scope("mmseg")
    torch.manual_seed(0)
    return revert_sync_batchnorm(MODELS.build(cfg.model))


def batch(num, h, w, num_classes=3, seed=0):
    from mmseg.structures import SegDataSample

    g = torch.Generator().manual_seed(seed)
    inputs, samples = [], []
    for _ in range(num):
        inputs.append(torch.randint(0, 256, (3, h, w), generator=g, dtype=torch.uint8))
        s = SegDataSample(gt_sem_seg=PixelData(
            data=torch.randint(0, num_classes, (1, h, w), generator=g)))
        s.set_metainfo(dict(img_shape=(h, w), ori_shape=(h, w), pad_shape=(h, w)))
        samples.append(s)
    return dict(inputs=inputs, data_samples=samples)


def metas(data):
    """Fresh per-image meta dicts (slide inference writes crop shapes into them)."""
    return [dict(s.metainfo) for s in data["data_samples"]]


def test_training_step_updates_every_part(tiny_cfg):
    from mmengine.optim import build_optim_wrapper

    model = build(tiny_cfg).train()
    assert model.decode_head.num_classes == 3  # from the shapes set's classes.txt
    optim = build_optim_wrapper(model, tiny_cfg.optim_wrapper)
    before = {k: v.detach().clone() for k, v in model.named_parameters()}
    losses = model.train_step(batch(2, 64, 64), optim)
    assert set(losses) >= {"decode.loss_ce", "aux.loss_ce"}
    assert all(torch.isfinite(v).all() for v in losses.values() if torch.is_tensor(v))
    for name in ("backbone.blocks.0.attn.qkv.weight", "backbone.blocks.3.mlp.fc2.weight",
                 "backbone.patch_embed.proj.weight", "backbone.adapter.ops.0.0.weight",
                 "decode_head.conv_seg.weight", "auxiliary_head.conv_seg.weight"):
        assert not torch.equal(before[name], dict(model.named_parameters())[name]), name


def test_slide_inference_covers_the_image_and_matches_whole_on_one_window(tiny_cfg):
    model = build(tiny_cfg).eval()
    assert model.test_cfg.mode == "slide" and tuple(model.test_cfg.crop_size) == (64, 64)
    data = model.data_preprocessor(batch(1, 112, 80), training=False)
    with torch.no_grad():
        logits = model.slide_inference(data["inputs"], metas(data))
        preds = model.predict(data["inputs"], data["data_samples"])
    assert logits.shape == (1, 3, 112, 80)
    assert preds[0].pred_sem_seg.data.shape == (1, 112, 80)
    assert torch.equal(preds[0].pred_sem_seg.data[0], logits[0].argmax(0))

    # A crop-sized image is one window: slide and whole inference are the same computation.
    one = model.data_preprocessor(batch(1, 64, 64, seed=1), training=False)
    with torch.no_grad():
        slide = model.slide_inference(one["inputs"], metas(one))
        whole = model.whole_inference(one["inputs"], metas(one))
    assert torch.allclose(slide, whole, atol=1e-5)


def test_slide_inference_averages_overlapping_windows(tiny_cfg):
    """96 px wide, crop 64, stride 48: columns 48-63 are seen by both windows and averaged."""
    model = build(tiny_cfg).eval()
    data = model.data_preprocessor(batch(1, 64, 96, seed=2), training=False)
    x = data["inputs"]
    with torch.no_grad():
        slide = model.slide_inference(x, metas(data))
        crop_meta = [dict(metas(data)[0], img_shape=torch.Size((64, 64)))]  # as slide sets it
        left = model.encode_decode(x[..., :64], crop_meta)
        right = model.encode_decode(x[..., 32:], crop_meta)
    ref = torch.zeros_like(slide)
    count = torch.zeros(1, 1, 64, 96)
    ref[..., :64] += left
    ref[..., 32:] += right
    count[..., :64] += 1
    count[..., 32:] += 1
    assert torch.allclose(slide, ref / count, atol=1e-5)
