"""End-to-end fine-tuning of a pretrained encoder for classification, as official MAE's
``main_finetune.py`` (FINETUNE.md; the paper's ViT-B/L/H 83.6 / 85.9 / 86.9 top-1).

    python tools/finetune_cls.py --data_path IMAGENET --model vit_base_patch16 \\
        --finetune pretrain_run/encoder.safetensors --batch_size 32 --accum_iter 4 --epochs 100 \\
        --blr 5e-4 --layer_decay 0.65 --weight_decay 0.05 --drop_path 0.1 --reprob 0.25 \\
        --mixup 0.8 --cutmix 1.0 --dist_eval --output_dir OUT

Recipe (defaults are ``main_finetune.py``'s): global pool + ``fc_norm`` (``--cls_token`` for the
cls token), head trunc-normal std 2e-5, drop path linear to ``--drop_path``; AdamW (0.9, 0.999)
over layer-wise lr-decay groups (``tools.lr_decay.param_groups``, policy ``mae_finetune``: scale
``layer_decay ** (L + 1 - layer id)``, no weight decay on 1-D parameters, ``pos_embed``,
``cls_token``); per-iteration warm-up + cosine to ``--min_lr``; timm RandAugment
``rand-m9-mstd0.5-inc1``, random erasing 0.25, mixup / cutmix (timm ``Mixup``) with
``SoftTargetCrossEntropy``, else label smoothing 0.1 (``LabelSmoothingCrossEntropy``).
The run itself (processes, files, resume, exit status): ``classification.runner``.
"""
from __future__ import annotations

import argparse
import sys

import torch

from mae_transfer.classification.data import RANDAUG, train_transform
from mae_transfer.classification.head import build_classifier
from mae_transfer.classification.runner import Recipe, main as run_main
from mae_transfer.tools.lr_decay import param_groups

#: ``main_finetune.py``'s defaults for the flags both recipes share.
DEFAULTS = dict(batch_size=64, epochs=50, warmup_epochs=5, blr=1e-3, min_lr=1e-6,
                weight_decay=0.05, global_pool=True)


def add_arguments(ap: argparse.ArgumentParser) -> None:
    a = ap.add_argument
    a("--drop_path", type=float, default=0.1, help="drop path rate (linear over depth)")
    a("--layer_decay", type=float, default=0.75, help="layer-wise lr decay (BEiT / ELECTRA)")
    a("--clip_grad", type=float, default=None, help="max gradient norm (off, as MAE)")
    a("--color_jitter", type=float, default=None, help="only used without --aa")
    a("--aa", default=RANDAUG, help="timm auto-augment policy ('' for none)")
    a("--smoothing", type=float, default=0.1, help="label smoothing")
    a("--reprob", type=float, default=0.25, help="random erasing probability")
    a("--remode", default="pixel", help="random erasing mode")
    a("--recount", type=int, default=1, help="random erasing count")
    a("--mixup", type=float, default=0.0, help="mixup alpha (on if > 0)")
    a("--cutmix", type=float, default=0.0, help="cutmix alpha (on if > 0)")
    a("--cutmix_minmax", type=float, nargs="+", default=None)
    a("--mixup_prob", type=float, default=1.0)
    a("--mixup_switch_prob", type=float, default=0.5)
    a("--mixup_mode", default="batch", choices=("batch", "pair", "elem"))


def build_model(args):
    return build_classifier(args.model, args.nb_classes, args.input_size, args.drop_path,
                            global_pool=args.global_pool)


def prepare(model, args) -> None:
    """Nothing to freeze: every parameter fine-tunes."""


def build_optimizer(model, args, device: torch.device):
    """AdamW over ``tools.lr_decay`` groups (MAE's ``param_groups_lrd`` rule)."""
    groups = param_groups(model, args.weight_decay, args.layer_decay, wd_policy="mae_finetune")
    kwargs = {"fused": True} if device.type == "cuda" else {}
    return torch.optim.AdamW(groups, lr=args.lr, **kwargs)


def mixup_active(args) -> bool:
    return args.mixup > 0 or args.cutmix > 0 or args.cutmix_minmax is not None


def build_mixup(args):
    if not mixup_active(args):
        return None
    if args.batch_size % 2:
        raise ValueError(f"--mixup / --cutmix mix pairs of images: --batch_size must be even, "
                         f"got {args.batch_size}")
    from timm.data import Mixup

    return Mixup(mixup_alpha=args.mixup, cutmix_alpha=args.cutmix,
                 cutmix_minmax=args.cutmix_minmax, prob=args.mixup_prob,
                 switch_prob=args.mixup_switch_prob, mode=args.mixup_mode,
                 label_smoothing=args.smoothing, num_classes=args.nb_classes)


def build_criterion(args):
    from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy

    if mixup_active(args):
        return SoftTargetCrossEntropy()  # smoothing is in Mixup's soft targets
    if args.smoothing > 0:
        return LabelSmoothingCrossEntropy(smoothing=args.smoothing)
    return torch.nn.CrossEntropyLoss()


def build_train_transform(args):
    return train_transform(args.input_size, args.aa, args.color_jitter, args.reprob, args.remode,
                           args.recount)


RECIPE = Recipe(name="finetune", description="MAE fine-tuning for image classification "
                "(official main_finetune.py's recipe)", defaults=DEFAULTS,
                add_arguments=add_arguments, build_model=build_model, prepare=prepare,
                build_optimizer=build_optimizer, build_criterion=build_criterion,
                build_mixup=build_mixup, train_transform=build_train_transform)


def main(argv=None) -> int:
    return run_main(RECIPE, argv)


if __name__ == "__main__":
    sys.exit(main())
