"""k-NN monitor of pretraining checkpoints: ``python tools/knn.py`` (one process or torchrun).

    python tools/knn.py --data_path ROOT --model vit_base_patch16 \\
        --finetune OUT/checkpoint-*.pth [random] --output_dir OUT/knn \\
        [--nb_knn 10 20 100 200] [--temperature 0.07] [--input_size 224] [--batch_size 256] \\
        [--global_pool] [--nb_classes N] [--device cuda] [--num_workers 10] [--seed 0]

Why: issue #24 asks for a cheap signal per checkpoint before GPU-days go into detection and
segmentation. For each checkpoint (any file the one checkpoint reader takes: a pretraining
``checkpoint-NNNN.pth``, ``encoder.safetensors``, an official MAE release, ...; the word
``random`` is the ``--model`` ViT at its random initialisation under ``--seed``, the baseline
any pretraining has to beat), the encoder encodes ``ROOT/train`` and ``ROOT/val`` once
(``classification.features``: evaluation transform, batches, bf16 autocast on CUDA), and the
val images are classified by a weighted vote of their nearest train images
(``classification.knn``: cosine similarity, k=20, T=0.07, DINO's rule). Flags follow official
MAE's ``main_linprobe.py`` where it has them, DINO's ``eval_knn.py`` for ``--nb_knn`` and
``--temperature``.

Writes into ``--output_dir``: ``knn.json`` (per checkpoint: top-1 / top-5 per k, the settings,
the file's size and time, counts) and ``knn.log``. ``knn.json`` is rewritten atomically after
every checkpoint, and a checkpoint already in it (same file, same settings) is not computed
again, so the same command run again after more epochs evaluates only the new checkpoints
(``--recompute`` forces them all). With torchrun, each process encodes a share of the images;
the train features are gathered on every process, each process scores its share of the val
images and the hits are summed. Exit status: 0 done, 2 bad input (one ``error:`` line).
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional

import torch
import torch.distributed as dist

from mae_transfer.backbones.checkpoint_files import CheckpointError
from mae_transfer.classification.data import (ClassificationDataError, ImageFolderInfo,
                                              check_image_folder, eval_transform, image_folder)
from mae_transfer.classification.encoder import build_encoder, load_encoder_weights
from mae_transfer.classification.features import extract_features
from mae_transfer.classification.knn import (DEFAULT_K, DEFAULT_TEMPERATURE, TOPN, KnnResult,
                                             knn_classify)
from mae_transfer.pretrain.distributed import DistInfo, cleanup, fail_together, init_distributed
from mae_transfer.tools.atomic import atomic_write
from mae_transfer.tools.run_dir import OutputDirClaim, OutputDirError, claim_output_dir, \
    writing_into

logger = logging.getLogger("mae_transfer.classification")

#: ``--finetune`` entry meaning "the --model ViT at its random initialisation (--seed)".
RANDOM_INIT = "random"
RESULTS = "knn.json"
LOG = "knn.log"


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        "knn", description="Weighted k-NN accuracy of frozen encoder features (DINO's monitor).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    a = ap.add_argument
    a("--data_path", required=True, help="classification root: train/<class>/*, val/<class>/*")
    a("--finetune", nargs="+", default=[RANDOM_INIT], metavar="CKPT",
      help=f"checkpoints to evaluate, in order (any layout the checkpoint reader takes); "
           f"'{RANDOM_INIT}': the --model ViT at its random init")
    a("--model", default="vit_base_patch16", help="encoder architecture (official MAE names)")
    a("--input_size", type=int, default=224)
    a("--global_pool", action="store_true",
      help="mean of the normed patch tokens instead of the cls token")
    a("--nb_knn", type=int, nargs="+", default=[DEFAULT_K],
      help="numbers of neighbours (DINO reports 10 20 100 200; 20 works best)")
    a("--temperature", type=float, default=DEFAULT_TEMPERATURE, help="of the weighted vote")
    a("--batch_size", type=int, default=256, help="images per forward pass, per process")
    a("--nb_classes", type=int, default=None,
      help="checked against the class folders (default: their number)")
    a("--output_dir", default="./output_dir")
    a("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    a("--num_workers", type=int, default=min(10, os.cpu_count() or 1))
    a("--seed", type=int, default=0, help="of the random-init encoder")
    a("--amp", action=argparse.BooleanOptionalAction, default=None,
      help="bf16 autocast (default: on for CUDA, off for CPU)")
    a("--query_chunk", type=int, default=1024, help="val features scored at once")
    a("--train_chunk", type=int, default=65536,
      help="train features met at once (memory: query_chunk x train_chunk similarities)")
    a("--recompute", action="store_true",
      help="evaluate checkpoints already in OUTPUT_DIR/knn.json again")
    return ap


def validate(args: argparse.Namespace, info: ImageFolderInfo) -> None:
    for name in ("batch_size", "input_size", "query_chunk", "train_chunk"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name} must be >= 1, got {getattr(args, name)}")
    if args.temperature <= 0:
        raise ValueError(f"--temperature must be > 0, got {args.temperature}")
    bad = [k for k in args.nb_knn if not 1 <= k <= info.num_train]
    if bad:
        raise ValueError(f"--nb_knn {' '.join(map(str, bad))}: k must lie in 1..{info.num_train} "
                         f"(the train images of {info.root / 'train'})")
    missing = [c for c in args.finetune if c != RANDOM_INIT and not Path(c).is_file()]
    if missing:
        raise CheckpointError(f"--finetune {missing[0]}: no such file"
                              + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""))


def settings(args: argparse.Namespace) -> dict:
    """What a result depends on besides the weights: a stored result is reused only if equal."""
    return {"data_path": str(Path(args.data_path).resolve()), "model": args.model,
            "input_size": args.input_size, "pool": "mean" if args.global_pool else "cls",
            "nb_knn": sorted(set(args.nb_knn)), "temperature": args.temperature}


def file_identity(ckpt: str) -> Optional[dict]:
    if ckpt == RANDOM_INIT:
        return None
    st = os.stat(ckpt)
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns}


def result_key(ckpt: str, seed: int) -> str:
    return f"{RANDOM_INIT} (seed {seed})" if ckpt == RANDOM_INIT else str(Path(ckpt).resolve())


def load_results(path: Path) -> Dict[str, dict]:
    """The results stored by earlier runs (``{}`` when none); an unreadable file is an error
    rather than silently replaced."""
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
        return dict(data["results"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"{path}: not a results file of this tool ({exc}); move it away or "
                         f"choose another --output_dir") from None


def save_results(path: Path, results: Dict[str, dict]) -> None:
    text = json.dumps({"results": results}, indent=1) + "\n"
    with writing_into(path.parent):
        atomic_write(path, lambda tmp: tmp.write_text(text))


def build_model(args: argparse.Namespace, ckpt: str, device: torch.device):
    torch.manual_seed(args.seed)  # the random-init baseline (and any left-out key) is seeded
    vit = build_encoder(args.model, args.input_size)
    if ckpt != RANDOM_INIT:
        load_encoder_weights(vit, ckpt, args.model)
    return vit.to(device).eval()


def sum_over_processes(result: KnnResult, device: torch.device) -> KnnResult:
    """Every process scored its own val images: add their hits and counts."""
    if not (dist.is_available() and dist.is_initialized()):
        return result
    ks = sorted(result.hits)
    values = [result.hits[k][n] for k in ks for n in TOPN] + [result.total]
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    counts = [int(v) for v in t.tolist()]
    hits = {k: {n: counts[i * len(TOPN) + j] for j, n in enumerate(TOPN)}
            for i, k in enumerate(ks)}
    return KnnResult(hits, counts[-1], result.num_classes)


def evaluate(args: argparse.Namespace, ckpt: str, datasets, info: ImageFolderInfo,
             dist_info: DistInfo) -> dict:
    """Encode both splits with ``ckpt``'s encoder and score val by k-NN; the result entry."""
    t0 = time.perf_counter()
    device = dist_info.device
    model = build_model(args, ckpt, device)
    amp = args.amp if args.amp is not None else device.type == "cuda"
    common = dict(batch_size=args.batch_size, num_workers=args.num_workers,
                  pool="mean" if args.global_pool else "cls",
                  amp_dtype=torch.bfloat16 if amp else None)
    train, train_labels, _ = extract_features(model, datasets["train"], device, gather=True,
                                              name="train", **common)
    val, val_labels, _ = extract_features(model, datasets["val"], device, gather=False,
                                          name="val", **common)
    del model
    local = knn_classify(train, train_labels, val, val_labels, args.nb_knn, args.temperature,
                         num_classes=info.num_classes, query_chunk=args.query_chunk,
                         train_chunk=args.train_chunk)
    result = sum_over_processes(local, device)
    for k in sorted(result.hits):
        logger.info("%s: %d-NN top-1 %.2f%%, top-5 %.2f%% (%d val images, %d classes)", ckpt, k,
                    result.accuracy(k, 1), result.accuracy(k, 5), result.total,
                    info.num_classes)
    return {"checkpoint": ckpt, "file": file_identity(ckpt), "settings": settings(args),
            "knn": result.as_dict(), "top5_of": min(5, info.num_classes),
            "num_train": info.num_train, "num_val": result.total, "classes": info.classes,
            "processes": dist_info.world_size, "seconds": round(time.perf_counter() - t0, 2)}


def setup_logging(output_dir: Optional[Path], rank: int) -> List[logging.Handler]:
    """Console (rank 0; warnings only elsewhere) and ``knn.log``; returns the handlers added."""
    root = logging.getLogger("mae_transfer")
    root.setLevel(logging.INFO if rank == 0 else logging.WARNING)
    fmt = logging.Formatter(f"%(asctime)s {'' if rank == 0 else f'[rank {rank}] '}"
                            f"%(levelname).1s %(message)s", "%H:%M:%S")
    handlers: List[logging.Handler] = [logging.StreamHandler(sys.stdout)]
    if output_dir is not None:
        handlers.append(logging.FileHandler(output_dir / LOG))
    for h in handlers:
        h.setFormatter(fmt)
        root.addHandler(h)
    return handlers


def teardown_logging(handlers: List[logging.Handler]) -> None:
    root = logging.getLogger("mae_transfer")
    for h in handlers:
        root.removeHandler(h)
        h.close()
    root.setLevel(logging.NOTSET)


def run(args: argparse.Namespace, dist_info: DistInfo) -> int:
    info = check_image_folder(args.data_path, args.nb_classes)
    validate(args, info)
    transform = eval_transform(args.input_size)
    datasets = {s: image_folder(args.data_path, s, transform) for s in ("train", "val")}
    logger.info("%s: %d classes, %d train and %d val images; k = %s, T = %g, %s features at "
                "%d px, %d process(es) on %s", args.data_path, info.num_classes, info.num_train,
                info.num_val, " ".join(map(str, sorted(set(args.nb_knn)))), args.temperature,
                "mean-pooled" if args.global_pool else "cls", args.input_size,
                dist_info.world_size, dist_info.device)
    out = Path(args.output_dir) / RESULTS
    results = load_results(out)
    wanted = settings(args)
    for i, ckpt in enumerate(args.finetune, start=1):
        key = result_key(ckpt, args.seed)
        old = results.get(key)
        if (not args.recompute and old and old.get("settings") == wanted
                and old.get("file") == file_identity(ckpt)):
            logger.info("[%d/%d] %s: already in %s, not evaluated again (--recompute to force)",
                        i, len(args.finetune), ckpt, out)
            continue
        logger.info("[%d/%d] %s", i, len(args.finetune), ckpt)
        entry = evaluate(args, ckpt, datasets, info, dist_info)
        if dist_info.is_main:
            results[key] = entry
            save_results(out, results)
    if dist_info.is_main:
        logger.info("results in %s", out)
    return 0


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    claim: Optional[OutputDirClaim] = None
    handlers: List[logging.Handler] = []
    dist_info: Optional[DistInfo] = None
    try:
        dist_info = init_distributed(args.device)
        refusal = None
        if dist_info.is_main:  # results accumulate: the folder is locked, never cleared
            try:
                claim = claim_output_dir(args.output_dir, resume=True, overwrite=False,
                                         run_files=(RESULTS,))
            except OutputDirError as exc:
                refusal = exc
        fail_together(refusal, dist_info.device, lambda ranks: OutputDirError(
            f"rank 0 refused output folder {args.output_dir} (see its error)"))
        handlers = setup_logging(Path(args.output_dir) if dist_info.is_main else None,
                                 dist_info.rank)
        if dist_info.device.type == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
        return run(args, dist_info)
    except (ClassificationDataError, CheckpointError, OutputDirError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    finally:
        teardown_logging(handlers)
        if claim is not None:
            claim.release()
        if dist_info is not None:
            cleanup()


if __name__ == "__main__":
    sys.exit(main())
