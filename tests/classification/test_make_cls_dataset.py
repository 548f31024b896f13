"""tools/make_cls_dataset.py: instance crops of a COCO set as an ImageFolder root (generated shapes
always; the real coco-mini photos where ../shared/data is present)."""
import json
from collections import Counter
from pathlib import Path

import pytest
from PIL import Image

from mae_transfer.classification.data import check_image_folder
from mae_transfer.tools.image_inputs import data_root
from mae_transfer.tools.make_cls_dataset import (FILL, Settings, build, main, square_crop)
from mae_transfer.tools.synthetic_data import make_shapes_dataset

COCO_MINI = data_root() / "coco-mini" / "coco"


@pytest.fixture(scope="module")
def shapes_coco(tmp_path_factory):
    return make_shapes_dataset(tmp_path_factory.mktemp("shapes"), num_train=12, num_val=4,
                               size=160, layouts=("coco",))["coco"]


def files(root: Path):
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*.jpg"))


def check_built(out: Path, description: dict, size: int):
    """The folders, dataset.json and the pictures agree; no photo feeds both splits."""
    info = check_image_folder(out)
    assert info.classes == [c["folder"] for c in description["classes"]]
    for split in ("train", "val"):
        on_disk = Counter(Path(f).parts[1] for f in files(out) if f.startswith(split + "/"))
        assert on_disk == Counter({c["folder"]: c[split] for c in description["classes"]})
        assert len(description["crops"][split]) == sum(on_disk.values())
    photos = {s: {c["photo"] for c in description["crops"][s]} for s in ("train", "val")}
    assert photos["train"] and photos["val"] and not photos["train"] & photos["val"]
    for f in files(out)[:5]:
        assert Image.open(out / f).size == (size, size)


def test_generated_set(shapes_coco, tmp_path):
    settings = Settings(num_classes=5, per_class=10, min_size=24, size=48, val_fraction=0.3)
    description = build(tmp_path / "cls", shapes_coco, settings)
    # the shapes set has 3 categories: all of them, at most 10 crops each
    assert [c["name"] for c in description["classes"]] == ["disc", "square", "triangle"]
    for c in description["classes"]:
        assert c["train"] + c["val"] <= 10 and c["val"] <= round(0.3 * (c["train"] + c["val"]))
    check_built(tmp_path / "cls", description, 48)
    # deterministic: the same arguments give the same bytes; an earlier build is replaced
    before = {f: (tmp_path / "cls" / f).read_bytes() for f in files(tmp_path / "cls")}
    build(tmp_path / "cls", shapes_coco, settings)
    assert {f: (tmp_path / "cls" / f).read_bytes() for f in files(tmp_path / "cls")} == before
    assert not (tmp_path / "cls.partial").exists()


def test_coco_mini_crops(tmp_path):
    if not COCO_MINI.is_dir():
        pytest.skip(f"needs the real COCO photos in {COCO_MINI} (not present on this machine)")
    settings = Settings()
    description = build(tmp_path / "cls", COCO_MINI, settings)
    # the classes are the most frequent categories among non-crowd boxes with a side >= 32 px,
    # counted here straight from the two jsons
    counts = Counter()
    for split in ("train2017", "val2017"):
        data = json.loads((COCO_MINI / "annotations" / f"instances_{split}.json").read_text())
        names = {c["id"]: c["name"] for c in data["categories"]}
        counts.update(names[a["category_id"]] for a in data["annotations"]
                      if not a["iscrowd"] and min(a["bbox"][2:]) >= settings.min_size)
    top = sorted(counts, key=lambda n: (-counts[n], n))[:settings.num_classes]
    assert sorted(c["name"] for c in description["classes"]) == sorted(top)
    for c in description["classes"]:
        assert c["train"] + c["val"] == min(counts[c["name"]], settings.per_class)
    check_built(tmp_path / "cls", description, settings.size)


def test_square_crop_pads_outside_the_photo_with_the_mean_colour():
    photo = Image.new("RGB", (100, 60), (255, 0, 0))
    crop = square_crop(photo, (0, 0, 20, 60), context=0.0, size=60)  # 60 x 60 around x = 10
    assert crop.getpixel((59, 30)) == (255, 0, 0)  # inside the photo
    assert crop.getpixel((2, 30)) == FILL  # left of the photo


def test_bad_inputs_are_one_line(tmp_path, capsys, shapes_coco):
    (tmp_path / "occupied").mkdir()
    (tmp_path / "occupied" / "notes.txt").write_text("mine")
    assert main(["--out", str(tmp_path / "occupied"), "--coco", str(shapes_coco)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: --out") and "no dataset.json" in err and "\n" not in err
    assert main(["--out", str(tmp_path / "x"), "--coco", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert "no annotations/instances_*.json" in err and "\n" not in err
    assert main(["--out", str(tmp_path / "y"), "--coco", str(shapes_coco),
                 "--min_size", "500"]) == 2
    assert "lower --min_size" in capsys.readouterr().err
