"""Frozen-feature probe: how much class information does an encoder carry about unseen objects?

    python tools/probe_instances.py --coco runs/e2e/paste/coco --arch vit_mini_patch16 --size 128 \\
        --checkpoint random --checkpoint runs/e2e/mae/encoder.safetensors [--out probe.json]

Why: a fine-tune mixes the encoder's contribution with what the heads learn on their own, and
with seed noise. This probe isolates the encoder. Every annotated instance of a COCO set is
described by the encoder's token maps (every block, concatenated), averaged over the instance's
mask; a multinomial logistic regression (and, as a check, a nearest class mean) is fitted on the
train split's instances and scored on the val split's. On the pasted real-photo set the val
cut-outs never occur in train, so the accuracy measures what transfers to new objects. The
standard error ``sqrt(p (1 - p) / n)`` tells whether two encoders differ by more than chance.

``random`` (the default checkpoint) is the ViT at its random initialisation (``--seed``), the
reference any pretraining has to beat. Images are resized to ``--size`` squares and normalised
as in pretraining (ImageNet mean / std). The set must follow the layout ``--coco DIR`` of
``tools/make_paste_dataset.py`` / ``tools/synthetic_data.py``: ``DIR/annotations/instances_
{train,val}.json`` and ``DIR/images/{train,val}/``.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image


from mae_transfer.backbones import build_vit, load_pretrained
from mae_transfer.pretrain.data import normalize_batch
from mae_transfer.tools.atomic import atomic_write

#: L2 penalty of the logistic regression (on standardised features).
L2 = 1e-2


def instance_masks(coco: Path, split: str):
    """Yield ``(image path, [(category index from 0, (H, W) float mask), ...])`` per image."""
    from pycocotools import mask as mask_util

    data = json.loads((coco / "annotations" / f"instances_{split}.json").read_text())
    cat_index = {c["id"]: i for i, c in enumerate(sorted(data["categories"], key=lambda c: c["id"]))}
    by_image: Dict[int, list] = {}
    for ann in data["annotations"]:
        by_image.setdefault(ann["image_id"], []).append(ann)
    for im in data["images"]:
        masks = []
        for ann in by_image.get(im["id"], []):
            rles = mask_util.frPyObjects(ann["segmentation"], im["height"], im["width"])
            m = mask_util.decode(mask_util.merge(rles) if isinstance(rles, list) else rles)
            masks.append((cat_index[ann["category_id"]], torch.from_numpy(m.astype(np.float32))))
        yield coco / "images" / split / im["file_name"], masks


def load_image(path: Path, size: int) -> torch.Tensor:
    """``(1, 3, size, size)`` batch normalised like the pretraining input (``normalize_batch``).

    The whole image is resized to the square (no crop), so the instance masks, pooled over the
    whole image, stay aligned with the token grid."""
    with Image.open(path) as im:
        rgb = np.asarray(im.convert("RGB").resize((size, size), Image.BICUBIC))
    return normalize_batch(torch.from_numpy(rgb)[None], torch.device("cpu"))


def pool_over_mask(maps: Sequence[torch.Tensor], mask: torch.Tensor) -> torch.Tensor:
    """Concatenated mask-weighted means of ``(D, h, w)`` maps; the mask is area-resampled to the
    token grid, so a token counts by the share of its pixels inside the instance."""
    pooled = []
    for f in maps:
        weight = F.adaptive_avg_pool2d(mask[None, None], f.shape[-2:])[0, 0]
        pooled.append((f * weight).sum((1, 2)) / weight.sum().clamp_min(1e-6))
    return torch.cat(pooled)


@torch.no_grad()
def instance_features(model, coco: Path, split: str, size: int) -> Tuple[torch.Tensor, torch.Tensor]:
    feats, labels = [], []
    blocks = list(range(model.depth))
    for path, masks in instance_masks(coco, split):
        if not masks:
            continue
        maps = [m[0] for m in model.forward_maps(load_image(path, size), out_indices=blocks)]
        for label, mask in masks:
            feats.append(pool_over_mask(maps, mask))
            labels.append(label)
    if not feats:
        raise ValueError(f"no annotated instance in the {split} split of {coco}")
    return torch.stack(feats), torch.tensor(labels)


def fit_logistic(x: torch.Tensor, y: torch.Tensor, num_classes: int, l2: float = L2
                 ) -> torch.nn.Linear:
    """Multinomial logistic regression by L-BFGS (deterministic: zero init)."""
    lin = torch.nn.Linear(x.shape[1], num_classes)
    torch.nn.init.zeros_(lin.weight)
    torch.nn.init.zeros_(lin.bias)
    opt = torch.optim.LBFGS(lin.parameters(), max_iter=300, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(lin(x), y) + l2 * lin.weight.pow(2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return lin


def probe(train: Tuple[torch.Tensor, torch.Tensor], val: Tuple[torch.Tensor, torch.Tensor],
          num_classes: int) -> Dict[str, float]:
    """Val accuracy (%) of a logistic regression and of the nearest class mean, both fitted on
    ``train`` features standardised with train statistics, and the standard error of each."""
    (xt, yt), (xv, yv) = train, val
    mean, std = xt.mean(0), xt.std(0) + 1e-6
    xt, xv = (xt - mean) / std, (xv - mean) / std
    with torch.no_grad():
        logistic = (fit_logistic(xt, yt, num_classes)(xv).argmax(1) == yv).float().mean().item()
        present = [c for c in range(num_classes) if (yt == c).any()]
        centres = torch.stack([xt[yt == c].mean(0) for c in present])
        nearest = torch.tensor(present)[torch.cdist(xv, centres).argmin(1)]
        centroid = (nearest == yv).float().mean().item()
    n = len(yv)
    return {"logistic_acc": 100 * logistic, "logistic_se": 100 * math.sqrt(logistic * (1 - logistic) / n),
            "centroid_acc": 100 * centroid, "centroid_se": 100 * math.sqrt(centroid * (1 - centroid) / n),
            "chance_acc": 100 * max(np.bincount(yv.numpy(), minlength=num_classes)) / n,
            "train_instances": len(yt), "val_instances": n}


def run(coco: Path, arch: str, size: int, checkpoints: List[str], seed: int = 0) -> Dict[str, dict]:
    categories = json.loads((coco / "annotations" / "instances_train.json").read_text())["categories"]
    results = {}
    for ckpt in checkpoints:
        torch.manual_seed(seed)
        model = build_vit(arch, img_size=size).eval()
        if ckpt != "random":
            load_pretrained(model, ckpt, strict=False)
        train = instance_features(model, coco, "train", size)
        val = instance_features(model, coco, "val", size)
        results[ckpt] = probe(train, val, len(categories))
    return results


def table(results: Dict[str, dict]) -> str:
    lines = ["| encoder | logistic acc (%) | nearest mean acc (%) | chance (%) | val instances |",
             "|---|---|---|---|---|"]
    for name, r in results.items():
        lines.append(f"| {name} | {r['logistic_acc']:.1f} ± {r['logistic_se']:.1f} | "
                     f"{r['centroid_acc']:.1f} ± {r['centroid_se']:.1f} | {r['chance_acc']:.1f} | "
                     f"{r['val_instances']} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--coco", type=Path, required=True, help="COCO-layout folder (train and val)")
    ap.add_argument("--arch", default="vit_mini_patch16", help="backbones.VIT_ARCHS name")
    ap.add_argument("--size", type=int, default=128, help="square input side")
    ap.add_argument("--checkpoint", action="append", default=None,
                    help="encoder weights (any format load_pretrained reads) or 'random'; "
                         "repeatable (default: random)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the random initialisation")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    for split in ("train", "val"):
        if not (args.coco / "annotations" / f"instances_{split}.json").is_file():
            ap.error(f"{args.coco}/annotations/instances_{split}.json not found")
    results = run(args.coco, args.arch, args.size, args.checkpoint or ["random"], args.seed)
    print(table(results), end="")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(args.out, lambda tmp: tmp.write_text(json.dumps(
            {"arch": args.arch, "size": args.size, "results": results}, indent=2)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
