"""Train (or evaluate) UperNet on the shared ViT with MMSegmentation.

    python tools/train_seg.py CONFIG [--work-dir DIR] [--data-root ROOT] [--pretrained CKPT]
                              [--resume [CKPT] | --overwrite] [--cfg-options k=v ...] [--compile]
    python tools/train_seg.py CONFIG --eval-only --checkpoint CKPT [--out results.json]
    torchrun --nproc_per_node 8 tools/train_seg.py CONFIG --launcher pytorch ...

Training claims the work dir (``tools/run_dir.py``): one that holds another run
(``last_checkpoint``, ``iter_*.pth``, ``epoch_*.pth``) is refused unless ``--resume`` continues it
or ``--overwrite`` replaces it; one in use by a running training is refused.

Configs live in segmentation/configs/ (ViT-B / ViT-L on ADE20K, a tiny CPU one). Validation runs
during training (IoUMetric: mIoU and the per-class table) and each result is written as JSON under
<work-dir>/val_results/; --eval-only writes <work-dir>/test_results.json. Errors about the inputs
(missing files, bad layout, bad checkpoint, an unknown --cfg-options key) and a work dir (or
--out file) that cannot be written (missing and not creatable, read-only, a disk that fills up
mid-run: the previous checkpoint stays the latest) are one line on stderr with exit status 2; a
non-finite loss stops training with one line and exit status 3, leaving ``last_checkpoint`` at
the last good checkpoint.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from mae_transfer import segmentation  # noqa: E402

segmentation.setup()  # the framework fixes (segmentation/compat.py), before any mmseg import
import mae_transfer.segmentation.registration  # noqa: E402,F401  (MAEViT, the dataset, ...)
from mae_transfer.segmentation import entry  # noqa: E402
from mae_transfer.tools.run_dir import claim_output_dir, writing_into  # noqa: E402
from mae_transfer.tools.checkpoints import CheckpointError  # noqa: E402
from mae_transfer.tools.divergence import EXIT_DIVERGED, TrainingDiverged  # noqa: E402


#: What marks a work dir as holding a run: a new run there needs --resume or --overwrite.
RUN_FILES = ("last_checkpoint", "iter_*.pth", "epoch_*.pth")


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    entry.add_common_args(ap)
    ap.add_argument("--pretrained", help="ViT weights for the backbone: ours / official MAE / "
                                         "timm / Detectron2 / MMSeg checkpoint")
    ap.add_argument("--resume", nargs="?", const="auto", default=None,
                    help="resume from the work dir's latest checkpoint, or from the given file")
    ap.add_argument("--compile", action="store_true",
                    help="torch.compile the backbone (options: --cfg-options "
                         "compile.backend=...)")
    ap.add_argument("--overwrite", action="store_true",
                    help="train in a work dir that holds another run (its checkpoints are "
                         "removed first)")
    ap.add_argument("--eval-only", action="store_true", help="only evaluate --checkpoint")
    ap.add_argument("--checkpoint", help="checkpoint to evaluate with --eval-only")
    ap.add_argument("--out", help="results JSON of --eval-only (default: WORK_DIR/test_results.json)")
    args = ap.parse_args(argv)
    if args.eval_only and not args.checkpoint:
        ap.error("--eval-only needs --checkpoint CKPT")
    if "LOCAL_RANK" not in os.environ:
        os.environ["LOCAL_RANK"] = str(args.local_rank)
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        cfg = entry.load_config(args)
        if args.eval_only:
            out_folder = os.path.dirname(os.path.abspath(args.out)) if args.out else cfg.work_dir
            with writing_into(cfg.work_dir, out_folder, only_output_faults=True):
                record = entry.run_test(cfg, args.checkpoint, args.out)
            print(f"test: {entry.format_metrics(record)}")
            return 0
        if args.pretrained:
            entry.set_pretrained(cfg, args.pretrained)
        entry.resolve_resume(cfg, args.resume)
        if args.compile and not cfg.get("compile"):
            cfg.compile = True  # a compile dict from --cfg-options (e.g. backend=...) is kept
        with (claim_output_dir(cfg.work_dir, resume=args.resume is not None,
                               overwrite=args.overwrite, run_files=RUN_FILES)
              if int(os.environ.get("RANK", 0)) == 0 else contextlib.nullcontext()), \
                writing_into(cfg.work_dir, only_output_faults=True):  # a full disk: one line
            record = entry.run_train(cfg)
        if record:
            print(f"final validation (iter {record['iter']}): {entry.format_metrics(record)}")
        return 0
    except (FileNotFoundError, ValueError, CheckpointError) as exc:
        print(f"error: {entry.error_line(exc)}", file=sys.stderr)
        return 2
    except TrainingDiverged as exc:  # FiniteLossHook: a NaN loss (no NaN checkpoint saved)
        print(f"error: {entry.error_line(exc)}", file=sys.stderr)
        return EXIT_DIVERGED


if __name__ == "__main__":
    sys.exit(main())
