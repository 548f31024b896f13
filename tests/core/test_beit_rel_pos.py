"""The ViT's BEiT options: relative position tables (rel_pos_type='beit') and layer scale."""
import numpy as np
import pytest
import torch
from scipy.interpolate import make_interp_spline
from timm.layers import resize_rel_pos_bias_table

from mae_transfer.backbones import build_vit
from mae_transfer.backbones.pos_embed import (_geometric_offsets, beit_rel_pos_index,
                                              resize_beit_table)


def _beit(**kw):
    kw.setdefault("layer_scale_init", 1.0)
    return build_vit("vit_mini_patch16", img_size=64, use_rel_pos=True, rel_pos_type="beit", **kw)


def _explicit_bias(table, grid, table_grid):
    """(heads, 1 + h*w, 1 + h*w) bias by the BEiT layout, one pair at a time."""
    (h, w), (sh, sw) = grid, table_grid
    n = h * w
    offsets = (2 * sh - 1) * (2 * sw - 1)
    bias = torch.empty(table.shape[1], n + 1, n + 1)
    bias[:, 0, 1:] = table[offsets][:, None]       # cls -> patch
    bias[:, 1:, 0] = table[offsets + 1][:, None]   # patch -> cls
    bias[:, 0, 0] = table[offsets + 2]             # cls -> cls
    for i in range(n):
        for j in range(n):
            (yi, xi), (yj, xj) = divmod(i, w), divmod(j, w)
            bias[:, i + 1, j + 1] = table[(yi - yj + sh - 1) * (2 * sw - 1) + xi - xj + sw - 1]
    return bias


def test_options_build_the_agreed_parameters():
    model = _beit(layer_scale_init=0.1)
    names = dict(model.named_parameters())
    assert names["blocks.0.attn.relative_position_bias_table"].shape == (7 * 7 + 3, 4)
    assert all(not v.any() for k, v in names.items() if k.endswith("bias_table"))  # zero init
    assert names["blocks.3.gamma_1"].shape == (64,) and names["blocks.3.gamma_2"].shape == (64,)
    assert torch.all(names["blocks.3.gamma_2"] == 0.1)
    assert not any(k.endswith(("rel_pos_h", "relative_position_index"))
                   for k in model.state_dict())  # the index is derived, not a checkpoint tensor
    assert model.arch["rel_pos_type"] == "beit" and model.arch["layer_scale_init"] == 0.1
    plain = build_vit("vit_mini_patch16", img_size=64, use_rel_pos=True)
    assert plain.arch["rel_pos_type"] == "decomposed" and plain.arch["layer_scale_init"] is None
    assert not any("gamma" in k or "bias_table" in k for k in plain.state_dict())
    with pytest.raises(ValueError, match="rel_pos_type"):
        build_vit("vit_mini_patch16", img_size=64, use_rel_pos=True, rel_pos_type="swin")


@pytest.mark.parametrize("size", [(64, 64), (48, 32)])  # the built 4x4 grid, and a smaller 3x2 one
def test_attention_adds_the_table_entry_of_each_offset(size):
    """Block 0's attention equals softmax(q k^T * scale + explicit BEiT bias) v, both kernels."""
    torch.manual_seed(0)
    model = _beit().eval()
    attn = model.blocks[0].attn
    with torch.no_grad():
        attn.relative_position_bias_table.normal_()
        x = torch.randn(2, 3, *size)
        tokens, grid = model.embed(x)
        q, k, v = attn._split_heads(tokens)
        bias = _explicit_bias(attn.relative_position_bias_table, grid, (4, 4))
        ref = ((q @ k.transpose(-2, -1)) * attn.scale + bias).softmax(-1) @ v
        ref = attn.proj(ref.transpose(1, 2).reshape(tokens.shape))
        fused = attn(tokens, grid, 1)
        attn.fused = False
        explicit = attn(tokens, grid, 1)
    assert (fused - ref).abs().max() < 1e-5
    assert (explicit - ref).abs().max() < 1e-5


def test_zero_tables_and_unit_gammas_are_the_plain_vit_and_trained_ones_are_not():
    torch.manual_seed(0)
    beit = _beit().eval()
    plain = build_vit("vit_mini_patch16", img_size=64).eval()
    missing, unexpected = plain.load_state_dict(beit.state_dict(), strict=False)
    assert not missing and len(unexpected) == 3 * 4  # a table and two gammas per block
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert (beit(x) - plain(x)).abs().max() < 1e-5
        beit.blocks[1].gamma_2.mul_(0.5)
        assert (beit(x) - plain(x)).abs().max() > 1e-3
        beit.blocks[1].gamma_2.fill_(1.0)
        beit.blocks[2].attn.relative_position_bias_table.normal_()
        assert (beit(x) - plain(x)).abs().max() > 1e-3


def test_layer_scale_multiplies_each_branch():
    torch.manual_seed(0)
    model = _beit(layer_scale_init=0.0).eval()
    blk = model.blocks[0]
    x = torch.randn(2, 17, 64)
    with torch.no_grad():
        assert torch.equal(blk(x, (4, 4), 1), x)  # both branches scaled to zero
        blk.gamma_1.normal_()
        expected = x + blk.gamma_1 * blk.attn(blk.norm1(x), (4, 4), 1)
        assert torch.allclose(blk(x, (4, 4), 1), expected, atol=1e-6)


def test_a_grid_larger_than_the_tables_is_refused_clearly():
    model = _beit()
    with pytest.raises(ValueError, match=r"5x4 patch grid is larger than the 4x4 grid"):
        model(torch.randn(1, 3, 80, 64))


def test_window_blocks_get_window_sized_tables():
    model = _beit(window_size=2, global_blocks=[3]).eval()
    assert model.blocks[0].attn.relative_position_bias_table.shape == (3 * 3 + 3, 4)
    assert model.blocks[3].attn.relative_position_bias_table.shape == (7 * 7 + 3, 4)
    with torch.no_grad():
        for blk in model.blocks:
            blk.attn.relative_position_bias_table.normal_()
        assert model(torch.randn(1, 3, 48, 64)).shape == (1, 1 + 12, 64)  # windows padded


def test_geometric_offsets_keep_unit_steps_near_zero_and_reach_the_new_span():
    src, dst = _geometric_offsets(27, 63)  # a 14x14 table (224 px) for a 32x32 grid (512 px)
    assert dst == [float(i) for i in range(-31, 32)]
    assert len(src) == 27 and src[13] == 0.0 and src[14] == 1.0
    assert src[-1] == pytest.approx(31, abs=1e-3)  # the outermost offset lands on the new rim
    gaps = [b - a for a, b in zip(src[13:], src[14:])]
    assert all(g2 > g1 for g1, g2 in zip(gaps, gaps[1:]))  # geometrically widening


@pytest.mark.parametrize("grid, table_grid", [((4, 4), (4, 4)), ((3, 5), (3, 5)),
                                             ((2, 3), (4, 4)), ((3, 2), (3, 5))])
@pytest.mark.parametrize("num_prefix", [0, 1])
def test_index_is_each_pairs_offset_row_for_the_table_grid(grid, table_grid, num_prefix):
    """timm's index (table grid) and its sub-matrix (smaller grid) against BEiT's rule, pair by
    pair: offset (dy, dx) -> (dy + Sh - 1) * (2*Sw - 1) + dx + Sw - 1, then the three cls rows."""
    (h, w), (sh, sw) = grid, table_grid
    offsets = (2 * sh - 1) * (2 * sw - 1)
    n = num_prefix + h * w
    expected = torch.empty(n, n, dtype=torch.long)
    for i in range(n):
        for j in range(n):
            if num_prefix and i == 0:
                expected[i, j] = offsets + 2 if j == 0 else offsets
            elif num_prefix and j == 0:
                expected[i, j] = offsets + 1
            else:
                (yi, xi), (yj, xj) = divmod(i - num_prefix, w), divmod(j - num_prefix, w)
                expected[i, j] = (yi - yj + sh - 1) * (2 * sw - 1) + xi - xj + sw - 1
    assert torch.equal(beit_rel_pos_index(grid, table_grid, num_prefix), expected)


def _mmseg_offsets(src_size, dst_size):
    """MMSeg's ``BEiT._geometric_sequence_interpolation`` source and target offsets, as written
    there (bisection for q, then cumulative gaps q^i)."""
    left, right = 1.01, 1.5
    while right - left > 1e-6:
        q = (left + right) / 2.0
        if (1.0 - q ** (src_size // 2)) / (1.0 - q) > dst_size // 2:
            right = q
        else:
            left = q
    dis, cur = [], 1
    for i in range(src_size // 2):
        dis.append(cur)
        cur += q ** (i + 1)
    t = dst_size // 2.0
    return [-d for d in reversed(dis)] + [0] + dis, np.arange(-t, t + 0.1, 1.0)


def _mmseg_resize(table, grid):
    """MMSeg's resize, re-computed: its ``interp2d(kind='cubic')`` on a grid is the not-a-knot
    cubic interpolating spline along each axis (evaluated at points clamped to the source range,
    as FITPACK evaluates), here one axis after the other with ``make_interp_spline``."""
    side = int((table.shape[0] - 3) ** 0.5)
    y, out_y = _mmseg_offsets(side, 2 * grid[0] - 1)
    x, out_x = _mmseg_offsets(side, 2 * grid[1] - 1)
    out_y, out_x = np.clip(out_y, y[0], y[-1]), np.clip(out_x, x[0], x[-1])
    heads = []
    for i in range(table.shape[1]):
        z = table[:-3, i].double().reshape(side, side).numpy()
        along_y = make_interp_spline(y, z, k=3, axis=0)(out_y)
        heads.append(make_interp_spline(x, along_y, k=3, axis=1)(out_x).reshape(-1))
    return torch.cat([torch.from_numpy(np.stack(heads, axis=1)), table[-3:].double()])


@pytest.mark.parametrize("side, grid", [(7, (5, 5)), (7, (6, 6)), (13, (14, 14)), (9, (3, 3)),
                                        (7, (5, 3))])
def test_resize_beit_table_is_mmsegs_cubic_resize_and_not_timms(side, grid):
    """Stretch, shrink and (beyond MMSeg, which refuses them) a non-square target."""
    torch.manual_seed(0)
    table = torch.randn(side * side + 3, 3, dtype=torch.float64)
    ours = resize_beit_table(table, grid)
    rows = (2 * grid[0] - 1) * (2 * grid[1] - 1) + 3
    assert ours.shape == (rows, 3)
    assert torch.allclose(ours, _mmseg_resize(table, grid), atol=1e-9)
    # timm spreads the offsets alike but interpolates linearly: other tables (least on a
    # shrink, a near crop), far beyond float32 round-off
    timm_table = resize_rel_pos_bias_table(table.float(), grid, (rows, 3)).double()
    assert (timm_table - ours).abs().max() > 0.01


def test_resize_beit_table_interpolates_cubics_exactly_and_keeps_cls_rows():
    """A bicubic interpolating spline reproduces a cubic of the offsets: checks placement too.

    (4x4 -> 5x5: the stretched source offsets reach the new rim, +-4, so nothing is extrapolated;
    beyond the source range FITPACK, hence BEiT/MMSeg, holds the edge value.)
    """
    src_pos, dst_pos = _geometric_offsets(7, 9)
    sy, sx = torch.tensor(src_pos, dtype=torch.float64)[:, None], torch.tensor(src_pos)[None, :]

    def cubic(y, x):
        return 0.3 * y ** 3 - x ** 2 * y + 0.5 * x - 2.0

    grid_part = torch.stack([cubic(sy, sx), 2 * cubic(sx.T, sy.T)], dim=-1).reshape(49, 2)
    cls_rows = torch.tensor([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]], dtype=torch.float64)
    resized = resize_beit_table(torch.cat([grid_part, cls_rows]), (5, 5))
    dy = torch.tensor(dst_pos, dtype=torch.float64)[:, None]
    dx = torch.tensor(dst_pos, dtype=torch.float64)[None, :]
    expected = torch.stack([cubic(dy, dx), 2 * cubic(dx.T, dy.T)], dim=-1).reshape(81, 2)
    assert resized.shape == (9 * 9 + 3, 2)
    assert torch.allclose(resized[:-3], expected, atol=1e-4)
    assert torch.equal(resized[-3:], cls_rows)
    table = torch.randn(52, 4)
    assert resize_beit_table(table, (4, 4)) is table
    with pytest.raises(ValueError, match="not \\(2S-1\\)\\^2 \\+ 3"):
        resize_beit_table(torch.randn(50, 4), (4, 4))


def test_layer_decay_puts_tables_and_gammas_in_their_block_with_each_recipes_weight_decay():
    """MMSeg's MAE rule decays the (2-D) table and exempts the (1-D) gammas; MAE/BEiT's exempts
    both. Either way they share their block's lr scale."""
    from mae_transfer.tools.lr_decay import param_groups

    model = _beit()
    for policy, table_wd in (("mmseg_mae", 0.05), ("mae_finetune", 0.0)):
        groups = param_groups(model, weight_decay=0.05, layer_decay=0.5, wd_policy=policy)
        where = {n: g for g in groups for n in g["param_names"]}
        table = where["blocks.2.attn.relative_position_bias_table"]
        gamma = where["blocks.2.gamma_1"]
        assert table["layer_id"] == gamma["layer_id"] == 3
        assert table["lr_scale"] == gamma["lr_scale"] == 0.5 ** 2
        assert table["weight_decay"] == table_wd and gamma["weight_decay"] == 0.0
