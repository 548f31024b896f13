"""The run both classification recipes share: arguments, processes, data, resume, epochs, files.

``finetune.py`` and ``linprobe.py`` each describe a ``Recipe`` (their defaults, model, optimizer,
loss, augmentation) and call ``main(recipe, argv)``. The flags are official MAE's
(``main_finetune.py`` / ``main_linprobe.py``): ``--data_path --finetune --model --input_size
--nb_classes --batch_size --accum_iter --epochs --warmup_epochs --blr/--lr --min_lr
--weight_decay --global_pool/--cls_token --output_dir --log_dir --resume --eval --device
--num_workers --dist_eval --seed --pin_mem``; added: ``--compile``, ``--amp``, ``--overwrite``,
``--save_every``, ``--log_every``.

Processes: one, or torchrun's (``RANK`` / ``WORLD_SIZE``: DDP, NCCL on GPUs, gloo on CPUs,
``pretrain.distributed``); the lr follows ``blr x batch x accum_iter x processes / 256``.

Files in ``--output_dir`` (rank 0; a folder holding another run is refused without ``--resume``
or ``--overwrite``, ``tools.run_dir``): ``checkpoint-last.pth`` after every epoch and when
stopped by a signal (mid-epoch position kept), ``checkpoint-NNNN.pth`` every ``--save_every``
epochs and at the end, ``log.txt`` (a JSON line per epoch, MAE's keys), ``train.log``,
``results.json`` (the latest evaluation: top-1 / top-5 / loss, best top-1). ``--eval`` writes
``eval.json`` (same keys) and trains nothing. All written atomically.

Exit status: 0 done (or stopped by SIGTERM / SIGUSR1 / Ctrl-C with the position saved), 1
non-finite loss (nothing saved), 2 bad input (one ``error:`` line: the data root, the checkpoint,
an encoder of another size, an unusable output folder).
"""
from __future__ import annotations

import argparse
import functools
import logging
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import torch

from mae_transfer.backbones.checkpoint_files import CheckpointError
from mae_transfer.classification.data import (ClassificationDataError, SeededSamples,
                                              check_image_folder, eval_transform, image_folder)
from mae_transfer.classification.encoder import load_encoder_weights, resolve_model
from mae_transfer.classification.engine import (EpochConfig, NonFiniteLoss, Progress, evaluate,
                                                save_checkpoint, train_one_epoch, write_json)
from mae_transfer.pretrain.checkpoint import (LAST, plain, resume_path, rng_state, seed_everything,
                                             set_rng_state)
from mae_transfer.pretrain.data import (STOP_SIGNALS, DatasetError, ResumableSampler,
                                        stop_workers, worker_init)
from mae_transfer.pretrain.distributed import (DistInfo, barrier, broadcast_object, cleanup,
                                               cpu_group, fail_together, init_distributed)
from mae_transfer.pretrain.logs import MetricWriter, setup_logging, teardown_logging
from mae_transfer.pretrain.schedule import effective_lr, lr_at
from mae_transfer.tools.preemption import StopRequest
from mae_transfer.tools.run_dir import OutputDirError, claim_output_dir, writing_into

logger = logging.getLogger("mae_transfer.classification")

RESULTS = "results.json"
EVAL_RESULTS = "eval.json"
#: What marks an output folder as holding a run (a new run there needs --resume / --overwrite).
RUN_FILES = ("checkpoint-*.pth", "log.txt", RESULTS)


@dataclass
class Recipe:
    """What differs between fine-tuning and the linear probe."""

    name: str  # "finetune" | "linprobe"
    description: str
    defaults: dict  # parser defaults (MAE's for this recipe)
    add_arguments: Callable[[argparse.ArgumentParser], None]
    build_model: Callable  # (args) -> classifier (pretrained weights not yet loaded)
    prepare: Callable  # (model, args) -> None: after --finetune loaded (freeze, ...)
    build_optimizer: Callable  # (model, args, device) -> optimizer
    build_criterion: Callable  # (args) -> loss
    build_mixup: Callable  # (args) -> mixup_fn or None
    train_transform: Callable  # (args) -> transform


def build_parser(recipe: Recipe) -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(recipe.name, description=recipe.description,
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    a = ap.add_argument
    a("--data_path", required=True, help="ImageFolder root: train/<class>/* and val/<class>/*")
    a("--nb_classes", type=int, default=None,
      help="number of classes (default: the number of class folders; must equal it)")
    a("--model", default="vit_large_patch16",
      help="vit_{mini,tiny,small,base,large}_patch16, vit_huge_patch14 (official MAE names; "
           "mae_vit_* accepted)")
    a("--input_size", type=int, default=224)
    a("--finetune", default="", help="pretrained weights: any layout the checkpoint reader "
                                     "takes (our encoder.safetensors, official MAE, timm, ...)")
    a("--global_pool", action="store_true", help="mean of the patch tokens + fc_norm")
    a("--cls_token", action="store_false", dest="global_pool",
      help="classify the cls token (after the encoder's norm)")
    a("--batch_size", type=int, help="per process (total = x accum_iter x processes)")
    a("--accum_iter", type=int, default=1)
    a("--epochs", type=int)
    a("--warmup_epochs", type=float)
    a("--blr", type=float, help="base lr: lr = blr x total batch / 256")
    a("--lr", type=float, default=None, help="absolute lr (overrides --blr)")
    a("--min_lr", type=float)
    a("--weight_decay", type=float)
    a("--output_dir", default="./output_dir")
    a("--log_dir", default=None, help="TensorBoard folder (default: --output_dir)")
    a("--overwrite", action="store_true",
      help="start a new run in an --output_dir that holds another one (its files removed)")
    a("--resume", default="", help="checkpoint to continue (or to evaluate with --eval); "
                                   "'auto': OUTPUT_DIR/checkpoint-last.pth when it exists")
    a("--eval", action="store_true", help="evaluate --resume's weights, train nothing")
    a("--dist_eval", action="store_true",
      help="each process evaluates a share of val (counts summed; no sample twice)")
    a("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    a("--num_workers", type=int, default=10)
    a("--pin_mem", action="store_true", default=True)
    a("--no_pin_mem", action="store_false", dest="pin_mem")
    a("--seed", type=int, default=0)
    a("--compile", action="store_true", help="torch.compile the training model")
    a("--amp", action=argparse.BooleanOptionalAction, default=None,
      help="bf16 autocast (default: on for CUDA, off for CPU)")
    a("--save_every", type=int, default=20, help="keep checkpoint-NNNN.pth every N epochs")
    a("--log_every", type=int, default=20, help="progress line every N optimizer steps")
    recipe.add_arguments(ap)
    ap.set_defaults(**recipe.defaults)
    return ap


def validate(args: argparse.Namespace) -> None:
    resolve_model(args.model)
    for name in ("batch_size", "accum_iter", "epochs", "input_size", "save_every", "log_every"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name} must be >= 1, got {getattr(args, name)}")
    if args.eval and not args.resume:
        raise ValueError("--eval needs --resume CKPT (the weights to evaluate)")


def _plain_args(args) -> dict:
    return plain({k: v for k, v in vars(args).items()})


class Run:
    """One classification run (see the module docstring)."""

    def __init__(self, recipe: Recipe, args: argparse.Namespace, dist: DistInfo):
        self.recipe, self.args, self.dist = recipe, args, dist
        self.out = Path(args.output_dir) if args.output_dir else None
        splits = ("val",) if args.eval else ("train", "val")
        self.info = check_image_folder(args.data_path, args.nb_classes, splits)
        args.nb_classes = self.info.num_classes
        torch.manual_seed(args.seed)  # same initial head on every rank
        self.model = recipe.build_model(args)
        self.amp_dtype = torch.bfloat16 if (args.amp if args.amp is not None
                                            else dist.device.type == "cuda") else None
        self.progress = Progress()
        self.best_acc1 = float("-inf")
        self.val_set = image_folder(args.data_path, "val", eval_transform(args.input_size))

    # ------------------------------------------------------------------------- weights
    def load_pretrained(self) -> None:
        if self.args.finetune:
            load_encoder_weights(self.model, self.args.finetune, self.args.model)
        else:
            logger.warning("no --finetune: the encoder starts from random init")

    def state(self) -> dict:
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "epoch": self.progress.epoch, "step_in_epoch": self.progress.step_in_epoch,
                "global_step": self.progress.global_step,
                "steps_per_epoch": self.steps_per_epoch, "best_acc1": self.best_acc1,
                "args": _plain_args(self.args), "rng": rng_state(),
                "meta": {"recipe": self.recipe.name, "model": resolve_model(self.args.model),
                         "nb_classes": self.args.nb_classes, "classes": self.info.classes,
                         "input_size": self.args.input_size,
                         "global_pool": self.args.global_pool,
                         "producer": f"mae-transfer {self.recipe.name}"}}

    def read_checkpoint(self, path: Path) -> dict:
        """A checkpoint of ours, or an official MAE one (``{'model': ...}``); one-line errors."""
        if not path.is_file():
            raise CheckpointError(f"no checkpoint at {path}")
        try:
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001 - truncated zip, pickled objects, ...
            first = (str(exc).strip().splitlines() or [""])[0][:200]
            raise CheckpointError(f"cannot read checkpoint {path} ({type(exc).__name__}: "
                                  f"{first})") from None
        if not isinstance(ckpt, dict) or not isinstance(ckpt.get("model"), dict):
            raise CheckpointError(f"{path} is not a classification checkpoint (no 'model' "
                                  f"state dict)")
        state = {k[len("module."):] if k.startswith("module.") else k: v
                 for k, v in ckpt["model"].items()}
        own = self.model.state_dict()
        missing = [k for k in own if k not in state]
        unexpected = [k for k in state if k not in own]
        shapes = [f"{k}: {tuple(state[k].shape)} vs {tuple(own[k].shape)}" for k in own
                  if k in state and state[k].shape != own[k].shape]
        if missing or unexpected or shapes:
            raise CheckpointError(
                f"{path} does not fit --model {self.args.model} with {self.args.nb_classes} "
                f"classes ({'global pool' if self.args.global_pool else 'cls token'}): "
                f"{len(missing)} missing keys {missing[:3]}, {len(unexpected)} unexpected "
                f"{unexpected[:3]}, {len(shapes)} of another shape {shapes[:2]}")
        ckpt["model"] = state
        return ckpt

    def resume(self, path: Path, weights_only: bool = False) -> None:
        ckpt = self.read_checkpoint(path)
        self.model.load_state_dict(ckpt["model"])
        if weights_only:
            logger.info("evaluating %s (epoch %s)", path, ckpt.get("epoch", "?"))
            return
        if "optimizer" not in ckpt or "epoch" not in ckpt:
            raise CheckpointError(f"{path} holds weights only (no optimizer / epoch): it can be "
                                  f"evaluated (--eval) or fine-tuned (--finetune), not resumed")
        self.optimizer.load_state_dict(ckpt["optimizer"])
        step = int(ckpt.get("step_in_epoch", 0))
        if step and int(ckpt.get("steps_per_epoch", self.steps_per_epoch)) != self.steps_per_epoch:
            raise CheckpointError(f"{path} stopped mid-epoch with {ckpt['steps_per_epoch']} steps "
                                  f"per epoch, this run has {self.steps_per_epoch} (another "
                                  f"batch size, data or process count): resume with the same")
        self.progress = Progress(int(ckpt["epoch"]), step, int(ckpt.get("global_step", 0)))
        self.best_acc1 = float(ckpt.get("best_acc1", float("-inf")))
        if "rng" in ckpt:
            set_rng_state(ckpt["rng"])
        logger.info("resumed from %s: epoch %d, step %d of it", path, self.progress.epoch + 1,
                    self.progress.step_in_epoch)

    # ----------------------------------------------------------------------------- data
    def _loader(self, dataset, batch_size, sampler, workers):
        return torch.utils.data.DataLoader(
            dataset, batch_size=batch_size, sampler=sampler, num_workers=workers,
            pin_memory=self.args.pin_mem and self.dist.device.type == "cuda", drop_last=False,
            persistent_workers=workers > 0,
            worker_init_fn=functools.partial(worker_init, os.getpid()) if workers > 0 else None)

    def val_loader(self):
        d, n = self.dist, len(self.val_set)
        indices = range(d.rank, n, d.world_size) if (self.args.dist_eval and d.distributed) \
            else range(n)
        return self._loader(self.val_set, self.args.batch_size, list(indices),
                            max(0, self.args.num_workers))

    def setup_training(self) -> None:
        a, d = self.args, self.dist
        train_set = image_folder(a.data_path, "train", self.recipe.train_transform(a))
        self.num_train = len(train_set)
        self.sampler = ResumableSampler(len(train_set), a.batch_size, d.world_size, d.rank,
                                        a.seed)
        steps = self.sampler.steps_per_epoch - self.sampler.steps_per_epoch % a.accum_iter
        if steps == 0:
            raise DatasetError(f"{len(train_set)} training images give "
                               f"{self.sampler.steps_per_epoch} steps per epoch, fewer than "
                               f"--accum_iter {a.accum_iter}")
        self.sampler.steps_per_epoch = self.steps_per_epoch = steps
        self.train_loader = self._loader(SeededSamples(train_set, a.seed), a.batch_size,
                                         self.sampler, max(0, a.num_workers))
        if a.lr is None:
            a.lr = effective_lr(a.blr, a.batch_size, a.accum_iter, d.world_size)
        self.optimizer = self.recipe.build_optimizer(self.model, a, d.device)

    # ------------------------------------------------------------------------- running
    def evaluate(self) -> dict:
        """Evaluate on val. Under DDP, rank 0's buffers are copied to every rank first: DDP
        broadcasts them at the start of each forward, so after the last training step each
        rank holds its own BatchNorm statistics (the probe's), and a --dist_eval would mix
        models; now every rank evaluates the model rank 0 saves."""
        a = self.args
        if self.dist.distributed:
            import torch.distributed as torch_dist

            for buffer in self.model.buffers():
                torch_dist.broadcast(buffer, src=0)
        loader = self.val_loader()
        try:
            stats = evaluate(self.model, loader, self.dist.device, self.amp_dtype,
                             reduce=a.dist_eval and self.dist.distributed)
        finally:
            stop_workers(loader)
        return stats

    def result_record(self, stats: dict) -> dict:
        return {"recipe": self.recipe.name, "model": resolve_model(self.args.model),
                "data_path": str(self.args.data_path), "nb_classes": self.args.nb_classes,
                "epoch": self.progress.epoch, "acc1": stats["acc1"], "acc5": stats["acc5"],
                "loss": stats["loss"], "n_val": stats["n"]}

    def save(self, names) -> None:
        if self.dist.is_main and self.out is not None:
            state = self.state()
            for name in names:
                with writing_into(self.out):
                    path = save_checkpoint(state, self.out / name)
                logger.info("saved %s (epoch %d, step %d of it)", path, self.progress.epoch,
                            self.progress.step_in_epoch)
        barrier()

    def train(self, stop: StopRequest) -> int:
        a, d = self.args, self.dist
        group = cpu_group()
        train_model: torch.nn.Module = self.model
        no_sync = None
        if d.distributed:
            ddp = torch.nn.parallel.DistributedDataParallel(
                self.model, device_ids=[d.device.index] if d.device.type == "cuda" else None)
            train_model, no_sync = ddp, ddp.no_sync
        if a.compile:
            train_model = torch.compile(train_model)
        writer = MetricWriter(self.out or Path("."), Path(a.log_dir or a.output_dir)
                              if self.out else None, enabled=d.is_main and self.out is not None)
        cfg = EpochConfig(accum_iter=a.accum_iter, steps_per_epoch=self.steps_per_epoch,
                          epochs=a.epochs, batch_size=a.batch_size, world_size=d.world_size,
                          lr_fn=lambda e: lr_at(e, a.lr, a.epochs, a.warmup_epochs, a.min_lr),
                          amp_dtype=self.amp_dtype, clip_grad=getattr(a, "clip_grad", None),
                          log_every=a.log_every)
        criterion, mixup_fn = self.recipe.build_criterion(a), self.recipe.build_mixup(a)
        n_trainable = sum(p.numel() for p in self.model.parameters() if p.requires_grad)
        logger.info("%s %s at %d px, %d classes: %.2fM trainable parameters; %d train / %d val "
                    "images, %d steps per epoch, total batch %d, lr %.3g (blr %.3g); criterion "
                    "%s; %s, bf16 %s, %d processes", self.recipe.name, a.model, a.input_size,
                    a.nb_classes, n_trainable / 1e6, self.num_train, len(self.val_set),
                    self.steps_per_epoch,
                    a.batch_size * a.accum_iter * d.world_size, a.lr,
                    a.lr * 256 / (a.batch_size * a.accum_iter * d.world_size),
                    type(criterion).__name__, d.device, self.amp_dtype is not None, d.world_size)
        try:
            while self.progress.epoch < a.epochs:
                self.sampler.set_epoch(self.progress.epoch, self.progress.step_in_epoch)
                t0 = time.perf_counter()
                result = train_one_epoch(train_model, criterion, self.train_loader,
                                         self.optimizer, d.device, cfg, self.progress, mixup_fn,
                                         no_sync, stop_requested=lambda: stop.agree(group))
                if result.stopped and self.progress.step_in_epoch < self.steps_per_epoch:
                    self.save([LAST])
                    logger.warning("stopped on request in epoch %d; continue with --resume "
                                   "auto", self.progress.epoch + 1)
                    return 0
                self.progress.epoch += 1
                self.progress.step_in_epoch = 0
                stats = self.evaluate()
                self.best_acc1 = max(self.best_acc1, stats["acc1"])
                logger.info("epoch %d/%d: val top-1 %.2f%%  top-5 %.2f%%  loss %.4f on %d "
                            "images (best top-1 %.2f%%)", self.progress.epoch, a.epochs,
                            stats["acc1"], stats["acc5"], stats["loss"], stats["n"],
                            self.best_acc1)
                names = [LAST]
                if self.progress.epoch % a.save_every == 0 or self.progress.epoch == a.epochs:
                    names.append(f"checkpoint-{self.progress.epoch:04d}.pth")
                self.save(names)
                if d.is_main and self.out is not None:
                    record = {"train_loss": result.loss, "train_lr": result.lr,
                              **{f"test_{k}": v for k, v in stats.items() if k != "n"},
                              "epoch": self.progress.epoch - 1, "n_parameters": n_trainable,
                              "epoch_time_s": time.perf_counter() - t0}
                    with writing_into(self.out):
                        writer.epoch_record(record)
                        write_json({**self.result_record(stats), "best_acc1": self.best_acc1,
                                    "checkpoint": str(self.out / LAST)}, self.out / RESULTS)
                    writer.scalars({"perf/test_acc1": stats["acc1"],
                                    "perf/test_acc5": stats["acc5"],
                                    "perf/test_loss": stats["loss"]}, self.progress.epoch)
                if result.stopped:
                    logger.warning("stopped on request after epoch %d", self.progress.epoch)
                    return 0
        finally:
            stop_workers(self.train_loader)
            writer.close()
        return 0

    def eval_only(self, ckpt: Path) -> int:
        self.resume(ckpt, weights_only=True)
        self.model.to(self.dist.device)
        stats = self.evaluate()
        logger.info("* Acc@1 %.3f Acc@5 %.3f loss %.3f (%d images)", stats["acc1"], stats["acc5"],
                    stats["loss"], stats["n"])
        if self.dist.is_main and self.out is not None:
            record = {**self.result_record(stats), "checkpoint": str(ckpt)}
            record.pop("epoch")
            with writing_into(self.out):
                path = write_json(record, self.out / EVAL_RESULTS)
            logger.info("wrote %s", path)
        return 0



def main(recipe: Recipe, argv=None) -> int:
    args = build_parser(recipe).parse_args(argv)
    dist: Optional[DistInfo] = None
    claim = None
    stop = StopRequest().install(STOP_SIGNALS)
    try:
        validate(args)
        dist = init_distributed(args.device)
        if not args.eval and args.output_dir:
            refusal = None
            if dist.is_main:
                try:
                    claim = claim_output_dir(args.output_dir, resume=bool(args.resume),
                                             overwrite=args.overwrite, run_files=RUN_FILES)
                except OutputDirError as exc:
                    refusal = exc
            fail_together(refusal, dist.device, lambda ranks: OutputDirError(
                f"rank 0 refused output folder {args.output_dir} (see its error)"))
        log_dir = Path(args.output_dir) if (dist.is_main and args.output_dir and
                                            not args.eval) else None
        setup_logging(log_dir, dist.rank)
        if dist.device.type == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
            torch.backends.cudnn.benchmark = True
        logger.info("arguments: %s", " ".join(f"--{k} {v}" for k, v in vars(args).items()))
        run = Run(recipe, args, dist)
        if args.eval:
            if args.resume == "auto":
                raise ValueError("--eval needs a checkpoint file, not --resume auto")
            return run.eval_only(Path(args.resume))
        choice = resume_path(args) if dist.is_main else None
        ckpt = broadcast_object(None if choice is None else str(choice))
        if ckpt is None:
            run.load_pretrained()
        recipe.prepare(run.model, args)
        run.model.to(dist.device)
        run.setup_training()
        seed_everything(args.seed + dist.rank)
        if ckpt is not None:
            error = None
            try:
                run.resume(Path(ckpt))
            except CheckpointError as exc:
                error = exc
            fail_together(error, dist.device, lambda ranks: CheckpointError(
                f"rank {', '.join(map(str, ranks))} cannot resume from {ckpt}: stopping"))
        return run.train(stop)
    except NonFiniteLoss as exc:
        logger.error("stopping: %s (lower --blr, or check the data); nothing saved for this "
                     "epoch", exc)
        return 1
    except (ClassificationDataError, DatasetError, CheckpointError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: stopped without saving", file=sys.stderr)
        return 130
    finally:
        stop.uninstall()
        if claim is not None:
            claim.release()
        if dist is not None:
            cleanup()
            teardown_logging()
