"""Build a real-pixel instance set: photo cut-outs with alpha pasted onto real photos.

``../shared/data`` holds only unlabeled photos. To measure detection / segmentation transfer on
real pixels we paste photographic cut-outs (Tux Paint's stamp collection, Debian package
``tuxpaint-stamps-default``: animals, fruit, flowers, tools, ... cut out with an alpha channel)
onto the real ImageNet sample photos. The objects' pixels are real; only the layout is made, so
the labels are exact: each outline comes from the cut-out's alpha, and later pastes occlude
earlier ones.

    python tools/make_paste_dataset.py --out DIR [--backgrounds DIR] [--stamps DIR]
        [--train 200 --val 50 --size 160 --per-image 1-4 --scale 0.3-0.7 --classes 8 --seed 0]
        [--unlabelled N]

Writes ``DIR/coco`` (COCO instances json, polygons + boxes + visible areas), ``DIR/ade``
(``ADEChallengeData2016`` label PNGs, 0 = background), ``DIR/dataset.json`` (classes, which
stamp files went to which split, counts, settings) and ``DIR/pastes.json`` (per image: its
background photo and the stamps pasted, in order). Train and val share no cut-out and no
background photo. The same arguments give byte-identical files. ``--unlabelled N`` adds
``DIR/unlabelled/*.jpg``: more images made from the train split's cut-outs and backgrounds, with
no label written anywhere (in-domain data for MAE pretraining); train and val do not change.

Stamps: ``--stamps DIR`` (the ``stamps`` folder or any folder above ``usr/share/tuxpaint/stamps``),
else the cache ``$MAE_TRANSFER_STAMPS`` or ``~/.cache/mae-transfer/stamps``, filled on first use by
``apt-get download tuxpaint-stamps-default`` (no install; only the PNGs, their ``.dat`` flags and
``.svg`` twins are extracted, about 35 MB). ``--deb FILE`` extracts a ``.deb`` downloaded by hand. Which stamps count as
photos and how classes are formed is in ``scan_stamps`` / ``choose_classes`` and
docs/paste_dataset.md.
"""
from __future__ import annotations

import argparse
import io
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import zlib
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
from PIL import Image, ImageDraw


from mae_transfer.tools.annotated_sets import JPEG_QUALITY, AnnotatedSetWriter, Instance, rasterise
from mae_transfer.tools.image_inputs import data_root, is_image

log = logging.getLogger("mae_transfer.paste")

PACKAGE = "tuxpaint-stamps-default"
STAMPS_SUBDIR = Path("usr/share/tuxpaint/stamps")

# --- which stamps are photographs (see docs/paste_dataset.md) -----------------------------------
SKIP_TOP = ("symbols", "seasonal")          # letters, coins, holiday clip art (issue 6)
DRAWN_FOLDERS = ("town/roadsigns", "town/flags")  # sign / flag graphics, not photographs
FLAT_SHARE = 0.65          # drawn: >= 65% of side-by-side object pixels have the very same colour
TRANSLUCENT_SHARE = 0.20   # glass / glow / strings: > 20% of the opacity lies outside the outline
MIN_STAMP_SIDE = 40        # longer side of the alpha box; smaller ones would be blown up when pasted
DUPLICATE_DISTANCE = 4.0   # 16x16 thumbnails closer than this (mean abs, 0-255) are one photo:
                           # copies and mirror twins score <= 1.6, distinct photos >= 14
ALPHA_THRESHOLD = 127      # the outline is the alpha > 127 region

# --- ImageNet background classes that would hold unlabeled look-alikes of the stamp classes ------
# Ranges of WordNet ids (inclusive, string order = ImageNet class order): all animals (classes
# 0-397), fruit and vegetables (936-957), plants, flowers, fungi and the corn ear (984-998).
LOOKALIKE_WNID_RANGES = (("n01440764", "n02655020"), ("n07714571", "n07768694"),
                         ("n11879895", "n13133613"))
WNID_RE = re.compile(r"^(n\d{8})_")


class PasteDataError(RuntimeError):
    """Bad input (no stamps, no backgrounds, failed fetch): one line that says what to do."""


# ============================================================== fetching the stamp package ======

def default_cache_dir() -> Path:
    """``$MAE_TRANSFER_STAMPS``, else ``$XDG_CACHE_HOME`` (or ~/.cache) ``/mae-transfer/stamps``."""
    if os.environ.get("MAE_TRANSFER_STAMPS"):
        return Path(os.environ["MAE_TRANSFER_STAMPS"]).expanduser()
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "mae-transfer" / "stamps"


def find_stamps_root(folder: Path) -> Optional[Path]:
    """The Tux Paint ``stamps`` folder in or at ``folder`` (extraction root or the folder itself)."""
    folder = Path(folder)
    for cand in (folder / STAMPS_SUBDIR, folder):
        if cand.is_dir() and any(cand.rglob("*.png")):
            return cand
    return None


MANUAL_FETCH = (
    "fetch it by hand: `apt-get download {pkg}` (or download the .deb from "
    "https://packages.debian.org/{pkg}), then pass `--deb FILE.deb`, or extract it with "
    "`dpkg-deb -x FILE.deb DIR` and pass `--stamps DIR`").format(pkg=PACKAGE)


def _iter_deb_data(deb: Path):
    """Yield (name, bytes) of the ``ar`` members of a .deb (a .deb is an ar archive)."""
    with open(deb, "rb") as f:
        if f.read(8) != b"!<arch>\n":
            raise PasteDataError(f"{deb}: not a .deb (ar) archive; {MANUAL_FETCH}")
        while True:
            header = f.read(60)
            if len(header) < 60:
                return
            name = header[:16].decode().strip().rstrip("/")
            size = int(header[48:58].decode().strip())
            data = f.read(size)
            if size % 2:
                f.read(1)
            yield name, data


def extract_deb(deb: Path, dest: Path) -> Path:
    """Extract the stamp PNGs from ``deb`` into ``dest``, with their ``.dat`` flag files and
    ``.svg`` twins (a twin marks the PNG as a drawing); the sounds and texts are skipped.

    Python reads the ar container and the data tarball (xz/gz/bz2) itself, so this also works
    where ``dpkg-deb`` is absent; a zstd data member (newer Ubuntu) goes through ``dpkg-deb``.
    Extraction goes to a temporary folder renamed into place, so ``dest`` is never half-filled.
    """
    deb, dest = Path(deb), Path(dest)
    if not deb.is_file():
        raise PasteDataError(f"{deb}: no such .deb file; {MANUAL_FETCH}")
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".stamps-", dir=dest.parent))
    prefix = "./" + STAMPS_SUBDIR.as_posix() + "/"
    try:
        tar_bytes = None
        for name, data in _iter_deb_data(deb):
            if name.startswith("data.tar"):
                tar_bytes = (name, data)
        if tar_bytes is None:
            raise PasteDataError(f"{deb}: no data.tar member; {MANUAL_FETCH}")
        name, data = tar_bytes
        if name.endswith(".zst") or name.endswith(".zstd"):
            proc = subprocess.run(["dpkg-deb", "--fsys-tarfile", str(deb)], capture_output=True)
            if proc.returncode:
                raise PasteDataError(f"{deb}: zstd data needs dpkg-deb, which failed: "
                                     f"{proc.stderr.decode().strip()[:200]}")
            data = proc.stdout
        count = 0
        with tarfile.open(fileobj=io.BytesIO(data)) as tar:
            for member in tar:
                path = member.name if member.name.startswith("./") else "./" + member.name
                if (member.isfile() and path.startswith(prefix) and ".." not in path.split("/")
                        and path.endswith((".png", ".dat", ".svg"))):
                    rel = path[len(prefix):]
                    out = tmp / rel
                    out.parent.mkdir(parents=True, exist_ok=True)
                    out.write_bytes(tar.extractfile(member).read())
                    count += path.endswith(".png")
        if not count:
            raise PasteDataError(f"{deb}: holds no PNG under /{STAMPS_SUBDIR}; {MANUAL_FETCH}")
        (tmp / "SOURCE.txt").write_text(f"{deb.name}\n{count} PNG stamps\n")
        if dest.exists():
            shutil.rmtree(dest)
        tmp.rename(dest)
        log.info("extracted %d stamp PNGs from %s into %s", count, deb.name, dest)
        return dest
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def fetch_stamps(cache_dir: Path) -> Path:
    """Download the stamp package with ``apt-get download`` (no install) and extract it.

    If the download fails and we are root, the package lists may be empty (fresh container):
    ``apt-get update`` once, then retry. Any other failure raises a one-line error saying how to
    fetch by hand.
    """
    if shutil.which("apt-get") is None:
        raise PasteDataError(f"no stamps in {cache_dir} and no apt-get here; {MANUAL_FETCH}")
    with tempfile.TemporaryDirectory(prefix="tuxpaint-deb-") as tmp:
        def download():
            return subprocess.run(["apt-get", "download", PACKAGE], cwd=tmp,
                                  capture_output=True, text=True)
        log.info("downloading %s with apt-get (about 160 MB, no install)", PACKAGE)
        proc = download()
        if proc.returncode and hasattr(os, "geteuid") and os.geteuid() == 0:
            log.info("apt-get download failed (%s); running apt-get update once",
                     (proc.stderr.strip().splitlines() or ["?"])[-1])
            subprocess.run(["apt-get", "update"], capture_output=True, text=True)
            proc = download()
        debs = sorted(Path(tmp).glob(f"{PACKAGE}_*.deb"))
        if proc.returncode or not debs:
            last = (proc.stderr.strip().splitlines() or ["no .deb written"])[-1]
            raise PasteDataError(f"`apt-get download {PACKAGE}` failed ({last}); {MANUAL_FETCH}")
        return extract_deb(debs[0], cache_dir)


def resolve_stamps(stamps: Optional[Path], deb: Optional[Path], cache_dir: Path) -> Path:
    """The stamps folder: ``--stamps``, else ``--deb`` extracted into the cache, else the cache
    (fetched on first use)."""
    if stamps is not None:
        root = find_stamps_root(stamps)
        if root is None:
            raise PasteDataError(f"--stamps {stamps}: no PNG stamps in it or under "
                                 f"{STAMPS_SUBDIR}; {MANUAL_FETCH}")
        return root
    if deb is not None:
        extract_deb(deb, cache_dir)
    root = find_stamps_root(cache_dir)
    if root is None:
        fetch_stamps(cache_dir)
        root = find_stamps_root(cache_dir)
    if root is None:
        raise PasteDataError(f"{cache_dir}: no stamps after fetching; {MANUAL_FETCH}")
    return root


# ============================================================== which stamps, which classes =====

@dataclass
class Stamp:
    """One cut-out file: its path relative to the stamps root, class key, whether it may mirror."""

    rel: str
    key: str
    mirror: bool = True


def stamp_class_key(rel: Path) -> str:
    """Class of a stamp = its first two folders (``animals/birds``, ``food/fruit``); deeper
    folders merge into it (``animals/mammals/cats`` -> ``animals/mammals``)."""
    parts = rel.parts[:-1]
    return "/".join(parts[:2])


def load_cutout(path: Path) -> np.ndarray:
    """RGBA uint8 array of a stamp, cropped to the box of its non-transparent pixels."""
    with Image.open(path) as im:
        rgba = np.asarray(im.convert("RGBA"))
    ys, xs = np.nonzero(rgba[..., 3] > 0)
    if ys.size == 0:
        return rgba[:0, :0]
    return rgba[ys.min():ys.max() + 1, xs.min():xs.max() + 1]


def drawn_or_unusable(rgba: np.ndarray) -> Optional[str]:
    """Why a cut-out is not a usable photograph (None if it is): too small, translucent, flat."""
    alpha = rgba[..., 3]
    if max(alpha.shape, default=0) < MIN_STAMP_SIDE:
        return "small"
    solid = alpha > ALPHA_THRESHOLD
    weight = alpha.astype(np.float64)
    if not solid.any() or weight[~solid].sum() > TRANSLUCENT_SHARE * weight.sum():
        return "translucent"
    # Flat fills: a drawing repeats one exact colour across neighbours; a photo has noise and
    # texture. Kept photo stamps score 0-59% (the top: a crescent moon's black side); the drawings
    # this test catches (those the folder / svg rules miss) score 69-100%.
    rgb = rgba[..., :3].astype(np.int16)
    pairs = solid[:, 1:] & solid[:, :-1]
    same = (rgb[:, 1:] == rgb[:, :-1]).all(-1)[pairs]
    if same.size and same.mean() >= FLAT_SHARE:
        return "flat-colour"
    return None


def cutout_signature(rgba: np.ndarray) -> np.ndarray:
    """16x16 premultiplied RGBA thumbnail (float): equal for a stamp and its re-saved copies."""
    a = rgba[..., 3:4].astype(np.float32) / 255.0
    pm = np.concatenate([rgba[..., :3] * a, a * 255.0], -1).round().astype(np.uint8)
    return np.asarray(Image.fromarray(pm, "RGBA").resize((16, 16), Image.BILINEAR), np.float32)


def scan_stamps(root: Path) -> Tuple[List[Stamp], Dict[str, str]]:
    """Photographic stamps under ``root`` and, for every other PNG, why it was left out.

    Rules, in order: top folders ``symbols/`` and ``seasonal/``; any ``cartoon`` folder (Tux
    Paint's own marker for drawn stamps); a same-named ``.svg`` beside it (raster fallback of a
    vector drawing); the drawn sign/flag folders; files directly in a category folder (a grab-bag,
    not a class); then the pixel tests of ``drawn_or_unusable``; last, copies of a stamp already
    kept, mirrored or not (``*_mirror.png``, the same photo in two folders), so that every kept
    file is a distinct object instance and splitting by file never leaks an instance.
    A ``.dat`` file that says ``nomirror`` forbids horizontal flips (text, handedness).
    """
    root = Path(root)
    kept, skipped, signatures = [], {}, []
    for path in sorted(root.rglob("*.png")):
        rel = path.relative_to(root)
        rel_s = rel.as_posix()
        key = stamp_class_key(rel)
        if rel.parts[0] in SKIP_TOP:
            reason = rel.parts[0]
        elif "cartoon" in rel.parts[:-1]:
            reason = "cartoon"
        elif path.with_suffix(".svg").exists():
            reason = "svg-drawing"
        elif any(key == d or key.startswith(d + "/") for d in DRAWN_FOLDERS):
            reason = "drawn-folder"
        elif len(rel.parts) < 3:
            reason = "loose"
        else:
            cutout = load_cutout(path)
            reason = drawn_or_unusable(cutout)
            if reason is None:
                sig = cutout_signature(cutout)
                if any(min(np.abs(sig - o).mean(), np.abs(sig[:, ::-1] - o).mean())
                       < DUPLICATE_DISTANCE for o in signatures):
                    reason = "duplicate"
                else:
                    signatures.append(sig)
        if reason:
            skipped[rel_s] = reason
            continue
        dat = path.with_suffix(".dat")
        mirror = not (dat.exists() and "nomirror" in dat.read_text(errors="ignore").split())
        kept.append(Stamp(rel_s, key, mirror))
    return kept, skipped


def class_name(key: str, keys: Sequence[str]) -> str:
    """Short class name: the last folder (``birds``), or the whole key joined by ``_`` when two
    chosen keys share a last folder."""
    last = key.split("/")[-1]
    clash = sum(k.split("/")[-1] == last for k in keys) > 1
    return key.replace("/", "_") if clash else last


def choose_classes(stamps: Sequence[Stamp], num_classes: int, min_instances: int) -> List[str]:
    """The ``num_classes`` class keys with the most stamps (ties by name), each with at least
    ``min_instances`` (so train and val both get whole cut-outs); ordered by name."""
    counts = Counter(s.key for s in stamps)
    eligible = sorted((k for k, n in counts.items() if n >= min_instances),
                      key=lambda k: (-counts[k], k))
    if not eligible:
        raise PasteDataError(f"no class has {min_instances} or more photo stamps "
                             f"(counts: {dict(counts)}); lower --min-instances")
    return sorted(eligible[:num_classes])


def split_stamps(stamps: Sequence[Stamp], classes: Sequence[str], val_fraction: float,
                 seed: int) -> Dict[str, Dict[str, List[Stamp]]]:
    """Per class, shuffle its stamp files (seeded by ``seed`` and the class key, so one class's
    split does not move when another class is added) and give ``val_fraction`` of them (at least
    one, never all) to val. Returns ``{split: {key: [Stamp, ...]}}``: no file is in both."""
    out: Dict[str, Dict[str, List[Stamp]]] = {"train": {}, "val": {}}
    for key in classes:
        members = sorted((s for s in stamps if s.key == key), key=lambda s: s.rel)
        rng = np.random.default_rng([seed, zlib.crc32(key.encode())])
        order = rng.permutation(len(members))
        n_val = min(len(members) - 1, max(1, round(len(members) * val_fraction)))
        out["val"][key] = sorted((members[i] for i in order[:n_val]), key=lambda s: s.rel)
        out["train"][key] = sorted((members[i] for i in order[n_val:]), key=lambda s: s.rel)
    return out


# ============================================================== backgrounds ======================

def is_lookalike_background(name: str) -> bool:
    """True for ImageNet photos of animals, fruit/vegetables and plants/fungi, which would show
    unlabeled objects of the stamp classes (file names start with the WordNet id)."""
    m = WNID_RE.match(name)
    return bool(m) and any(lo <= m.group(1) <= hi for lo, hi in LOOKALIKE_WNID_RANGES)


def list_backgrounds(folder: Path, keep_lookalikes: bool = False) -> Tuple[List[Path], int]:
    """Background photos in ``folder`` (recursive, sorted) and how many look-alikes were left out."""
    folder = Path(folder)
    if not folder.is_dir():
        raise PasteDataError(f"--backgrounds {folder}: no such folder (pass a folder of photos, "
                             f"or set MAE_TRANSFER_DATA to the folder holding imagenet-sample/)")
    files = sorted(p for p in folder.rglob("*") if is_image(p))
    kept = [p for p in files if keep_lookalikes or not is_lookalike_background(p.name)]
    if not kept:
        raise PasteDataError(f"--backgrounds {folder}: no usable images "
                             f"({len(files)} found, {len(files) - len(kept)} look-alikes left out)")
    return kept, len(files) - len(kept)


def split_backgrounds(files: Sequence[Path], counts: Dict[str, int],
                      seed: int) -> Dict[str, List[Path]]:
    """Disjoint background lists per split (shuffled by ``seed``), sized in proportion to the
    image counts; a split with more images than photos reuses them with other crops."""
    if len(files) < 2:
        raise PasteDataError(f"need at least 2 background photos (train and val use different "
                             f"ones), found {len(files)}")
    order = [files[i] for i in np.random.default_rng([seed, 7]).permutation(len(files))]
    n_val = min(len(order) - 1, max(1, round(len(order) * counts["val"] / sum(counts.values()))))
    return {"train": order[n_val:], "val": order[:n_val]}


def crop_background(path: Path, size: int, rng: np.random.Generator) -> np.ndarray:
    """Random square crop (70-100% of the shorter side) resized to ``size``; float32 RGB."""
    try:
        with Image.open(path) as im:
            im = im.convert("RGB")
    except Exception as exc:  # noqa: BLE001 - any decoder error is a bad file
        raise PasteDataError(f"{path}: cannot read background image ({exc})") from exc
    w, h = im.size
    side = max(1, int(round(min(w, h) * rng.uniform(0.7, 1.0))))
    x0 = int(rng.integers(0, w - side + 1))
    y0 = int(rng.integers(0, h - side + 1))
    im = im.crop((x0, y0, x0 + side, y0 + side)).resize((size, size), Image.BICUBIC)
    return np.asarray(im, dtype=np.float32)


# ============================================================== pasting ==========================

@dataclass
class PasteSettings:
    size: int = 160
    per_image: Tuple[int, int] = (1, 4)
    scale: Tuple[float, float] = (0.3, 0.7)  # longer side of a cut-out / image side
    min_visible: float = 0.3                 # an earlier paste keeps at least this much visible
    tries: int = 10                          # placements tried per instance before giving up
    min_polygon_area: float = 4.0            # contour specks smaller than this (px^2) are dropped


def alpha_polygons(alpha: np.ndarray, min_area: float = 4.0) -> List[List[Tuple[float, float]]]:
    """Outer outlines of the ``alpha > 127`` region as polygons (x, y), >= 3 points each.

    The two rasterisers downstream disagree on a polygon through pixel centres: PIL (our ADE
    label maps and COCO areas) fills boundary pixels, pycocotools (Detectron2, COCO eval) drops
    the right/bottom ones, a 1-px rim that costs thin objects a third of their IoU. So the region
    is traced at twice the resolution (OpenCV border following; at most a quarter-pixel
    simplification): the outline then runs a quarter pixel inside the boundary pixels' edges and
    both rasterisers give back exactly the region, holes filled (COCO polygons cannot hold them).
    Outlines under ``min_area`` px^2 (specks of stray alpha) are dropped.
    """
    import cv2
    solid = (alpha > ALPHA_THRESHOLD).astype(np.uint8)
    double = np.pad(np.kron(solid, np.ones((2, 2), np.uint8)), 1)
    contours, _ = cv2.findContours(double, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    polys = []
    for c in contours:
        c = cv2.approxPolyDP(c, 0.5, True)
        if len(c) >= 3 and cv2.contourArea(c) >= 4 * min_area:
            # padded double-resolution pixel centre u -> original coordinate (u - 1 + 0.5) / 2
            polys.append([((x - 0.5) / 2, (y - 0.5) / 2) for x, y in c[:, 0, :].tolist()])
    return polys


def place_cutout(cutout: np.ndarray, settings: PasteSettings, rng: np.random.Generator,
                 mirror_ok: bool) -> Tuple[np.ndarray, int, int]:
    """Scale (longer side uniform in ``settings.scale`` x image size), maybe mirror, and pick a
    position that keeps the whole cut-out inside the image. Returns (RGBA, x0, y0)."""
    h, w = cutout.shape[:2]
    target = rng.uniform(*settings.scale) * settings.size
    f = target / max(h, w)
    nw, nh = max(1, min(settings.size, round(w * f))), max(1, min(settings.size, round(h * f)))
    im = Image.fromarray(cutout, "RGBA").resize((nw, nh), Image.BICUBIC)  # premultiplied resample
    if mirror_ok and rng.random() < 0.5:
        im = im.transpose(Image.FLIP_LEFT_RIGHT)
    x0 = int(rng.integers(0, settings.size - nw + 1))
    y0 = int(rng.integers(0, settings.size - nh + 1))
    return np.asarray(im), x0, y0


def compose_image(background: np.ndarray, picks: Sequence[Tuple[int, Stamp]],
                  cutouts: Dict[str, np.ndarray], settings: PasteSettings,
                  rng: np.random.Generator) -> Tuple[Image.Image, List[Instance], List[Stamp]]:
    """Paste ``picks`` (class id, stamp) in order onto ``background``; later ones on top.
    Returns the image, the instances and the stamps they came from (both in paste order).

    A placement is retried when it would leave an earlier instance less than
    ``settings.min_visible`` of its own area, or when its outline is empty; after
    ``settings.tries`` failures the pick is skipped. Pixels are alpha-blended; labels are the
    alpha outlines, so ``visible_masks`` of the instances is what the image shows.
    """
    size = settings.size
    canvas = background.copy()
    instances: List[Instance] = []
    used: List[Stamp] = []
    visible: List[np.ndarray] = []   # current visible mask of each pasted instance
    areas: List[int] = []            # its area when it was pasted
    for cat_id, stamp in picks:
        for _ in range(settings.tries):
            rgba, x0, y0 = place_cutout(cutouts[stamp.rel], settings, rng, stamp.mirror)
            h, w = rgba.shape[:2]
            alpha = np.zeros((size, size), dtype=np.uint8)
            alpha[y0:y0 + h, x0:x0 + w] = rgba[..., 3]
            polys = alpha_polygons(alpha, settings.min_polygon_area)
            if not polys:
                continue
            mask = rasterise(polys, (size, size))
            if all((m & ~mask).sum() >= settings.min_visible * a for m, a in zip(visible, areas)):
                break
        else:
            continue
        a = rgba[..., 3:4].astype(np.float32) / 255.0
        region = canvas[y0:y0 + h, x0:x0 + w]
        canvas[y0:y0 + h, x0:x0 + w] = region * (1 - a) + rgba[..., :3].astype(np.float32) * a
        instances.append(Instance(cat_id, polys))
        used.append(stamp)
        visible = [m & ~mask for m in visible] + [mask]
        areas.append(int(mask.sum()))
    image = Image.fromarray(np.clip(np.rint(canvas), 0, 255).astype(np.uint8))
    return image, instances, used


# ============================================================== generated stand-in stamps =======

GENERATED_CLASSES = {"animals/discs": (200, 60, 50), "food/boxes": (60, 170, 80),
                     "plants/stars": (70, 90, 210)}


def generated_cutout(kind: str, width: int, height: int, colour, rng: np.random.Generator
                     ) -> Image.Image:
    """A stand-in cut-out: a disc, a notched box or a thin-armed star with an anti-aliased alpha
    edge, filled with ``colour`` plus per-pixel noise (so it passes the photo tests)."""
    w4, h4 = width * 4, height * 4
    canvas = Image.new("L", (w4, h4), 0)
    draw = ImageDraw.Draw(canvas)
    if kind == "discs":
        draw.ellipse([8, 8, w4 - 8, h4 - 8], fill=255)
    elif kind == "boxes":
        draw.rectangle([8, 8, w4 - 8, h4 - 8], fill=255)
        draw.rectangle([w4 // 2, 0, w4, h4 // 2], fill=0)
    else:
        cx, cy, r = w4 / 2, h4 / 2, min(w4, h4) / 2 - 8
        draw.polygon([(cx + r * (1 if k % 2 == 0 else 0.35) * np.cos(a),
                       cy + r * (1 if k % 2 == 0 else 0.35) * np.sin(a))
                      for k, a in enumerate(np.linspace(0, 2 * np.pi, 11)[:-1])], fill=255)
    alpha = np.asarray(canvas.resize((width, height), Image.BILINEAR))
    rgb = np.clip(np.asarray(colour, np.float64) + rng.normal(0, 25, (height, width, 3)), 0, 255)
    return Image.fromarray(np.dstack([rgb.astype(np.uint8), alpha]), "RGBA")


def write_generated_stamps(root: Path, per_class: Sequence[int] = (5, 4, 3), seed: int = 0) -> Path:
    """Stand-in stamps in Tux Paint's layout (``GENERATED_CLASSES``; each file its own colour, so
    none is a duplicate), for smoke runs and CI where the package cannot be fetched. Not real
    pixels: never use them for the measured end-to-end result."""
    rng = np.random.default_rng(seed)
    root = Path(root)
    for (folder, colour), n in zip(GENERATED_CLASSES.items(), per_class):
        kind = folder.split("/")[-1]
        (root / folder).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            w, h = int(rng.integers(70, 110)), int(rng.integers(70, 110))
            generated_cutout(kind, w, h, np.asarray(colour) + 25 * i, rng).save(
                root / folder / f"{kind}{i}.png")
    return root


# ============================================================== the builder ======================

@dataclass
class BuildConfig:
    out: Path
    backgrounds: Path
    stamps_root: Path
    num_train: int = 200
    num_val: int = 50
    #: extra train-split images written without labels (``DIR/unlabelled/``): in-domain data for
    #: MAE pretraining. Drawn after train and val with their own seeds, so those two splits are
    #: the same files with or without them.
    num_unlabelled: int = 0
    num_classes: int = 8
    min_instances: int = 4
    val_fraction: float = 0.25
    seed: int = 0
    keep_lookalikes: bool = False
    settings: PasteSettings = field(default_factory=PasteSettings)


def build(cfg: BuildConfig) -> dict:
    """Build the set into ``cfg.out`` (written to ``<out>.partial`` then renamed); returns the
    dataset.json description."""
    t0 = time.time()
    out = Path(cfg.out)
    if out.exists() and not (out.is_dir() and (not any(out.iterdir())
                                               or (out / "dataset.json").is_file())):
        raise PasteDataError(f"--out {out}: exists and is not an earlier build of this script "
                             f"(no dataset.json); give a new or empty folder")
    counts = {"train": cfg.num_train, "val": cfg.num_val}
    bg_files, bg_left_out = list_backgrounds(cfg.backgrounds, cfg.keep_lookalikes)
    bg_split = split_backgrounds(bg_files, counts, cfg.seed)
    stamps, skipped = scan_stamps(cfg.stamps_root)
    log.info("%d photo stamps in %d folders; %d left out (%s)", len(stamps),
             len({s.key for s in stamps}), len(skipped), dict(Counter(skipped.values())))
    keys = choose_classes(stamps, cfg.num_classes, cfg.min_instances)
    names = [class_name(k, keys) for k in keys]
    by_split = split_stamps(stamps, keys, cfg.val_fraction, cfg.seed)
    log.info("classes: %s", ", ".join(f"{n} ({len(by_split['train'][k])}+"
                                       f"{len(by_split['val'][k])})" for n, k in zip(names, keys)))

    cutouts = {s.rel: load_cutout(cfg.stamps_root / s.rel)
               for split in by_split.values() for group in split.values() for s in group}
    writer = AnnotatedSetWriter(names)
    pasted = {split: Counter() for split in counts}
    provenance: Dict[str, Dict[str, dict]] = {split: {} for split in counts}
    lo, hi = cfg.settings.per_image

    def record(bg_path: Path, used: Sequence[Stamp]) -> dict:
        """pastes.json entry of one image: its background photo and its stamps in paste order."""
        return {"background": bg_path.relative_to(cfg.backgrounds).as_posix(),
                "stamps": [st.rel for st in used]}

    def compose(split_idx: int, i: int, pool, bgs):
        rng = np.random.default_rng([cfg.seed, split_idx, i])
        bg_path = bgs[i % len(bgs)]
        background = crop_background(bg_path, cfg.settings.size, rng)
        picks = []
        for _ in range(int(rng.integers(lo, hi + 1))):
            c = int(rng.integers(len(keys)))
            group = pool[keys[c]]
            picks.append((c + 1, group[int(rng.integers(len(group)))]))
        return (bg_path, *compose_image(background, picks, cutouts, cfg.settings, rng))

    for split_idx, (split, n_images) in enumerate(counts.items()):
        pool, bgs = by_split[split], bg_split[split]
        for i in range(n_images):
            bg_path, image, instances, used = compose(split_idx, i, pool, bgs)
            pasted[split].update(names[inst.category_id - 1] for inst in instances)
            name = f"{split}_{i:05d}.jpg"
            writer.add(split, name, image, instances)
            provenance[split][name] = record(bg_path, used)
            if (i + 1) % 100 == 0 or i + 1 == n_images:
                log.info("%s: %d/%d images composed", split, i + 1, n_images)

    tmp = out.with_name(out.name + ".partial")
    if tmp.exists():
        shutil.rmtree(tmp)
    if cfg.num_unlabelled:
        # the train split's cut-outs and backgrounds, other layouts; only the pixels are kept
        (tmp / "unlabelled").mkdir(parents=True)
        for i in range(cfg.num_unlabelled):
            bg_path, image, _, used = compose(len(counts), i, by_split["train"], bg_split["train"])
            name = f"unlabelled_{i:05d}.jpg"
            image.save(tmp / "unlabelled" / name, quality=JPEG_QUALITY)
            provenance.setdefault("unlabelled", {})[name] = record(bg_path, used)
            if (i + 1) % 500 == 0 or i + 1 == cfg.num_unlabelled:
                log.info("unlabelled: %d/%d images composed", i + 1, cfg.num_unlabelled)
    coco = writer.write_coco(tmp / "coco")
    writer.write_ade(tmp / "ade")
    annotated = {split: Counter() for split in counts}
    for split, path in coco.items():
        for ann in json.loads(path.read_text())["annotations"]:
            annotated[split][names[ann["category_id"] - 1]] += 1
    description = {
        "source": {"package": PACKAGE, "stamps_root": str(cfg.stamps_root),
                   "package_file": _package_file(cfg.stamps_root),
                   "backgrounds": str(cfg.backgrounds)},
        "seed": cfg.seed, "size": cfg.settings.size, "per_image": list(cfg.settings.per_image),
        "scale": list(cfg.settings.scale), "min_visible": cfg.settings.min_visible,
        "val_fraction": cfg.val_fraction, "min_instances": cfg.min_instances,
        "classes": [{"id": i + 1, "name": n, "folder": k,
                     "stamps": {s: [st.rel for st in by_split[s][k]] for s in counts}}
                    for i, (n, k) in enumerate(zip(names, keys))],
        "splits": {s: {"images": counts[s], "pasted": sum(pasted[s].values()),
                       "annotations": sum(annotated[s].values()),
                       "annotations_per_class": {n: annotated[s][n] for n in names},
                       "backgrounds": len(bg_split[s])} for s in counts},
        "unlabelled": {"images": cfg.num_unlabelled, "folder": "unlabelled",
                       "from": "train cut-outs and backgrounds, labels not written"},
        "backgrounds_left_out": bg_left_out,
        "stamps_left_out": dict(sorted(Counter(skipped.values()).items())),
        "photo_stamps_per_folder": dict(sorted(Counter(s.key for s in stamps).items())),
        "layouts": {"coco": "coco", "ade": "ade/ADEChallengeData2016",
                    "pastes": "pastes.json (per image: background photo, stamps in paste order)"},
    }
    (tmp / "dataset.json").write_text(json.dumps(description, indent=1) + "\n")
    (tmp / "pastes.json").write_text(json.dumps(provenance, indent=0) + "\n")
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)
    log.info("wrote %s in %.1f s: %s", out, time.time() - t0,
             ", ".join(f"{s} {counts[s]} images / {sum(annotated[s].values())} instances"
                       for s in counts))
    return description


def _package_file(stamps_root: Path) -> Optional[str]:
    """The .deb the stamps came from, as recorded by ``extract_deb`` (None for hand-made folders)."""
    source = Path(stamps_root) / "SOURCE.txt"
    return source.read_text().splitlines()[0] if source.exists() else None


# ============================================================== CLI ==============================

def _range(text: str, kind=int):
    """'1-4' -> (1, 4); '3' -> (3, 3)."""
    parts = text.split("-") if kind is int else text.split("-", 1)
    try:
        lo, hi = (kind(parts[0]), kind(parts[-1]))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected N or LO-HI, got {text!r}") from None
    if lo > hi or lo <= 0:
        raise argparse.ArgumentTypeError(f"expected 0 < LO <= HI, got {text!r}")
    return lo, hi


def default_backgrounds() -> Path:
    """``$MAE_TRANSFER_DATA/imagenet-sample``, else ``<repo>/../shared/data/imagenet-sample``."""
    return data_root() / "imagenet-sample"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--out", type=Path, default=None,
                    help="output folder (an earlier build there is replaced); required to build")
    ap.add_argument("--backgrounds", type=Path, default=default_backgrounds(),
                    help="folder of real photos to paste onto")
    ap.add_argument("--stamps", type=Path, default=None,
                    help="Tux Paint stamps folder (or a folder above usr/share/tuxpaint/stamps)")
    ap.add_argument("--generated-stamps", type=Path, default=None, metavar="DIR",
                    help="write stand-in shape cut-outs into DIR and use them (smoke runs / CI "
                         "without the package; not real pixels)")
    ap.add_argument("--deb", type=Path, default=None,
                    help=f"a downloaded {PACKAGE} .deb to extract into the cache")
    ap.add_argument("--cache", type=Path, default=default_cache_dir(),
                    help="where fetched stamps are kept ($MAE_TRANSFER_STAMPS)")
    ap.add_argument("--fetch-only", action="store_true",
                    help="fetch/extract the stamps into the cache and stop")
    ap.add_argument("--train", type=int, default=200, help="train images")
    ap.add_argument("--val", type=int, default=50, help="val images")
    ap.add_argument("--unlabelled", type=int, default=0,
                    help="extra images from the train split's cut-outs, written without labels "
                         "to DIR/unlabelled (in-domain pretraining data); train and val stay "
                         "the same files")
    ap.add_argument("--size", type=int, default=160, help="image side (square images)")
    ap.add_argument("--per-image", type=_range, default=(1, 4), help="cut-outs per image: N or LO-HI")
    ap.add_argument("--scale", type=lambda t: _range(t, float), default=(0.3, 0.7),
                    help="longer side of a cut-out as a fraction of the image side: LO-HI")
    ap.add_argument("--classes", type=int, default=8,
                    help="keep the N folders with the most photo stamps")
    ap.add_argument("--min-instances", type=int, default=4,
                    help="a class needs at least this many stamp files")
    ap.add_argument("--val-fraction", type=float, default=0.25,
                    help="share of each class's stamp files held out for val")
    ap.add_argument("--keep-lookalike-backgrounds", action="store_true",
                    help="also use ImageNet animal / fruit / plant photos as backgrounds")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    try:
        if args.out is None and not args.fetch_only:
            raise PasteDataError("--out DIR is required (or --fetch-only)")
        if args.train < 1 or args.val < 1 or args.size < 16 or args.classes < 1:
            raise PasteDataError("--train, --val, --classes must be >= 1 and --size >= 16")
        if args.unlabelled < 0:
            raise PasteDataError("--unlabelled must be >= 0")
        if args.scale[1] > 1:
            raise PasteDataError(f"--scale: the upper bound is a fraction of the image side "
                                 f"(<= 1), got {args.scale[1]}")
        if not 0 < args.val_fraction < 1 or args.min_instances < 2:
            raise PasteDataError("--val-fraction must be in (0, 1), --min-instances >= 2")
        if args.generated_stamps is not None:
            args.stamps = write_generated_stamps(args.generated_stamps, seed=args.seed)
        root = resolve_stamps(args.stamps, args.deb, args.cache)
        if args.fetch_only:
            print(root)
            return 0
        settings = PasteSettings(size=args.size, per_image=args.per_image, scale=args.scale)
        build(BuildConfig(out=args.out, backgrounds=args.backgrounds, stamps_root=root,
                          num_train=args.train, num_val=args.val,
                          num_unlabelled=args.unlabelled, num_classes=args.classes,
                          min_instances=args.min_instances, val_fraction=args.val_fraction,
                          seed=args.seed, keep_lookalikes=args.keep_lookalike_backgrounds,
                          settings=settings))
    except PasteDataError as exc:
        print(f"make_paste_dataset: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
