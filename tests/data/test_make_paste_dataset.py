"""tools/make_paste_dataset.py: stamp selection, splits, COCO/ADE agreement, occlusion, fetching.

The fast tests use a hand-made stamp folder (textured RGBA cut-outs in three class folders, plus
one stamp for every exclusion rule) and generated backgrounds; one slow test uses the real Tux
Paint stamps when they have been fetched into the cache.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from mae_transfer.experiment import paste_dataset as mpd
from mae_transfer.tools.annotated_sets import rasterise
from mae_transfer.tools.synthetic_data import write_synthetic_images

CLASS_FOLDERS = {"animals/discs": 5, "food/boxes": 4, "plants/stars": 3}


@pytest.fixture(scope="module")
def stamp_root(tmp_path_factory) -> Path:
    """Stamps in Tux Paint's layout: 3 photo classes, and one stamp for each exclusion rule."""
    root = tmp_path_factory.mktemp("stamps") / "usr/share/tuxpaint/stamps"
    mpd.write_generated_stamps(root, per_class=[CLASS_FOLDERS[k] for k in mpd.GENERATED_CLASSES])
    rng = np.random.default_rng(1)
    boxes = root / "food/boxes"
    (boxes / "boxes0.dat").write_text("nomirror\n")
    Image.open(boxes / "boxes1.png").transpose(Image.FLIP_LEFT_RIGHT).save(
        boxes / "boxes1_mirror.png")                                   # duplicate (mirror twin)
    stamp = lambda: mpd.generated_cutout("discs", 80, 80, (128, 128, 128), rng)  # noqa: E731
    for rel in ("symbols/alphabets/a.png", "seasonal/easter/egg.png",
                "animals/cartoon/drawn.png", "animals/discs/cartoon/drawn2.png",
                "food/loose.png"):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        stamp().save(root / rel)
    stamp().save(root / "plants/stars/vector.png")
    (root / "plants/stars/vector.svg").write_text("<svg/>")
    flat = np.zeros((80, 80, 4), np.uint8)
    flat[10:70, 10:70] = (250, 10, 10, 255)
    Image.fromarray(flat, "RGBA").save(root / "animals/discs/flatdrawn.png")
    glow = np.zeros((80, 80, 4), np.uint8)
    glow[..., :3] = rng.integers(0, 255, (80, 80, 3))
    glow[..., 3] = 60
    glow[30:40, 30:40, 3] = 255
    Image.fromarray(glow, "RGBA").save(root / "plants/stars/glow.png")
    mpd.generated_cutout("discs", 30, 30, (128, 128, 128), rng).save(root / "animals/discs/tiny.png")
    (root / "town/roadsigns").mkdir(parents=True)
    stamp().save(root / "town/roadsigns/sign.png")
    return root


EXPECTED_SKIPS = {
    "symbols/alphabets/a.png": "symbols", "seasonal/easter/egg.png": "seasonal",
    "animals/cartoon/drawn.png": "cartoon", "animals/discs/cartoon/drawn2.png": "cartoon",
    "food/loose.png": "loose", "plants/stars/vector.png": "svg-drawing",
    "animals/discs/flatdrawn.png": "flat-colour", "plants/stars/glow.png": "translucent",
    "animals/discs/tiny.png": "small", "town/roadsigns/sign.png": "drawn-folder",
    "food/boxes/boxes1_mirror.png": "duplicate",
}


@pytest.fixture(scope="module")
def backgrounds(tmp_path_factory) -> Path:
    """14 generated photos, two of them named like ImageNet animal photos (look-alikes)."""
    folder = write_synthetic_images(tmp_path_factory.mktemp("bg"), count=14, size=(90, 120))
    files = sorted(folder.iterdir())
    files[0].rename(folder / "n01440764_tench.jpg")
    files[1].rename(folder / "n02085620_Chihuahua.jpg")
    return folder


def _build(out: Path, stamp_root: Path, backgrounds: Path, **kw) -> dict:
    kw.setdefault("min_instances", 2)              # the hand-made set has 3-5 stamps a class
    settings = mpd.PasteSettings(size=kw.pop("size", 64), per_image=kw.pop("per_image", (2, 4)),
                                 scale=kw.pop("scale", (0.45, 0.8)))
    cfg = mpd.BuildConfig(out=out, backgrounds=backgrounds, stamps_root=stamp_root,
                          num_train=kw.pop("num_train", 12), num_val=kw.pop("num_val", 6),
                          settings=settings, **kw)
    return mpd.build(cfg)


@pytest.fixture(scope="module")
def built(tmp_path_factory, stamp_root, backgrounds) -> Path:
    out = tmp_path_factory.mktemp("paste") / "set"
    _build(out, stamp_root, backgrounds)
    return out


# ------------------------------------------------------------------ stamp selection -------------

def test_scan_stamps_keeps_photos_and_says_why_others_are_left_out(stamp_root):
    kept, skipped = mpd.scan_stamps(stamp_root)
    assert skipped == EXPECTED_SKIPS
    expected_kept = {f"{folder}/{folder.split('/')[-1]}{i}.png"
                     for folder, n in CLASS_FOLDERS.items() for i in range(n)}
    assert {s.rel for s in kept} == expected_kept
    assert {s.key for s in kept} == set(CLASS_FOLDERS)
    assert [s.rel for s in kept if not s.mirror] == ["food/boxes/boxes0.png"]


def test_choose_classes_takes_the_most_populated_folders(stamp_root):
    kept, _ = mpd.scan_stamps(stamp_root)
    assert mpd.choose_classes(kept, 2, 2) == ["animals/discs", "food/boxes"]
    assert mpd.choose_classes(kept, 10, 4) == ["animals/discs", "food/boxes"]
    with pytest.raises(mpd.PasteDataError, match="min-instances"):
        mpd.choose_classes(kept, 3, 6)
    assert mpd.class_name("animals/birds", ["animals/birds", "food/fruit"]) == "birds"
    assert mpd.class_name("a/tools", ["a/tools", "b/tools"]) == "a_tools"


def test_split_stamps_is_disjoint_complete_and_stable(stamp_root):
    kept, _ = mpd.scan_stamps(stamp_root)
    keys = sorted(CLASS_FOLDERS)
    split = mpd.split_stamps(kept, keys, 0.25, seed=0)
    for key in keys:
        train = {s.rel for s in split["train"][key]}
        val = {s.rel for s in split["val"][key]}
        assert not train & val
        assert train | val == {s.rel for s in kept if s.key == key}
        assert len(val) == max(1, round(CLASS_FOLDERS[key] * 0.25)) and train
    # a class's split does not depend on which other classes are chosen
    alone = mpd.split_stamps(kept, ["plants/stars"], 0.25, seed=0)
    assert alone["val"]["plants/stars"] == split["val"]["plants/stars"]


def test_lookalike_backgrounds_are_recognised():
    assert mpd.is_lookalike_background("n01440764_tench.JPEG")            # animal
    assert mpd.is_lookalike_background("n07753592_banana.JPEG")           # fruit
    assert mpd.is_lookalike_background("n11939491_daisy.JPEG")            # flower
    assert not mpd.is_lookalike_background("n04554684_washer.JPEG")       # object
    assert not mpd.is_lookalike_background("img_003.jpg")                 # not ImageNet-named


# ------------------------------------------------------------------ outlines ---------------------

def test_alpha_polygons_rasterise_back_to_the_alpha_region_in_both_rasterisers():
    """PIL (ADE maps, areas) and pycocotools (Detectron2, COCO eval) both give back the region."""
    rng = np.random.default_rng(3)
    size = 96
    alpha = np.zeros((size, size), np.uint8)
    alpha[20:70, 10:60] = 255                       # block
    alpha[40:42, 60:90] = 200                       # 2-px arm
    alpha[75:90, 30:31] = 255                       # 1-px line (>= 3 points, area >= 4 px^2)
    alpha[5, 5] = 255                               # a single-pixel speck: dropped (< 4 px^2)
    alpha[22:30, 12:20] = 100                       # soft patch inside: below threshold, a hole
    inner = alpha[21:69, 11:59]                     # pin-holes strictly inside the block
    inner[rng.random(inner.shape) < 0.02] = 0
    polys = mpd.alpha_polygons(alpha)
    assert all(len(p) >= 3 for p in polys)
    expected = np.zeros_like(alpha, bool)
    expected[20:70, 10:60] = True                   # holes filled
    expected[40:42, 60:90] = True
    expected[75:90, 30:31] = True
    pil = rasterise(polys, (size, size))
    rles = mask_utils.frPyObjects([[c for pt in p for c in pt] for p in polys], size, size)
    coco = mask_utils.decode(mask_utils.merge(rles)).astype(bool)
    assert np.array_equal(pil, expected)
    assert np.array_equal(coco, expected)


# ------------------------------------------------------------------ the built set ---------------

def test_build_writes_both_layouts_and_the_description(built):
    desc = json.loads((built / "dataset.json").read_text())
    assert [c["name"] for c in desc["classes"]] == ["discs", "boxes", "stars"]
    assert [c["folder"] for c in desc["classes"]] == ["animals/discs", "food/boxes",
                                                      "plants/stars"]
    assert desc["splits"]["train"]["images"] == 12 and desc["splits"]["val"]["images"] == 6
    assert desc["stamps_left_out"]["duplicate"] == 1
    assert desc["backgrounds_left_out"] == 2
    ade = built / "ade/ADEChallengeData2016"
    assert len(list((ade / "images/training").glob("*.jpg"))) == 12
    assert len(list((ade / "annotations/validation").glob("*.png"))) == 6
    assert (ade / "classes.txt").read_text().split() == ["discs", "boxes", "stars"]
    assert len(list((built / "coco/images/train").glob("*.jpg"))) == 12
    assert not built.with_name("set.partial").exists()


def test_train_and_val_share_no_stamp_file_and_no_background(built):
    desc = json.loads((built / "dataset.json").read_text())
    pastes = json.loads((built / "pastes.json").read_text())
    declared = {s: {rel for c in desc["classes"] for rel in c["stamps"][s]}
                for s in ("train", "val")}
    assert not declared["train"] & declared["val"]
    used = {s: {rel for item in pastes[s].values() for rel in item["stamps"]}
            for s in ("train", "val")}
    assert used["train"] and used["val"]
    assert used["train"] <= declared["train"] and used["val"] <= declared["val"]
    bgs = {s: {item["background"] for item in pastes[s].values()} for s in ("train", "val")}
    assert not bgs["train"] & bgs["val"]
    assert not any(b.startswith("n0") for s in bgs for b in bgs[s])   # look-alikes left out
    # every pasted instance is annotated here (no occlusion below the COCO min area)
    for s in ("train", "val"):
        assert desc["splits"][s]["annotations"] == sum(len(i["stamps"]) for i in pastes[s].values())


def _coco_and_labels(built: Path, split: str):
    coco = COCO(str(built / f"coco/annotations/instances_{split}.json"))
    sub = {"train": "training", "val": "validation"}[split]
    for img_id in coco.getImgIds():
        info = coco.loadImgs(img_id)[0]
        labels = np.asarray(Image.open(
            built / f"ade/ADEChallengeData2016/annotations/{sub}/{Path(info['file_name']).stem}.png"))
        anns = sorted(coco.loadAnns(coco.getAnnIds(imgIds=img_id)), key=lambda a: a["id"])
        yield info, anns, labels, coco


@pytest.mark.parametrize("split", ["train", "val"])
def test_coco_masks_agree_with_ade_labels_and_boxes_hold_the_masks(built, split):
    checked = 0
    for info, anns, labels, coco in _coco_and_labels(built, split):
        assert labels.shape == (info["height"], info["width"])
        covered = np.zeros(labels.shape, bool)
        for ann in reversed(anns):                  # topmost first
            full = coco.annToMask(ann).astype(bool)
            visible = full & ~covered
            covered |= full
            assert visible.sum() == ann["area"] > 0
            assert (labels[visible] == ann["category_id"]).all()
            ys, xs = np.nonzero(visible)
            x, y, w, h = ann["bbox"]
            assert (x, y, x + w, y + h) == (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)
            checked += 1
        assert np.array_equal(labels > 0, covered)  # nothing labelled that no instance covers
    assert checked > 0


def test_later_pastes_occlude_earlier_ones(built):
    overlapping = 0
    for _info, anns, labels, coco in _coco_and_labels(built, "train"):
        full = [coco.annToMask(a).astype(bool) for a in anns]
        union = np.logical_or.reduce(full)
        assert sum(a["area"] for a in anns) == union.sum()   # visible areas tile the union
        for i, a in enumerate(anns[:-1]):
            later = np.logical_or.reduce(full[i + 1:])
            hidden = (full[i] & later).sum()
            if hidden:
                overlapping += 1
                assert a["area"] == full[i].sum() - hidden
                assert a["area"] >= 0.3 * full[i].sum() - 1      # min_visible kept
    assert overlapping > 0, "no occlusion in the test set: make the pastes larger"


def _digest(root: Path) -> dict:
    """sha256 of every file under ``root``, by relative path."""
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_seed_same_bytes_other_seed_other_images(tmp_path, stamp_root, backgrounds, built):
    again = tmp_path / "again"
    _build(again, stamp_root, backgrounds)
    assert _digest(again) == _digest(built)
    other = tmp_path / "other"
    _build(other, stamp_root, backgrounds, seed=1)
    a, b = _digest(other), _digest(built)
    assert a.keys() == b.keys()
    assert sum(a[k] != b[k] for k in a if k.endswith(".jpg")) > 0


def test_unlabelled_images_leave_train_and_val_unchanged_and_use_train_cutouts_only(
        tmp_path, stamp_root, backgrounds, built):
    """``--unlabelled N``: N more images from the train split's cut-outs and backgrounds, with no
    label anywhere; every labelled file is byte for byte the one of the build without them."""
    out = tmp_path / "with_unlabelled"
    desc = _build(out, stamp_root, backgrounds, num_unlabelled=5)
    with_extra, plain = _digest(out), _digest(built)
    labelled = {k for k in plain if k.startswith(("coco/", "ade/"))}
    assert labelled and all(with_extra[k] == plain[k] for k in labelled)
    assert sorted(k for k in with_extra if k.startswith("unlabelled/")) == \
        [f"unlabelled/unlabelled_{i:05d}.jpg" for i in range(5)]
    assert not any("unlabelled" in k for k in with_extra if k.startswith(("coco/", "ade/")))
    assert desc["unlabelled"]["images"] == 5
    pastes = json.loads((out / "pastes.json").read_text())
    val_bgs = {v["background"] for v in pastes["val"].values()}
    train_stamps = {s for c in desc["classes"] for s in c["stamps"]["train"]}
    for entry in pastes["unlabelled"].values():
        assert entry["background"] not in val_bgs
        assert set(entry["stamps"]) <= train_stamps
    with Image.open(out / "unlabelled" / "unlabelled_00000.jpg") as im:
        assert im.size == (64, 64)


def test_rebuild_replaces_an_earlier_build_but_refuses_a_foreign_folder(
        tmp_path, stamp_root, backgrounds):
    out = tmp_path / "set"
    _build(out, stamp_root, backgrounds, num_train=2, num_val=1)
    (out / "stale.txt").write_text("old")
    _build(out, stamp_root, backgrounds, num_train=3, num_val=1)
    assert not (out / "stale.txt").exists()
    assert len(list((out / "coco/images/train").glob("*.jpg"))) == 3
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "keep.txt").write_text("x")
    with pytest.raises(mpd.PasteDataError, match="not an earlier build"):
        _build(foreign, stamp_root, backgrounds)
    assert (foreign / "keep.txt").exists()


# ------------------------------------------------------------------ fetching / CLI ---------------

def _fake_deb(path: Path, members: dict) -> Path:
    """A minimal .deb: ar archive with debian-binary, control.tar.xz and data.tar.xz."""
    def tar_xz(files: dict) -> bytes:
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w:xz") as tar:
            for name, data in files.items():
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
        return buf.getvalue()

    def ar_member(name: str, data: bytes) -> bytes:
        header = f"{name:<16}{0:<12}{0:<6}{0:<6}{100644:<8}{len(data):<10}`\n".encode()
        return header + data + (b"\n" if len(data) % 2 else b"")

    body = (ar_member("debian-binary", b"2.0\n") + ar_member("control.tar.xz", tar_xz({}))
            + ar_member("data.tar.xz", tar_xz(members)))
    path.write_bytes(b"!<arch>\n" + body)
    return path


def test_extract_deb_keeps_only_stamp_images_and_flags(tmp_path):
    png = io.BytesIO()
    Image.new("RGBA", (4, 4)).save(png, format="PNG")
    base = "./usr/share/tuxpaint/stamps/animals/birds/"
    deb = _fake_deb(tmp_path / "tuxpaint-stamps-default_1.0_all.deb", {
        base + "crow.png": png.getvalue(), base + "crow.dat": b"nomirror\n",
        base + "crow.txt": b"A crow.", base + "crow.ogg": b"OggS",
        "./usr/share/doc/x/copyright": b"(c)"})
    dest = mpd.extract_deb(deb, tmp_path / "cache")
    files = sorted(p.relative_to(dest).as_posix() for p in dest.rglob("*") if p.is_file())
    assert files == ["SOURCE.txt", "animals/birds/crow.dat", "animals/birds/crow.png"]
    assert mpd.find_stamps_root(tmp_path / "cache") == dest
    assert mpd._package_file(dest) == deb.name


def test_failed_apt_download_says_how_to_fetch_by_hand(tmp_path, monkeypatch):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "apt-get"              # stands in for apt-get (download and update fail)
    fake.write_text("#!/bin/sh\necho 'E: Unable to locate package' >&2\nexit 100\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    with pytest.raises(mpd.PasteDataError) as err:
        mpd.resolve_stamps(None, None, tmp_path / "cache")
    msg = str(err.value)
    assert "Unable to locate package" in msg and "--stamps DIR" in msg and "--deb" in msg


def test_cli_errors_are_one_line_with_exit_status_2(tmp_path, stamp_root, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    rc = mpd.main(["--out", str(tmp_path / "o"), "--stamps", str(stamp_root),
                   "--backgrounds", str(empty)])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "no usable images" in err and str(empty) in err and "\n" not in err
    rc = mpd.main(["--out", str(tmp_path / "o"), "--stamps", str(empty)])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "--stamps" in err and "no PNG stamps" in err


def test_cli_builds_from_the_extraction_root(tmp_path, stamp_root, backgrounds):
    extraction_root = stamp_root.parents[3]         # the folder holding usr/share/tuxpaint/stamps
    rc = mpd.main(["--out", str(tmp_path / "o"), "--stamps", str(extraction_root),
                   "--backgrounds", str(backgrounds), "--train", "3", "--val", "2",
                   "--size", "48", "--per-image", "1-2", "--classes", "2", "--seed", "5"])
    assert rc == 0
    desc = json.loads((tmp_path / "o/dataset.json").read_text())
    assert [c["name"] for c in desc["classes"]] == ["discs", "boxes"]
    assert desc["size"] == 48 and desc["seed"] == 5 and desc["per_image"] == [1, 2]
    with Image.open(tmp_path / "o/coco/images/train/train_00000.jpg") as im:
        assert im.size == (48, 48)


def test_cli_smoke_run_with_generated_stamps(tmp_path, backgrounds):
    rc = mpd.main(["--out", str(tmp_path / "o"), "--generated-stamps", str(tmp_path / "stamps"),
                   "--backgrounds", str(backgrounds), "--train", "4", "--val", "2",
                   "--size", "64", "--min-instances", "3"])
    assert rc == 0
    desc = json.loads((tmp_path / "o/dataset.json").read_text())
    assert [c["name"] for c in desc["classes"]] == ["discs", "boxes", "stars"]
    assert desc["splits"]["train"]["annotations"] > 0 and desc["splits"]["val"]["annotations"] > 0


# ------------------------------------------------------------------ real stamps ------------------

@pytest.mark.slow
def test_real_tuxpaint_stamps_build(tmp_path, image_folder):
    root = mpd.find_stamps_root(mpd.default_cache_dir())
    if root is None:
        pytest.skip(f"real Tux Paint stamps not fetched into {mpd.default_cache_dir()}: run "
                    f"`python tools/make_paste_dataset.py --fetch-only` (or set "
                    f"MAE_TRANSFER_STAMPS)")
    kept, skipped = mpd.scan_stamps(root)
    assert len(kept) >= 200                          # about 270 photo cut-outs in the package
    assert all("cartoon" not in s.rel.split("/") and s.rel.split("/")[0] not in mpd.SKIP_TOP
               for s in kept)
    # image_folder may hold real ImageNet animal photos: keep them (the look-alike filter would
    # leave none of those 16)
    desc = _build(tmp_path / "real", root, image_folder, num_train=12, num_val=6, size=96,
                  num_classes=8, keep_lookalikes=True)
    names = [c["name"] for c in desc["classes"]]
    assert len(names) == 8 and {"mammals", "birds", "flowers"} <= set(names)
    for c in desc["classes"]:
        assert c["stamps"]["train"] and c["stamps"]["val"]
        assert not set(c["stamps"]["train"]) & set(c["stamps"]["val"])
    coco = COCO(str(tmp_path / "real/coco/annotations/instances_val.json"))
    assert len(coco.getAnnIds()) == desc["splits"]["val"]["annotations"] > 0
