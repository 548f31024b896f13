"""Linear probing of a frozen pretrained encoder, as official MAE's ``main_linprobe.py``
(FINETUNE.md "Linear Probing"; official PyTorch ViT-B/L/H 67.8 / 76.0 / 77.2 top-1).

    python tools/linprobe.py --data_path IMAGENET --model vit_base_patch16 --cls_token \\
        --finetune pretrain_run/encoder.safetensors --batch_size 512 --epochs 90 --blr 0.1 \\
        --weight_decay 0.0 --dist_eval --output_dir OUT

Recipe (defaults are ``main_linprobe.py``'s): the cls token after the encoder's norm
(``--global_pool``: mean of patch tokens + an untrained, frozen ``fc_norm``, as MAE), then
``BatchNorm1d(affine=False, eps=1e-6)`` and a linear layer (trunc-normal std 0.01); everything
but the head frozen; LARS (momentum 0.9, trust coefficient 0.001, no weight decay / adaptation
for 1-D parameters), blr 0.1, wd 0, 10 warm-up epochs, cosine to 0; plain cross-entropy;
augmentation: TF-style RandomResizedCrop + flip only. The run itself: ``classification.runner``.
"""
from __future__ import annotations

import argparse
import logging
import sys

import torch

from mae_transfer.classification.data import linprobe_transform
from mae_transfer.classification.head import build_classifier, freeze_all_but_head
from mae_transfer.classification.lars import LARS
from mae_transfer.classification.runner import Recipe, main as run_main

logger = logging.getLogger("mae_transfer.classification")

#: ``main_linprobe.py``'s defaults for the flags both recipes share.
DEFAULTS = dict(batch_size=512, epochs=90, warmup_epochs=10, blr=0.1, min_lr=0.0,
                weight_decay=0.0, global_pool=False)


def add_arguments(ap: argparse.ArgumentParser) -> None:
    """No flags of its own (MAE's linear probe has no augmentation or regularisation flags)."""


def build_model(args):
    return build_classifier(args.model, args.nb_classes, args.input_size, 0.0,
                            global_pool=args.global_pool, probe=True)


def prepare(model, args) -> None:
    trainable = freeze_all_but_head(model)
    logger.info("linear probe: encoder frozen; training %s", ", ".join(trainable))


def build_optimizer(model, args, device: torch.device):
    return LARS(model.head.parameters(), lr=args.lr, weight_decay=args.weight_decay)


def build_criterion(args):
    return torch.nn.CrossEntropyLoss()


def build_mixup(args):
    return None


def build_train_transform(args):
    return linprobe_transform(args.input_size)


RECIPE = Recipe(name="linprobe", description="MAE linear probing for image classification "
                "(official main_linprobe.py's recipe)", defaults=DEFAULTS,
                add_arguments=add_arguments, build_model=build_model, prepare=prepare,
                build_optimizer=build_optimizer, build_criterion=build_criterion,
                build_mixup=build_mixup, train_transform=build_train_transform)


def main(argv=None) -> int:
    return run_main(RECIPE, argv)


if __name__ == "__main__":
    sys.exit(main())
