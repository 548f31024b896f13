"""Masking, patchify and the masked-only loss: exact properties on small tensors."""
import pytest
import torch

from mae_transfer.pretrain.masking import (gather_tokens, masking_from_noise, normalize_patches, num_visible,
                              patchify, reconstruction_loss, restore_order, unpatchify)


@pytest.mark.parametrize("n, ratio, keep", [(196, 0.75, 49), (16, 0.75, 4), (196, 0.9, 19),
                                            (196, 0.7, 58), (10, 0.0, 10), (4, 0.99, 1)])
def test_num_visible(n, ratio, keep):
    assert num_visible(n, ratio) == keep


@pytest.mark.parametrize("ratio", [1.0, -0.1])
def test_bad_ratio_refused(ratio):
    with pytest.raises(ValueError, match="mask ratio"):
        num_visible(16, ratio)


@pytest.mark.parametrize("n, ratio", [(196, 0.75), (16, 0.75), (49, 0.5)])
def test_masking_keeps_exactly_the_requested_patches(n, ratio):
    g = torch.Generator().manual_seed(0)
    noise = torch.rand(5, n, generator=g)
    m = masking_from_noise(noise, ratio)
    keep = num_visible(n, ratio)
    assert m.ids_keep.shape == (5, keep)
    assert torch.equal(m.mask.sum(1), torch.full((5,), float(n - keep)))
    for b in range(5):
        # Visible = the `keep` smallest noise values, and exactly those are 0 in the mask.
        expected = set(torch.topk(noise[b], keep, largest=False).indices.tolist())
        assert set(m.ids_keep[b].tolist()) == expected
        assert set(torch.nonzero(m.mask[b] == 0).flatten().tolist()) == expected
    # Per-sample masks differ (the noise differs per sample).
    assert not torch.equal(m.mask[0], m.mask[1])


def test_restore_order_undoes_the_shuffle():
    b, n, d = 3, 16, 8
    x = torch.randn(b, n, d)
    m = masking_from_noise(torch.rand(b, n, generator=torch.Generator().manual_seed(1)), 0.75)
    visible = gather_tokens(x, m.ids_keep)
    fill = torch.full((1, 1, d), -7.0)
    restored = restore_order(visible, fill, m.ids_restore)
    assert restored.shape == (b, n, d)
    hidden = m.mask.bool()
    assert torch.equal(restored[~hidden], x[~hidden])  # visible tokens back at their positions
    assert torch.all(restored[hidden] == -7.0)
    # With nothing masked the shuffle is a pure permutation and restoring gives x back.
    m0 = masking_from_noise(torch.rand(b, n), 0.0)
    assert torch.equal(restore_order(gather_tokens(x, m0.ids_keep), fill, m0.ids_restore), x)


def test_patchify_unpatchify_are_exact_inverses():
    imgs = torch.randn(2, 3, 32, 48)
    patches = patchify(imgs, (16, 16))
    assert patches.shape == (2, 2 * 3, 16 * 16 * 3)
    assert torch.equal(unpatchify(patches, (16, 16), (2, 3)), imgs)
    p = torch.randn(2, 6, 768)
    assert torch.equal(patchify(unpatchify(p, (16, 16), (2, 3)), (16, 16)), p)


def test_patch_vector_order_is_official_mae():
    """A patch's vector is (row, column, channel), patches row-major: what decoder_pred means."""
    imgs = torch.randn(1, 3, 32, 32)
    patches = patchify(imgs, (16, 16))
    second = imgs[0, :, 0:16, 16:32]  # row 0, column 1 -> patch index 1
    assert torch.equal(patches[0, 1], second.permute(1, 2, 0).reshape(-1))


def test_patchify_refuses_indivisible_size():
    with pytest.raises(ValueError, match="not divisible"):
        patchify(torch.zeros(1, 3, 30, 32), (16, 16))


def test_loss_counts_masked_patches_only():
    g = torch.Generator().manual_seed(0)
    target = torch.randn(2, 16, 12, generator=g)
    mask = masking_from_noise(torch.rand(2, 16, generator=g), 0.75).mask
    hidden = mask.bool()
    pred = target.clone()
    pred[~hidden] += 100.0  # any error on visible patches is ignored
    assert reconstruction_loss(pred, target, mask).item() == 0.0
    pred[hidden] += 0.5  # every masked pixel off by 0.5 -> MSE 0.25
    assert reconstruction_loss(pred, target, mask).item() == pytest.approx(0.25)
    # Gradient reaches masked predictions only.
    pred = torch.randn(2, 16, 12, requires_grad=True)
    reconstruction_loss(pred, target, mask).backward()
    assert torch.all(pred.grad[~hidden] == 0)
    assert torch.all(pred.grad[hidden].abs().sum(-1) > 0)


def test_loss_is_mean_over_masked_patches_of_per_patch_mse():
    g = torch.Generator().manual_seed(3)
    pred, target = torch.randn(3, 16, 12, generator=g), torch.randn(3, 16, 12, generator=g)
    mask = masking_from_noise(torch.rand(3, 16, generator=g), 0.5).mask
    per_patch = ((pred - target) ** 2).mean(-1)
    expected = per_patch[mask.bool()].mean()
    assert torch.allclose(reconstruction_loss(pred, target, mask), expected)


def test_norm_pix_targets_are_normalised_per_patch():
    g = torch.Generator().manual_seed(4)
    target = torch.randn(2, 16, 48, generator=g) * 3 + 5
    normed = normalize_patches(target)
    assert torch.allclose(normed.mean(-1), torch.zeros(2, 16), atol=1e-5)
    assert torch.allclose(normed.std(-1), torch.ones(2, 16), atol=1e-3)
    mask = torch.ones(2, 16)
    assert reconstruction_loss(normed, target, mask, norm_pix=True).item() < 1e-10
    assert reconstruction_loss(normed, target, mask, norm_pix=False).item() > 1.0
