"""Position-embedding helpers against direct reference computations."""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mae_transfer.backbones.pos_embed import infer_grid, resize_pos_embed, resize_rel_pos, sincos_2d


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


def test_resize_is_plain_bicubic_on_the_grid_and_keeps_prefix():
    torch.manual_seed(0)
    pos = torch.randn(1, 1 + 4 * 4, 8)
    out = resize_pos_embed(pos, (6, 3))
    grid = pos[:, 1:].reshape(1, 4, 4, 8).permute(0, 3, 1, 2)
    ref = F.interpolate(grid, size=(6, 3), mode="bicubic", align_corners=False)
    assert out.shape == (1, 1 + 18, 8)
    assert torch.equal(out[:, :1], pos[:, :1])
    assert torch.allclose(out[:, 1:], ref.permute(0, 2, 3, 1).reshape(1, 18, 8))
    assert resize_pos_embed(pos, (4, 4)) is pos


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
