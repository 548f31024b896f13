"""The pretraining data path: folder discovery, bad files, augmentation, resumable sampling."""
import logging

import numpy as np
import pytest
import torch
from PIL import Image

from mae_transfer.pretrain.data import (CROP_STREAM, DatasetError, ImageFolderMAE, ResumableSampler, draft_scale,
                           find_images, load_crop, normalize_batch, sample_crop, sample_rng,
                           training_root)
from mae_transfer.tools.synthetic_data import write_synthetic_images


def _write_corrupt(folder):
    """A truncated JPEG and a text file named .jpg; returns their paths."""
    good = folder / "img_000.jpg"
    truncated = folder / "truncated.jpg"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    text = folder / "notes.jpg"
    text.write_text("this is not an image\n")
    return truncated, text


def test_finds_images_recursively_imagenet_layout(tmp_path):
    for cls in ("n01", "n02"):
        write_synthetic_images(tmp_path / "train" / cls, count=2, size=(32, 32))
    Image.new("RGB", (8, 8)).save(tmp_path / "train" / "n02" / "UPPER.JPEG")
    Image.new("RGB", (8, 8)).save(tmp_path / "x.png")
    (tmp_path / "train" / "labels.txt").write_text("n01\n")
    files = find_images(tmp_path)
    assert len(files) == 6
    assert files == sorted(files)
    assert not any(f.suffix == ".txt" for f in files)


def _imagenet_like_tree(root):
    """ImageNet's layout in small: train/<class>/*.JPEG and val/<class>/*.JPEG."""
    for split, count in (("train", 3), ("val", 2)):
        for cls in ("n01440764", "n01443537"):
            folder = root / split / cls
            folder.mkdir(parents=True)
            for i in range(count):
                Image.new("RGB", (24, 24), (40 * i, 80, 120)).save(folder / f"{cls}_{i}.JPEG")
    return root


def test_an_imagenet_root_trains_on_train_only_as_official_mae(tmp_path, caplog):
    """PRETRAIN.md passes the ImageNet root; official MAE reads ImageFolder(root/'train')."""
    root = _imagenet_like_tree(tmp_path / "imagenet")
    with caplog.at_level(logging.INFO, logger="mae_transfer.pretrain.data"):
        ds = ImageFolderMAE(root, input_size=16)
    assert ds.root == root / "train"
    assert len(ds) == 6
    assert all((root / "train") in f.parents for f in ds.files)
    assert f"pretraining on {root / 'train'} only" in caplog.text
    assert training_root(root / "train" / "n01440764") == root / "train" / "n01440764"


@pytest.mark.parametrize("held_out", ["val", "validation", "VAL"])
def test_a_tree_with_a_held_out_folder_and_no_train_folder_is_refused(tmp_path, held_out):
    root = _imagenet_like_tree(tmp_path / "imagenet")
    (root / "train").rename(root / "images")
    (root / "val").rename(root / held_out)
    with pytest.raises(DatasetError) as err:
        ImageFolderMAE(root, input_size=16)
    message = str(err.value)
    assert "\n" not in message and str(root / held_out) in message
    assert "--data_path" in message
    # one level down too: a folder of datasets is not a training set
    with pytest.raises(DatasetError, match="held-out folder"):
        ImageFolderMAE(tmp_path, input_size=16)


def test_empty_folder_is_a_clear_error(tmp_path):
    (tmp_path / "sub").mkdir()
    with pytest.raises(DatasetError, match=f"no images found under {tmp_path}"):
        find_images(tmp_path)
    with pytest.raises(DatasetError, match="not a directory"):
        find_images(tmp_path / "missing")


def test_corrupt_images_are_logged_and_skipped(tmp_path, caplog):
    folder = write_synthetic_images(tmp_path / "imgs", count=3, size=(48, 48))
    truncated, text = _write_corrupt(folder)
    ds = ImageFolderMAE(folder, input_size=32, num_patches=4)
    files = [str(f) for f in ds.files]
    with caplog.at_level(logging.WARNING, logger="mae_transfer.pretrain.data"):
        samples = [ds[(0, i)] for i in range(len(ds))]
    assert all(img.shape == (32, 32, 3) and img.dtype == torch.uint8 for img, _ in samples)
    logged = caplog.text
    assert str(truncated) in logged and str(text) in logged
    assert "skipping unreadable image" in logged
    # A bad file's slot holds the next readable image, cropped as that slot would have been.
    slot = files.index(str(text))
    assert files[(slot + 1) % len(files)] == str(truncated)  # sorted: notes.jpg, truncated.jpg
    expected = load_crop(ds.files[0], sample_rng(0, 0, slot, CROP_STREAM), 32)
    assert torch.equal(samples[slot][0], torch.from_numpy(expected))


def test_folder_of_only_broken_files_is_an_error(tmp_path):
    (tmp_path / "a.jpg").write_text("no")
    (tmp_path / "b.png").write_bytes(b"\x89PNG broken")
    ds = ImageFolderMAE(tmp_path, input_size=16)
    with pytest.raises(DatasetError, match="consecutive unreadable images"):
        ds[0]


def test_augmentation_and_noise_are_seeded_per_epoch_and_index(image_folder):
    ds = ImageFolderMAE(image_folder, input_size=32, num_patches=4, seed=3)
    a, na = ds[(1, 2)]
    b, nb = ds[(1, 2)]
    c, nc = ds[(2, 2)]
    assert torch.equal(a, b) and torch.equal(na, nb)
    assert not torch.equal(na, nc)
    assert na.shape == (4,) and na.dtype == torch.float32


def test_crop_boxes_follow_random_resized_crop():
    rng = np.random.default_rng(0)
    for _ in range(200):
        left, top, w, h = sample_crop(rng, 320, 240)
        assert 0 <= left and left + w <= 320 and 0 <= top and top + h <= 240
        assert 0.2 * 320 * 240 * 0.95 <= w * h <= 320 * 240 * 1.0001
        assert 3 / 4 * 0.95 <= w / h <= 4 / 3 * 1.05


def test_draft_scale_keeps_the_crop_large_enough():
    assert draft_scale(1000, 900, 224) == 4
    assert draft_scale(447, 500, 224) == 1
    assert draft_scale(448, 460, 224) == 2
    assert draft_scale(5000, 4000, 224) == 8


def test_reduced_size_decoding_matches_full_decoding(tmp_path):
    big = write_synthetic_images(tmp_path / "big", count=2, size=(512, 640))
    for f in sorted(big.iterdir()):
        full = load_crop(f, np.random.default_rng(1), 64, scale=(0.9, 1.0), draft=False)
        fast = load_crop(f, np.random.default_rng(1), 64, scale=(0.9, 1.0), draft=True)
        assert full.shape == fast.shape == (64, 64, 3)
        assert np.abs(full.astype(float) - fast.astype(float)).mean() < 4.0


def test_sampler_splits_ranks_and_resumes_mid_epoch():
    ranks = [ResumableSampler(40, batch_size=4, num_replicas=2, rank=r, seed=1) for r in (0, 1)]
    for s in ranks:
        s.set_epoch(3)
    orders = [[i for _, i in s] for s in ranks]
    assert ranks[0].steps_per_epoch == 5 and len(orders[0]) == len(ranks[0]) == 20
    assert set(orders[0]).isdisjoint(orders[1]) and len(set(orders[0] + orders[1])) == 40
    ranks[0].set_epoch(3, start_step=2)
    assert [i for _, i in ranks[0]] == orders[0][8:]
    assert all(e == 3 for e, _ in ranks[0])
    ranks[0].set_epoch(4)
    assert [i for _, i in ranks[0]] != orders[0]


def test_sampler_longer_epochs_cycle_and_too_little_data_is_an_error():
    s = ResumableSampler(6, batch_size=4, steps_per_epoch=3)
    order = [i for _, i in s]
    assert len(order) == 12 and set(order) == set(range(6))
    with pytest.raises(DatasetError, match="fewer than one global batch"):
        ResumableSampler(6, batch_size=4, num_replicas=2)


def test_normalize_batch_gives_channels_last_imagenet_normalised():
    batch = torch.full((2, 8, 8, 3), 255, dtype=torch.uint8)
    x = normalize_batch(batch, torch.device("cpu"))
    assert x.shape == (2, 3, 8, 8) and x.is_contiguous(memory_format=torch.channels_last)
    assert torch.allclose(x[0, :, 0, 0], (1 - torch.tensor([0.485, 0.456, 0.406]))
                          / torch.tensor([0.229, 0.224, 0.225]))
