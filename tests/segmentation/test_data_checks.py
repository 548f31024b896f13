"""Segmentation data mistakes are one line naming the file (segmentation/data_checks.py).

Before: a label map of another size than its image, an RGB label map, a zero-byte or corrupt JPEG
and a class id past the heads crashed mid-run with tracebacks naming no file; a 16-bit label map
was read modulo 256 (300 became 44).
"""
import shutil
import sys
import warnings

import numpy as np
import pytest
from PIL import Image

import mae_transfer.segmentation.registration  # noqa: F401  (registers the dataset and the loaders)
from mae_transfer.segmentation.data_checks import (CheckedLoadAnnotations,
                                                   CheckedLoadImageFromFile, SegDataError)
from mae_transfer.segmentation.datasets import ADELayoutDataset

TINY = "segmentation/configs/upernet_vit-mini_1xb4-40it_shapes-64x64.py"


@pytest.fixture
def root(ade_root, tmp_path):
    """A copy of the shapes set (128x128 images, 8-bit labels 0..3, classes.txt: 3 classes)."""
    copy = tmp_path / "ADEChallengeData2016"
    shutil.copytree(ade_root, copy)
    return copy


def listing(root, split="training"):
    return ADELayoutDataset(data_root=str(root), data_prefix=dict(
        img_path=f"images/{split}", seg_map_path=f"annotations/{split}"))


def label_path(root, name="train_0002"):
    return root / "annotations" / "training" / f"{name}.png"


def image_path(root, name="train_0002"):
    return root / "images" / "training" / f"{name}.jpg"


def test_wrong_size_label_stops_train_seg_before_the_first_iteration(repo_root, root, tmp_path,
                                                                      capsys):
    sys.path.insert(0, str(repo_root))
    from mae_transfer.tools.train_seg import main

    Image.fromarray(np.ones((100, 128), np.uint8)).save(label_path(root))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        code = main([TINY, "--data-root", str(root), "--work-dir", str(tmp_path / "w")])
    out, err = capsys.readouterr()
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1, lines
    assert (f"SegDataError: label map {label_path(root)} is 128x100 but its image "
            f"{image_path(root)} is 128x128") in lines[0]
    assert "Iter(train)" not in out


@pytest.mark.parametrize("spoil, message", [
    (lambda root: Image.fromarray(np.ones((128, 128, 3), np.uint8)).save(label_path(root)),
     "label map {label} is a RGB colour image; a label map holds one class id a pixel"),
    (lambda root: image_path(root).write_bytes(b""),
     "{image}: not a readable image"),
])
def test_listing_reads_headers_and_names_the_file(root, spoil, message):
    spoil(root)
    with pytest.raises(SegDataError) as err:
        listing(root)
    assert message.format(label=label_path(root), image=image_path(root)) in str(err.value)


def test_an_image_that_does_not_decode_is_named_at_load_time(root):
    data = image_path(root).read_bytes()
    image_path(root).write_bytes(data[:200] + bytes(len(data) - 200))  # header kept, body zeros
    info = listing(root).get_data_info(2)
    with pytest.raises(SegDataError, match=f"cannot decode image {image_path(root)}"):
        CheckedLoadImageFromFile()(dict(info))


def load_labels(root, labels, num_classes, reduce_zero_label=True):
    Image.fromarray(labels).save(label_path(root))
    results = dict(seg_map_path=str(label_path(root)), reduce_zero_label=reduce_zero_label,
                   seg_fields=[], ori_shape=labels.shape)
    return CheckedLoadAnnotations(num_classes=num_classes)(results)["gt_seg_map"]


def test_class_ids_are_checked_against_the_classes(root):
    ok = np.array([[0, 1, 2, 3, 255]], np.uint8).repeat(4, 0)
    assert load_labels(root, ok, 3).tolist()[0] == [255, 0, 1, 2, 255]  # MMSeg's reduction
    with pytest.raises(SegDataError) as err:
        load_labels(root, np.array([[1, 4]], np.uint8), 3)
    assert (f"label map {label_path(root)} holds the value 4 (uint8), which no class of the "
            f"config's 3 takes: values 1..3 are classes, 0 and 255 are ignored") in str(err.value)
    # without reduce_zero_label, 0 is a class and 3 is one too many
    assert load_labels(root, np.array([[0, 2, 255]], np.uint8), 3, False).tolist() == [[0, 2, 255]]
    with pytest.raises(SegDataError, match="value 3 .*values 0..2 are classes, 255 is ignored"):
        load_labels(root, np.array([[0, 3]], np.uint8), 3, False)


def test_16_bit_labels_are_read_as_stored(root):
    labels = np.array([[0, 1, 300, 400]], np.uint16)
    assert load_labels(root, labels, 400).tolist() == [[255, 0, 299, 399]]  # not 300 % 256
    with pytest.raises(SegDataError, match="holds the value 400 \\(uint16\\).*config's 150"):
        load_labels(root, labels, 150)


def test_the_entry_point_puts_the_checked_loaders_in_every_pipeline(ade_root):
    from mae_transfer.segmentation.entry import load_config
    from mae_transfer.tools.train_seg import parse_args

    cfg = load_config(parse_args([TINY, "--data-root", str(ade_root)]))
    for loader in ("train_dataloader", "val_dataloader", "test_dataloader"):
        types = [step["type"] for step in cfg[loader].dataset.pipeline]
        assert types[0] == "CheckedLoadImageFromFile" and "LoadAnnotations" not in types
        step = next(s for s in cfg[loader].dataset.pipeline if s["type"] == "CheckedLoadAnnotations")
        assert step["num_classes"] == 3 and step["ignore_index"] == 255


def test_a_loader_worker_error_is_reported_by_its_last_line():
    """torch re-raises a worker's error with the worker's traceback as the message."""
    from mae_transfer.segmentation.entry import error_line

    exc = SegDataError("Caught SegDataError in DataLoader worker process 0.\nOriginal Traceback "
                       "(most recent call last):\n  File \"x.py\", line 1, in f\nmae_transfer."
                       "segmentation.data_checks.SegDataError: label map a.png holds the value 9")
    assert error_line(exc) == "SegDataError: label map a.png holds the value 9"
