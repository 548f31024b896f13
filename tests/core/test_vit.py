"""The shared ViT: timm equivalence, named sizes, any input size, window attention, rel-pos bias."""
import pytest
import timm
import torch
from timm.layers import resample_abs_pos_embed

from mae_transfer.backbones import VIT_ARCHS, build_vit
from mae_transfer.backbones.attention import decomposed_rel_pos_bias
from mae_transfer.backbones.pos_embed import POS_EMBED_RESAMPLING


def _timm_twin(model, **kw):
    a = model.arch
    ref = timm.models.vision_transformer.VisionTransformer(
        img_size=a["img_size"], patch_size=a["patch_size"], embed_dim=a["embed_dim"],
        depth=a["depth"], num_heads=a["num_heads"], num_classes=0, **kw)
    missing, unexpected = ref.load_state_dict(model.state_dict(), strict=False)
    assert not missing and not unexpected
    return ref.eval()


def test_matches_timm_vit_small_float32():
    torch.manual_seed(0)
    model = build_vit("vit_small_patch16").eval()
    ref = _timm_twin(model)
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        ours, theirs = model.forward_features(x), ref.forward_features(x)
    assert ours.shape == (2, 197, 384)
    assert (ours - theirs).abs().max().item() < 1e-5


def test_matches_timm_at_other_input_size_and_explicit_attention():
    """Non-square input: our on-the-fly pos_embed resize + blocks equal timm built at that size.

    (timm's own dynamic resize uses antialiased bicubic, a different kernel; ours is the plain
    bicubic of the official MAE and ViTDet, so timm gets our resized table explicitly.)
    """
    torch.manual_seed(0)
    model = build_vit("custom", img_size=64, patch_size=16, embed_dim=96, depth=3, num_heads=3)
    model.eval()
    ref = timm.models.vision_transformer.VisionTransformer(
        img_size=(96, 128), patch_size=16, embed_dim=96, depth=3, num_heads=3, num_classes=0)
    state = dict(model.state_dict(), pos_embed=model.abs_pos((6, 8)))
    ref.load_state_dict(state)
    ref.eval()
    x = torch.randn(2, 3, 96, 128)
    with torch.no_grad():
        ours = model.forward_features(x)
        theirs = ref.forward_features(x)
        model.set_fused_attn(False)
        explicit = model.forward_features(x)
    assert ours.shape == (2, 1 + 6 * 8, 96)
    assert (ours - theirs).abs().max().item() < 1e-5
    assert (ours - explicit).abs().max().item() < 1e-5


@pytest.mark.parametrize("name,timm_name,params", [
    ("vit_small_patch16", "vit_small_patch16_224", 21.67e6),
    ("vit_base_patch16", "vit_base_patch16_224", 85.80e6),
    ("vit_large_patch16", "vit_large_patch16_224", 303.30e6),
    ("vit_huge_patch14", "vit_huge_patch14_224", 630.76e6),
])
def test_named_sizes_have_timm_names_and_shapes(name, timm_name, params):
    with torch.device("meta"):
        ours = build_vit(name)
        ref = timm.create_model(timm_name, pretrained=False, num_classes=0)
    ours_shapes = {k: tuple(v.shape) for k, v in ours.state_dict().items()}
    ref_shapes = {k: tuple(v.shape) for k, v in ref.state_dict().items()}
    assert ours_shapes == ref_shapes
    assert sum(v.numel() for v in ours.parameters()) == pytest.approx(params, rel=2e-3)


def test_overrides_build_custom_size_and_reject_unknown_names():
    m = build_vit("vit_base_patch16", img_size=96, depth=2, embed_dim=64, num_heads=2)
    assert (m.depth, m.embed_dim, m.pretrain_grid) == (2, 64, (6, 6))
    assert m.pos_embed.shape == (1, 37, 64)
    with pytest.raises(ValueError, match="unknown ViT"):
        build_vit("vit_giant")


@pytest.mark.parametrize("size", [(64, 64), (32, 80), (112, 48)])
def test_any_input_size_divisible_by_patch(size):
    m = build_vit("vit_mini_patch16", img_size=64).eval()
    out = m.forward_features(torch.randn(1, 3, *size))
    assert out.shape == (1, 1 + (size[0] // 16) * (size[1] // 16), 64)
    maps = m.forward_maps(torch.randn(1, 3, *size), out_indices=[1, 3])
    assert [tuple(t.shape) for t in maps] == [(1, 64, size[0] // 16, size[1] // 16)] * 2


def test_input_not_divisible_by_patch_is_an_error():
    m = build_vit("vit_mini_patch16", img_size=64)
    with pytest.raises(AssertionError, match="divisible"):
        m.forward_features(torch.randn(1, 3, 70, 64))


def test_pos_embed_is_resized_bicubically_from_pretrain_grid():
    m = build_vit("vit_mini_patch16", img_size=64)
    pos = m.abs_pos((6, 5))
    assert pos.shape == (1, 31, 64)
    assert torch.equal(pos, resample_abs_pos_embed(m.pos_embed, (6, 5), (4, 4), num_prefix_tokens=1,
                                                   **POS_EMBED_RESAMPLING))
    assert torch.equal(pos[:, :1], m.pos_embed[:, :1])


def _same_weights(src, dst):
    missing, unexpected = dst.load_state_dict(src.state_dict(), strict=False)
    assert not unexpected
    return dst.eval()


def test_window_covering_the_grid_equals_global_attention():
    torch.manual_seed(0)
    glob = build_vit("vit_mini_patch16", img_size=64, use_cls_token=False).eval()
    win = _same_weights(glob, build_vit("vit_mini_patch16", img_size=64, window_size=4,
                                        use_cls_token=False))
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(glob.forward_features(x), win.forward_features(x), atol=1e-5)


def test_window_attention_keeps_windows_apart_and_pads():
    torch.manual_seed(0)
    m = build_vit("custom", img_size=80, patch_size=16, embed_dim=32, depth=1, num_heads=2,
                  window_size=2, use_cls_token=False).eval()
    x = torch.randn(1, 3, 80, 80)  # 5x5 grid, windows of 2 -> padded to 6x6
    x2 = x.clone()
    x2[..., :16, :16] += 1.0  # change patch (0, 0): only its window (rows 0-1, cols 0-1) may move
    with torch.no_grad():
        a = m.forward_maps(x)[0][0]
        b = m.forward_maps(x2)[0][0]
    changed = (a - b).abs().amax(0) > 1e-6
    expected = torch.zeros(5, 5, dtype=torch.bool)
    expected[:2, :2] = True
    assert torch.equal(changed, expected)


def test_cls_token_sees_every_window():
    torch.manual_seed(0)
    m = build_vit("custom", img_size=64, patch_size=16, embed_dim=32, depth=1, num_heads=2,
                  window_size=2).eval()
    x = torch.randn(1, 3, 64, 64)
    x2 = x.clone()
    x2[..., 48:, 48:] += 1.0  # last window only
    with torch.no_grad():
        a, b = m.forward_features(x), m.forward_features(x2)
    assert (a[0, 0] - b[0, 0]).abs().max() > 1e-4  # cls moved
    assert torch.allclose(a[0, 1:3], b[0, 1:3], atol=1e-6)  # first window did not


def test_decomposed_rel_pos_bias_matches_explicit_sum():
    torch.manual_seed(0)
    h, w, d = 3, 4, 5
    q = torch.randn(1, 2, h * w, d)
    table_h, table_w = torch.randn(2 * h - 1, d), torch.randn(2 * w - 1, d)
    bias = decomposed_rel_pos_bias(q, (h, w), table_h, table_w)
    ref = torch.zeros(1, 2, h * w, h * w)
    for i in range(h * w):
        for j in range(h * w):
            (yi, xi), (yj, xj) = divmod(i, w), divmod(j, w)
            ref[0, :, i, j] = q[0, :, i] @ table_h[yi - yj + h - 1] + q[0, :, i] @ table_w[xi - xj + w - 1]
    assert torch.allclose(bias, ref, atol=1e-5)


def test_zero_rel_pos_tables_change_nothing_and_nonzero_ones_do():
    torch.manual_seed(0)
    plain = build_vit("vit_mini_patch16", img_size=64).eval()
    rel = _same_weights(plain, build_vit("vit_mini_patch16", img_size=64, use_rel_pos=True,
                                         window_size=2, global_blocks=[1, 3]))
    plain_win = _same_weights(plain, build_vit("vit_mini_patch16", img_size=64, window_size=2,
                                               global_blocks=[1, 3]))
    x = torch.randn(1, 3, 64, 96)  # grid 4x6 != pretrain grid 4x4: tables resized on the fly
    with torch.no_grad():
        assert torch.allclose(rel.forward_features(x), plain_win.forward_features(x), atol=1e-5)
        for blk in rel.blocks:
            blk.attn.rel_pos_h.normal_()
        fused = rel.forward_features(x)
        rel.set_fused_attn(False)
        explicit = rel.forward_features(x)
    assert (fused - plain_win.forward_features(x)).abs().max() > 1e-3
    assert torch.allclose(fused, explicit, atol=1e-4)
    assert rel.blocks[0].attn.rel_pos_h.shape == (3, 16)  # window 2 -> 2*2-1 rows
    assert rel.blocks[1].attn.rel_pos_h.shape == (7, 16)  # global: pretrain grid 4 -> 7 rows


def test_activation_checkpointing_gives_the_same_gradients():
    torch.manual_seed(0)
    a = build_vit("vit_mini_patch16", img_size=64).train()
    b = _same_weights(a, build_vit("vit_mini_patch16", img_size=64, grad_checkpointing=True))
    b.train()
    x = torch.randn(2, 3, 64, 64)
    a.forward_features(x).square().mean().backward()
    b.forward_features(x).square().mean().backward()
    for (n, pa), (_, pb) in zip(a.named_parameters(), b.named_parameters()):
        assert torch.allclose(pa.grad, pb.grad, atol=1e-6), n


def test_drop_path_is_random_in_training_and_off_in_eval():
    torch.manual_seed(0)
    m = build_vit("vit_mini_patch16", img_size=64, drop_path_rate=0.5)
    x = torch.randn(4, 3, 64, 64)
    m.train()
    assert not torch.allclose(m.forward_features(x), m.forward_features(x))
    m.eval()
    assert torch.equal(m.forward_features(x), m.forward_features(x))
    assert sorted(VIT_ARCHS) == sorted(["vit_mini_patch16", "vit_mini_patch8", "vit_tiny_patch16",
                                        "vit_small_patch16", "vit_base_patch16",
                                        "vit_large_patch16", "vit_huge_patch14"])
