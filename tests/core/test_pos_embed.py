"""Position-embedding helpers against direct reference computations."""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from timm.layers import resample_abs_pos_embed, resample_patch_embed

from mae_transfer.backbones.pos_embed import (PATCH_KERNEL_RESAMPLING, POS_EMBED_RESAMPLING,
                                              infer_grid, resize_rel_pos, sincos_2d)


def test_sincos_2d_matches_the_mae_formula():
    dim, gh, gw = 16, 3, 5
    emb = sincos_2d(dim, (gh, gw), num_prefix=1)[0].numpy()
    assert emb.shape == (1 + gh * gw, dim)
    assert np.all(emb[0] == 0)
    q = dim // 4
    for y in range(gh):
        for x in range(gw):
            row = emb[1 + y * gw + x]
            for i in range(q):
                omega = 1.0 / 10000 ** (i / q)
                assert row[i] == pytest.approx(math.sin(x * omega), abs=1e-6)
                assert row[q + i] == pytest.approx(math.cos(x * omega), abs=1e-6)
                assert row[2 * q + i] == pytest.approx(math.sin(y * omega), abs=1e-6)
                assert row[3 * q + i] == pytest.approx(math.cos(y * omega), abs=1e-6)


def _mae_interpolate_pos_embed(pos, old_grid, new_grid, num_prefix):
    """The official MAE's ``interpolate_pos_embed`` (= ViTDet's ``get_abs_pos`` on the grid),
    written out: prefix rows kept, the grid resized by plain bicubic, align_corners=False."""
    extra, tokens = pos[:, :num_prefix], pos[:, num_prefix:]
    tokens = tokens.reshape(-1, *old_grid, pos.shape[-1]).permute(0, 3, 1, 2)
    tokens = F.interpolate(tokens, size=new_grid, mode="bicubic", align_corners=False)
    return torch.cat([extra, tokens.permute(0, 2, 3, 1).flatten(1, 2)], dim=1)


@pytest.mark.parametrize("old_grid, new_grid", [((4, 4), (6, 3)), ((4, 6), (8, 12)),
                                                ((5, 3), (2, 2)), ((14, 14), (64, 64))])
@pytest.mark.parametrize("num_prefix", [0, 1, 4])
def test_timm_with_the_reference_arguments_is_maes_pos_embed_interpolation(old_grid, new_grid,
                                                                           num_prefix):
    torch.manual_seed(0)
    pos = torch.randn(1, num_prefix + old_grid[0] * old_grid[1], 8)
    ours = resample_abs_pos_embed(pos, new_grid, old_grid, num_prefix_tokens=num_prefix,
                                  **POS_EMBED_RESAMPLING)
    assert ours.shape == (1, num_prefix + new_grid[0] * new_grid[1], 8)
    assert torch.equal(ours, _mae_interpolate_pos_embed(pos, old_grid, new_grid, num_prefix))
    # timm's default (antialias=True: another cubic kernel) is not what MAE/ViTDet computed
    default = resample_abs_pos_embed(pos, new_grid, old_grid, num_prefix_tokens=num_prefix)
    assert (default - ours).abs().max() > 0.05
    assert resample_abs_pos_embed(pos, old_grid, old_grid, num_prefix_tokens=num_prefix,
                                  **POS_EMBED_RESAMPLING) is pos


def _pi_resize(kernel, new_size):
    """FlexiViT's PI-resize written out in float64: w' = pinv(B)^T w, B the bilinear resize
    (half-pixel centres, no antialiasing) of an old patch to the new size, one column per pixel."""
    h, w = kernel.shape[2:]
    columns = []
    for i in range(h * w):
        basis = torch.zeros(h * w, dtype=torch.float64)
        basis[i] = 1.0
        columns.append(F.interpolate(basis.reshape(1, 1, h, w), size=new_size, mode="bilinear",
                                     align_corners=False).flatten())
    resize = torch.stack(columns, dim=1)  # (H*W, h*w)
    flat = kernel.double().flatten(2) @ torch.linalg.pinv(resize)
    return flat.reshape(*kernel.shape[:2], *new_size), resize


@pytest.mark.parametrize("old, new", [((14, 14), (16, 16)), ((16, 16), (14, 14)), ((4, 6), (5, 3)),
                                      ((2, 3), (4, 5))])
def test_timm_with_flexivits_arguments_is_the_pi_resize(old, new):
    torch.manual_seed(0)
    kernel = torch.randn(6, 3, *old)
    ours = resample_patch_embed(kernel, list(new), **PATCH_KERNEL_RESAMPLING)
    reference, resize = _pi_resize(kernel, new)
    assert ours.shape == (6, 3, *new) and ours.dtype == kernel.dtype
    # timm solves in float32, the reference in float64
    assert torch.allclose(ours.double(), reference, rtol=1e-4, atol=1e-4)
    if new[0] >= old[0] and new[1] >= old[1]:  # upsampling: the same token, exactly
        patch = torch.randn(3, old[0] * old[1], dtype=torch.float64)
        token = (kernel.double().flatten(2) * patch).sum((1, 2))
        token_new = (ours.double().flatten(2) * (resize @ patch.T).T).sum((1, 2))
        assert torch.allclose(token_new, token, rtol=1e-4, atol=1e-4)
    default = resample_patch_embed(kernel, list(new))  # bicubic + antialias: another kernel
    assert (default.double() - reference).abs().max() > 0.1


def test_infer_grid_reads_prefix_and_shape():
    assert infer_grid(197) == (1, (14, 14))
    assert infer_grid(196) == (0, (14, 14))
    assert infer_grid(1 + 6 * 8, hint=(6, 8)) == (1, (6, 8))
    with pytest.raises(ValueError):
        infer_grid(7)


def test_resize_rel_pos_is_linear_along_positions():
    table = torch.arange(7, dtype=torch.float32)[:, None].repeat(1, 3)
    out = resize_rel_pos(table, 13)
    ref = F.interpolate(table.t()[None], size=13, mode="linear")[0].t()
    assert out.shape == (13, 3) and torch.allclose(out, ref)
    assert resize_rel_pos(table, 7) is table
