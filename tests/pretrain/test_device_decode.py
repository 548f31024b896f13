"""``--decode_on_device``: JPEG bytes from the workers, decoded + cropped + flipped on the device.

Run here with ``device='cpu'`` through the same code the GPU runs (``decode_jpeg`` takes the
device as an argument); the CUDA decoder itself (nvJPEG) runs only in ``bench/acceptance.py``.
"""
import shutil

import pytest
import torch
from PIL import Image

from mae_transfer.pretrain.data import ImageFolderMAE
from mae_transfer.pretrain.device_decode import EncodedImageFolder, EncodedLoader, collate_encoded
from mae_transfer.pretrain.main import main

CPU = torch.device("cpu")


def decoded_on_device(folder, keys, size=64):
    ds = EncodedImageFolder(folder, size, num_patches=16, seed=7)
    batch, noise = collate_encoded([ds[k] for k in keys])
    batch.dataset = ds
    return batch, batch.decode(CPU), noise


def decoded_by_workers(folder, keys, size=64):
    ds = ImageFolderMAE(folder, size, num_patches=16, seed=7, draft=False)
    items = [ds[k] for k in keys]
    return torch.stack([x for x, _ in items]), torch.stack([n for _, n in items])


def test_device_path_gives_the_cpu_paths_crops_flips_and_masks(image_folder):
    """Same boxes, same flips, same noise; pixels differ only by decoder/resampler rounding."""
    keys = [(1, i) for i in range(8)]
    batch, device_imgs, device_noise = decoded_on_device(image_folder, keys)
    cpu_imgs, cpu_noise = decoded_by_workers(image_folder, keys)
    assert len(batch.encoded) == 8 and not batch.pixels  # all JPEGs went the device way
    assert device_imgs.shape == cpu_imgs.shape == (8, 64, 64, 3)
    assert device_imgs.dtype == torch.uint8
    assert torch.equal(device_noise, cpu_noise)
    diff = (device_imgs.float() - cpu_imgs.float()).abs().mean(dim=(1, 2, 3))
    assert diff.max() < 2.0, diff  # of 255: the same picture
    mirrored = (device_imgs.flip(2).float() - cpu_imgs.float()).abs().mean(dim=(1, 2, 3))
    assert (mirrored > 4 * diff + 1).all(), (diff, mirrored)  # flips agree
    assert abs(device_imgs.float().mean() - cpu_imgs.float().mean()) < 0.5
    assert abs(device_imgs.float().std() - cpu_imgs.float().std()) < 0.5


def test_pngs_and_broken_files_take_the_cpu_path_and_the_batch_keeps_its_size(image_folder,
                                                                              tmp_path):
    folder = tmp_path / "mixed"
    shutil.copytree(image_folder, folder)
    jpgs = sorted(folder.glob("*"))
    Image.open(jpgs[0]).convert("RGB").save(folder / "a_png.png")
    (folder / "b_broken.jpg").write_bytes(jpgs[1].read_bytes()[:200])  # header, no data
    ds = EncodedImageFolder(folder, 64, num_patches=16)
    names = [p.name for p in ds.files]
    png, broken = names.index("a_png.png"), names.index("b_broken.jpg")
    keys = [(0, png), (0, broken), (0, 4)]
    batch, imgs, _ = decoded_on_device(folder, keys)
    assert imgs.shape == (3, 64, 64, 3)
    assert 0 in batch.pixels  # the PNG was decoded by the worker's CPU path
    cpu = ImageFolderMAE(folder, 64, num_patches=16, seed=7, draft=False)
    # The broken JPEG: decoded on the device or replaced by the next file, as the CPU path does.
    substitute = cpu[(0, broken)][0]
    assert (imgs[1].float() - substitute.float()).abs().mean() < 2.0


@pytest.mark.slow
def test_training_with_decode_on_device_and_a_worker(image_folder, tmp_path):
    out = tmp_path / "run"
    assert main(["--data_path", str(image_folder), "--output_dir", str(out), "--model",
                 "mae_vit_mini_patch16", "--input_size", "64", "--batch_size", "4", "--device",
                 "cpu", "--num_workers", "1", "--vis_every", "1", "--vis_images", "2",
                 "--epochs", "1", "--steps_per_epoch", "2", "--warmup_epochs", "0",
                 "--decode_on_device"]) == 0
    assert (out / "checkpoint-last.pth").is_file() and (out / "vis" / "epoch-0001.png").is_file()
    assert "loss" in (out / "train.log").read_text()


def test_loader_wrapper_attaches_the_dataset(image_folder):
    from torch.utils.data import DataLoader

    ds = EncodedImageFolder(image_folder, 32, num_patches=4)
    loader = EncodedLoader(DataLoader(ds, batch_size=4, collate_fn=collate_encoded), ds)
    batch, noise = next(iter(loader))
    assert batch.dataset is ds and noise.shape == (4, 4)
    assert batch.decode(CPU).shape == (4, 32, 32, 3)
