"""Train (or evaluate) UperNet on the shared ViT with MMSegmentation.

    python tools/train_seg.py CONFIG [--work-dir DIR] [--data-root ROOT] [--pretrained CKPT]
                              [--resume [CKPT] | --overwrite] [--cfg-options k=v ...] [--compile]
    python tools/train_seg.py CONFIG --eval-only --checkpoint CKPT [--out results.json] [--tta]
    torchrun --nproc_per_node 8 tools/train_seg.py CONFIG --launcher pytorch ...

Multi-process (``segmentation/distributed.py``): under torchrun every process is a rank (also
without ``--launcher``, logged); without CUDA the ranks talk gloo (a test mode). Only rank 0
claims the work dir, writes results and prints them. SIGTERM / SIGUSR1 stop training after the
current iteration with a checkpoint and exit status 0 (``segmentation/stop_hook.py``).

Training claims the work dir (``tools/run_dir.py``): one that holds another run
(``last_checkpoint``, ``iter_*.pth``, ``epoch_*.pth``) is refused unless ``--resume`` continues it
or ``--overwrite`` replaces it; one in use by a running training is refused.

Configs live in segmentation/configs/ (ViT-B / ViT-L on ADE20K, a tiny CPU one). Validation runs
during training (IoUMetric: mIoU and the per-class table) and each result is written as JSON under
<work-dir>/val_results/; --eval-only writes <work-dir>/test_results.json (``--tta``: multi-scale +
flip testing with the config's ``tta_pipeline`` / ``tta_model``, segmentation/tta.py; an
evaluation only, refused in one line for training). Errors about the inputs
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
from mae_transfer.segmentation.distributed import (  # noqa: E402
    is_distributed, rank, stop_if_any_failed)
from mae_transfer.tools.run_dir import OutputDirError, claim_output_dir, writing_into  # noqa: E402
from mae_transfer.tools.checkpoints import CheckpointError  # noqa: E402
from mae_transfer.tools.divergence import EXIT_DIVERGED, TrainingDiverged  # noqa: E402


#: What marks a work dir as holding a run: a new run there needs --resume or --overwrite.
RUN_FILES = ("last_checkpoint", "iter_*.pth", "epoch_*.pth")


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    entry.add_common_args(ap)
    ap.add_argument("--pretrained", help="ViT weights for the backbone: ours / official MAE / "
                                         "timm / Detectron2 / MMSeg checkpoint, or a Hugging Face "
                                         "ViT / ViTMAE folder")
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
    ap.add_argument("--tta", action="store_true",
                    help="with --eval-only: multi-scale + flip test-time augmentation (the "
                         "config's tta_pipeline and tta_model; see docs/segmentation.md)")
    args = ap.parse_args(argv)
    if args.eval_only and not args.checkpoint:
        ap.error("--eval-only needs --checkpoint CKPT")
    if "LOCAL_RANK" not in os.environ:
        os.environ["LOCAL_RANK"] = str(args.local_rank)
    return args


def claim_work_dir(cfg, args):
    """Rank 0 claims the work dir; every rank stops (one line, from rank 0) if it cannot."""
    claim, error = contextlib.nullcontext(), None
    if rank() == 0:
        try:
            claim = claim_output_dir(cfg.work_dir, resume=args.resume is not None,
                                     overwrite=args.overwrite, run_files=RUN_FILES)
        except OutputDirError as exc:
            if not is_distributed():
                raise
            error = str(exc)
    stop_if_any_failed(error, "work dir")
    return claim


def report(exc: BaseException) -> None:
    """The error's one line on stderr; an error every rank raised is printed by rank 0 alone."""
    if rank() == 0 or not getattr(exc, "reported_by_rank0", False):
        print(f"error: {entry.error_line(exc)}", file=sys.stderr)


def train(cfg, args) -> None:
    if args.pretrained:
        entry.set_pretrained(cfg, args.pretrained)
    entry.resolve_resume(cfg, args.resume)
    if args.compile and not cfg.get("compile"):
        cfg.compile = True  # a compile dict from --cfg-options (e.g. backend=...) is kept
    with claim_work_dir(cfg, args), writing_into(cfg.work_dir, only_output_faults=True):
        runner = entry.run_train(cfg)  # a write that fails (a full disk): one line
    stopped, record = entry.stopped_by_signal(runner), entry.final_validation(runner)
    if rank() != 0:
        return
    if stopped:
        print(f"stopped by a signal after iteration {stopped.stopped_at}: checkpoint "
              f"{stopped.checkpoint} (--resume continues from it)")
    elif record:
        print(f"final validation (iter {record['iter']}): {entry.format_metrics(record)}")


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        cfg = entry.load_config(args)
        if args.eval_only:
            out_folder = os.path.dirname(os.path.abspath(args.out)) if args.out else cfg.work_dir
            with writing_into(cfg.work_dir, out_folder, only_output_faults=True):
                record = entry.run_test(cfg, args.checkpoint, args.out)
            if record is not None:  # rank 0 (the other ranks have no results to print)
                print(f"test: {entry.format_metrics(record)}")
            return 0
        train(cfg, args)
        return 0
    except (FileNotFoundError, ValueError, CheckpointError) as exc:
        report(exc)
        return 2
    except TrainingDiverged as exc:  # FiniteLossHook: a NaN loss (no NaN checkpoint saved)
        report(exc)
        return EXIT_DIVERGED


if __name__ == "__main__":
    sys.exit(main())
