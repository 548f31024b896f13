"""MAE pretraining entry point: ``python -m mae_transfer.pretrain.main`` (one process) or through torchrun
(``tools/pretrain.sh``: several GPUs, several nodes).

    python -m mae_transfer.pretrain.main --data_path DIR --model mae_vit_base_patch16 --batch_size 64 \\
        --epochs 800 --warmup_epochs 40 --blr 1.5e-4 --weight_decay 0.05 --mask_ratio 0.75 \\
        --norm_pix_loss --input_size 224 --output_dir OUT [--resume CKPT|auto] [--accum_iter N]

Writes into ``--output_dir``: ``checkpoint-last.pth`` (after every epoch and when stopped),
``checkpoint-NNNN.pth`` (after every ``--save_every`` epochs and the last; NNNN = epochs done),
``encoder.safetensors`` (the encoder in the canonical format, at the end), ``log.txt`` (a JSON
line per epoch), ``train.log``, ``vis/epoch-NNNN.png`` and TensorBoard events (``--log_dir``).
Stop signals are agreed on after every optimizer step (``tools.preemption``), so all ranks stop
after the same step and rank 0 saves there.
Exit status: 0 done (or stopped by SIGTERM / SIGUSR1 / Ctrl-C, position saved), 1 non-finite loss
(last good checkpoint kept), 2 bad input or an unusable output folder (one ``error:`` line: in use,
holding another run without ``--resume`` / ``--overwrite``, unwritable, full), 130 a second Ctrl-C
(stopped without saving).
"""
from __future__ import annotations

import argparse
import functools
import logging
import math
import os
import sys
import time
from pathlib import Path
from typing import Optional

import torch

from mae_transfer.pretrain.checkpoint import (LAST, atomic_save, load_training_checkpoint, plain,
                                              resume_path, rng_state, seed_everything,
                                              set_rng_state)
from mae_transfer.pretrain.data import (STOP_SIGNALS, DatasetError, ResumableSampler,
                                       normalize_batch, stop_workers, worker_init)
from mae_transfer.pretrain.device_decode import dataset_class, make_loader
from mae_transfer.pretrain.distributed import (DistInfo, barrier, broadcast_object, cleanup,
                                              cpu_group, fail_together, init_distributed)
from mae_transfer.pretrain.engine import NonFiniteLoss, Progress, StepConfig, train_one_epoch
from mae_transfer.pretrain.init import init_from_checkpoint
from mae_transfer.pretrain.logs import MetricWriter, setup_logging, teardown_logging
from mae_transfer.pretrain.model import (MAE_MODELS, MaskedAutoencoderViT, build_mae, encoder_name,
                           mae_config)
from mae_transfer.pretrain.schedule import effective_lr, lr_at
from mae_transfer.pretrain.visualize import reconstruction_rows, save_png
from mae_transfer.tools.checkpoints import CheckpointError, write_checkpoint
from mae_transfer.tools.lr_decay import param_groups
from mae_transfer.tools.preemption import StopRequest
from mae_transfer.tools.run_dir import (OutputDirClaim, OutputDirError, claim_output_dir,
                                        writing_into)

logger = logging.getLogger("mae_transfer.pretrain")

ENCODER = "encoder.safetensors"
#: What marks an output folder as holding a run: a new run there needs --resume or --overwrite.
RUN_FILES = ("checkpoint-*.pth", ENCODER, "log.txt")
#: Model settings that change parameter shapes: a resumed checkpoint must agree on these.
SHAPE_KEYS = ("img_size", "patch_size", "embed_dim", "depth", "num_heads", "mlp_ratio",
              "in_chans", "decoder_embed_dim", "decoder_depth", "decoder_num_heads")


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        "pretrain", description="MAE pretraining of the shared ViT (He et al. 2021).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    a = ap.add_argument
    a("--data_path", required=True,
      help="folder of images, searched recursively; a root with a train/ folder (ImageNet) "
           "trains on train/ only, a tree with a val/ or validation/ folder is refused")
    a("--model", default="mae_vit_base_patch16", choices=sorted(MAE_MODELS))
    a("--input_size", type=int, default=224)
    a("--mask_ratio", type=float, default=0.75, help="fraction of patches hidden")
    a("--norm_pix_loss", action="store_true", help="per-patch normalised pixel targets")
    a("--decoder_embed_dim", type=int, default=None, help="override the model's decoder width")
    a("--decoder_depth", type=int, default=None, help="override the model's decoder depth")
    a("--decoder_num_heads", type=int, default=None)
    a("--batch_size", type=int, default=64, help="per process; total = x accum_iter x processes")
    a("--accum_iter", type=int, default=1, help="micro-batches per optimizer step")
    a("--epochs", type=int, default=400)
    a("--warmup_epochs", type=float, default=40)
    a("--blr", type=float, default=1.5e-4, help="base lr: lr = blr x total batch / 256")
    a("--lr", type=float, default=None, help="absolute lr (overrides --blr)")
    a("--min_lr", type=float, default=0.0)
    a("--weight_decay", type=float, default=0.05)
    a("--clip_grad", type=float, default=None, help="max gradient norm (off by default, as MAE)")
    a("--output_dir", default="./output_dir",
      help="a folder holding another run (checkpoints, encoder, log.txt) is refused without "
           "--resume or --overwrite; a folder in use by a running run is refused")
    a("--overwrite", action="store_true",
      help="start a new run in an --output_dir that holds another one (its checkpoints, "
           "encoder and log.txt are removed first)")
    a("--log_dir", default=None, help="TensorBoard folder (default: --output_dir)")
    a("--resume", default="", help="training checkpoint to continue, or 'auto' "
                                   "(OUTPUT_DIR/checkpoint-last.pth when it exists); decided "
                                   "by rank 0, every rank resumes from the same file")
    a("--init", default="", help="start a new run from these weights: any encoder file "
                                 "load_pretrained reads (the decoder starts fresh) or a full MAE "
                                 "checkpoint, ours, official or a Hugging Face "
                                 "ViTMAEForPreTraining folder (decoder loaded too); ignored when "
                                 "--resume finds a checkpoint")
    a("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    a("--num_workers", type=int, default=min(10, os.cpu_count() or 1))
    a("--seed", type=int, default=0)
    a("--save_every", type=int, default=20, help="keep checkpoint-NNNN.pth every N epochs")
    a("--vis_every", type=int, default=20, help="reconstruction PNG every N epochs (0: never)")
    a("--vis_images", type=int, default=8)
    a("--log_every", type=int, default=20, help="log line every N steps")
    a("--steps_per_epoch", type=int, default=None,
      help="steps per epoch (default: all full batches of the data); for short smoke runs")
    a("--max_steps", type=int, default=None,
      help="stop (with a checkpoint and the encoder export) after this many steps in total")
    a("--compile", action="store_true", help="torch.compile the model")
    a("--amp", action=argparse.BooleanOptionalAction, default=None,
      help="autocast (default: on for CUDA, off for CPU)")
    a("--amp_dtype", choices=("bfloat16", "float16"), default="bfloat16",
      help="float16 adds a gradient scaler")
    a("--grad_checkpointing", action="store_true", help="recompute activations (less memory)")
    a("--decode_on_device", action="store_true",
      help="workers read JPEG bytes; the training device decodes, crops and flips the batch "
           "(torchvision.io.decode_jpeg): for GPUs with few CPU cores per GPU")
    return ap


def validate(args: argparse.Namespace) -> None:
    for name in ("batch_size", "accum_iter", "epochs", "input_size", "log_every"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name} must be >= 1, got {getattr(args, name)}")
    if args.max_steps is not None and (args.max_steps < 1 or args.max_steps % args.accum_iter):
        raise ValueError(f"--max_steps must be a positive multiple of --accum_iter "
                         f"({args.accum_iter}), got {args.max_steps}")
    if not 0.0 <= args.mask_ratio < 1.0:
        raise ValueError(f"--mask_ratio must be in [0, 1), got {args.mask_ratio}")
    patch = mae_config(args.model)["patch_size"]
    if args.input_size % patch:
        raise ValueError(f"--input_size {args.input_size} is not a multiple of {args.model}'s "
                         f"patch size {patch}")


def build_model(args: argparse.Namespace) -> MaskedAutoencoderViT:
    overrides = {k: getattr(args, k) for k in ("decoder_embed_dim", "decoder_depth",
                                               "decoder_num_heads")
                 if getattr(args, k) is not None}
    return build_mae(args.model, img_size=args.input_size, norm_pix_loss=args.norm_pix_loss,
                     grad_checkpointing=args.grad_checkpointing, **overrides)


def build_optimizer(model: MaskedAutoencoderViT, args, device: torch.device):
    """AdamW (0.9, 0.95); no weight decay on 1-D parameters and biases, as official MAE's timm
    ``add_weight_decay`` (``tools.lr_decay`` policy ``mae_pretrain``: cls / mask tokens are
    decayed there too); no lr decay across layers; fused kernel on CUDA."""
    groups = param_groups(model, args.weight_decay, layer_decay=1.0, wd_policy="mae_pretrain")
    kwargs = {"fused": True} if device.type == "cuda" else {}
    return torch.optim.AdamW(groups, lr=args.lr, betas=(0.9, 0.95), **kwargs)


class Run:
    """One pretraining run: owns the model, optimizer, data and progress, saves and resumes."""

    def __init__(self, args: argparse.Namespace, dist_info: DistInfo):
        self.args, self.dist = args, dist_info
        self.out = Path(args.output_dir)
        device = dist_info.device
        torch.manual_seed(args.seed)  # same initial weights on every rank
        self.model = build_model(args).to(device)
        if device.type == "cuda":
            self.model.to(memory_format=torch.channels_last)  # patch-embed conv in NHWC
        self.dataset = dataset_class(args.decode_on_device)(args.data_path, args.input_size, self.model.num_patches,
                                   seed=args.seed)
        self.sampler = self._make_sampler()
        self.steps_per_epoch = self.sampler.steps_per_epoch
        if args.lr is None:
            args.lr = effective_lr(args.blr, args.batch_size, args.accum_iter,
                                   dist_info.world_size)
        self.optimizer = build_optimizer(self.model, args, device)
        self.amp_dtype = None
        if args.amp if args.amp is not None else device.type == "cuda":
            self.amp_dtype = getattr(torch, args.amp_dtype)
        self.scaler = torch.amp.GradScaler(device.type,
                                           enabled=self.amp_dtype == torch.float16)
        self.progress = Progress()
        self.init_checkpoint: Optional[str] = None
        seed_everything(args.seed + dist_info.rank)

    def _make_sampler(self) -> ResumableSampler:
        a, d = self.args, self.dist
        sampler = ResumableSampler(len(self.dataset), a.batch_size, d.world_size, d.rank,
                                   a.seed, steps_per_epoch=a.steps_per_epoch)
        steps = sampler.steps_per_epoch - sampler.steps_per_epoch % a.accum_iter
        if steps == 0:
            raise DatasetError(f"{len(self.dataset)} images give {sampler.steps_per_epoch} steps "
                               f"per epoch, fewer than --accum_iter {a.accum_iter}")
        sampler.steps_per_epoch = steps
        return sampler

    # --------------------------------------------------------------------------- checkpoints
    def state(self) -> dict:
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),
            "epoch": self.progress.epoch,
            "step_in_epoch": self.progress.step_in_epoch,
            "global_step": self.progress.global_step,
            "steps_per_epoch": self.steps_per_epoch,
            "args": plain(vars(self.args)),
            "model_config": plain(self.model.config),
            "rng": rng_state(),
            # read by tools.checkpoints.read_checkpoint (and so by pretrain.restore.load_mae)
            "meta": {"model_config": plain(self.model.config),
                     "producer": f"mae-transfer pretrain ({self.args.model})",
                     "init_checkpoint": self.init_checkpoint},
        }

    def save(self, names) -> None:
        """Rank 0 writes ``names`` (atomic); everyone waits, so no rank races ahead of a save."""
        if self.dist.is_main:
            state = self.state()
            for name in names:
                with writing_into(self.out):
                    path = atomic_save(state, self.out / name)
                logger.info("saved %s (epoch %d, step %d of it)", path, self.progress.epoch,
                            self.progress.step_in_epoch)
        barrier()

    def init_from(self, path: str) -> None:
        """``--init``: this run starts from ``path``'s weights (``pretrain.init``)."""
        init_from_checkpoint(self.model, path)
        self.init_checkpoint = str(path)

    def resume(self, path: Path) -> None:
        ckpt = load_training_checkpoint(path)
        theirs = ckpt.get("model_config", {})
        diff = [k for k in SHAPE_KEYS if k in theirs and theirs[k] != self.model.config.get(k)]
        if diff:
            raise CheckpointError(
                f"{path} was trained with a different model ({theirs.get('name')}: "
                + ", ".join(f"{k}={theirs[k]} vs {self.model.config.get(k)}" for k in diff) + ")")
        self.model.load_state_dict(ckpt["model"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        if ckpt.get("scaler") and self.scaler.is_enabled():
            self.scaler.load_state_dict(ckpt["scaler"])
        step = int(ckpt.get("step_in_epoch", 0))
        theirs_steps = int(ckpt.get("steps_per_epoch", self.steps_per_epoch))
        if step and theirs_steps != self.steps_per_epoch:
            step = step * self.steps_per_epoch // theirs_steps
            step -= step % self.args.accum_iter
            logger.warning("%s had %d steps per epoch, this run has %d: continuing the epoch at "
                           "step %d (same fraction)", path, theirs_steps, self.steps_per_epoch,
                           step)
        self.progress = Progress(int(ckpt["epoch"]), step, int(ckpt.get("global_step", 0)))
        self.init_checkpoint = (ckpt.get("meta") or {}).get("init_checkpoint")
        if self.dist.is_main and "rng" in ckpt:
            set_rng_state(ckpt["rng"])
        logger.info("resumed from %s: epoch %d, step %d of it, %d steps done", path,
                    self.progress.epoch + 1, self.progress.step_in_epoch,
                    self.progress.global_step)

    def export_encoder(self) -> Optional[Path]:
        if not self.dist.is_main:
            return None
        cfg = self.model.config
        meta = {"arch": encoder_name(cfg["name"]), "img_size": cfg["img_size"],
                "patch_size": cfg["patch_size"], "embed_dim": cfg["embed_dim"],
                "depth": cfg["depth"], "num_heads": cfg["num_heads"],
                "producer": f"mae-transfer pretrain ({cfg['name']})",
                "epochs_done": self.progress.epoch, "global_step": self.progress.global_step,
                "mask_ratio": self.args.mask_ratio, "norm_pix_loss": self.args.norm_pix_loss,
                "init_checkpoint": self.init_checkpoint}
        with writing_into(self.out):
            path = write_checkpoint(self.model.encoder_state_dict(), self.out / ENCODER, "ours",
                                    meta)
        logger.info("exported the encoder to %s", path)
        return path

    # ------------------------------------------------------------------------------ training
    def loader(self):
        a, cuda = self.args, self.dist.device.type == "cuda"
        workers = max(0, a.num_workers)
        return make_loader(self.dataset, batch_size=a.batch_size, sampler=self.sampler,
                           num_workers=workers, pin_memory=cuda, drop_last=False,
                           persistent_workers=workers > 0,
                           prefetch_factor=4 if workers > 0 else None,
                           worker_init_fn=(functools.partial(worker_init, os.getpid())
                                           if workers > 0 else None))

    def visualize(self, writer: MetricWriter) -> None:
        a = self.args
        if not self.dist.is_main or a.vis_every <= 0 or not a.vis_images:
            return
        done = self.progress.epoch
        if done % a.vis_every and done != a.epochs:
            return
        items = [self.dataset.decoded((0, i))
                 for i in range(min(a.vis_images, len(self.dataset)))]
        imgs = normalize_batch(torch.stack([x for x, _ in items]), self.dist.device)
        noise = torch.stack([n for _, n in items]).to(self.dist.device)
        with torch.autocast(self.dist.device.type, dtype=self.amp_dtype,
                            enabled=self.amp_dtype is not None):
            picture = reconstruction_rows(self.model, imgs, noise, a.mask_ratio)
        with writing_into(self.out):
            path = save_png(picture, self.out / "vis" / f"epoch-{done:04d}.png")
        writer.image("reconstruction", picture, done)
        logger.info("wrote %s (original | masked | reconstruction | + visible)", path)

    def train(self, stop: StopRequest) -> int:
        """Train to the end (or ``--max_steps``, or until ``stop`` is agreed on: then every rank
        leaves after the same optimizer step and rank 0 saves the position)."""
        a, d = self.args, self.dist
        group = cpu_group()  # the per-step stop agreement never waits on a GPU
        train_model: torch.nn.Module = self.model
        no_sync = None
        if d.distributed:
            ddp = torch.nn.parallel.DistributedDataParallel(
                self.model, device_ids=[d.device.index] if d.device.type == "cuda" else None,
                gradient_as_bucket_view=True)
            train_model, no_sync = ddp, ddp.no_sync
        if a.compile:
            train_model = torch.compile(train_model)
        writer = MetricWriter(self.out, Path(a.log_dir or a.output_dir), enabled=d.is_main)
        cfg = StepConfig(
            mask_ratio=a.mask_ratio, accum_iter=a.accum_iter,
            steps_per_epoch=self.steps_per_epoch, epochs=a.epochs,
            log_every=math.ceil(a.log_every / a.accum_iter) * a.accum_iter,
            batch_size=a.batch_size, amp_dtype=self.amp_dtype, clip_grad=a.clip_grad,
            max_steps=a.max_steps,
            lr_fn=lambda e: lr_at(e, a.lr, a.epochs, a.warmup_epochs, a.min_lr))
        logger.info("%s at %d px: %.1fM parameters (%.1fM trainable); %d images, %d steps per "
                    "epoch, total batch %d, lr %.3g; %s, amp %s, %d processes",
                    a.model, a.input_size, sum(p.numel() for p in self.model.parameters()) / 1e6,
                    sum(p.numel() for p in self.model.parameters() if p.requires_grad) / 1e6,
                    len(self.dataset), self.steps_per_epoch,
                    a.batch_size * a.accum_iter * d.world_size, a.lr, d.device,
                    self.amp_dtype or "off", d.world_size)
        loader = None
        try:
            loader = self.loader()  # one loader for the run: its workers persist across epochs
            while self.progress.epoch < a.epochs:
                if a.max_steps is not None and self.progress.global_step >= a.max_steps:
                    break
                self.sampler.set_epoch(self.progress.epoch, self.progress.step_in_epoch)
                t0 = time.perf_counter()
                result = train_one_epoch(train_model, loader, self.optimizer, self.scaler,
                                         cfg, self.progress, d, no_sync=no_sync,
                                         stop_requested=lambda: stop.agree(group),
                                         on_log=writer.scalars)
                if self.progress.step_in_epoch >= self.steps_per_epoch:
                    self.progress.epoch += 1
                    self.progress.step_in_epoch = 0
                    record = {"epoch": self.progress.epoch, "train_loss": result.loss,
                              "lr": result.lr, "images_per_s": result.images_per_s,
                              "global_step": self.progress.global_step,
                              "epoch_time_s": time.perf_counter() - t0}
                    with writing_into(self.out):
                        writer.epoch_record(record)
                    writer.scalars({"epoch/loss": result.loss}, self.progress.epoch)
                    names = [LAST]
                    done = self.progress.epoch
                    if done % a.save_every == 0 or done == a.epochs:
                        names.append(f"checkpoint-{done:04d}.pth")
                    self.save(names)
                    self.visualize(writer)
                if result.stopped:
                    if result.stop_requested:
                        logger.warning("stopped on request after %d steps; continue with "
                                       "--resume auto", self.progress.global_step)
                    break
            if self.progress.step_in_epoch:  # stopped mid-epoch: keep the position
                self.save([LAST])
            self.export_encoder()
        finally:
            if loader is not None:
                stop_workers(loader)  # on success, error and signal alike: no worker outlives us
            writer.close()
        return 0



def claim_output(args, dist_info: DistInfo) -> Optional[OutputDirClaim]:
    """Rank 0 claims ``--output_dir`` (``tools.run_dir``: usable, not another run's, not in use);
    every rank learns whether it could, so that a refusal ends all of them."""
    claim, refusal = None, None
    if dist_info.is_main:
        try:
            claim = claim_output_dir(args.output_dir, resume=bool(args.resume),
                                     overwrite=args.overwrite, run_files=RUN_FILES)
        except OutputDirError as exc:
            refusal = exc
    fail_together(refusal, dist_info.device, lambda ranks: OutputDirError(
        f"rank 0 refused output folder {args.output_dir} (see its error)"))
    return claim


def resume_once(run: "Run", args, dist_info: DistInfo) -> Optional[str]:
    """``--resume``, decided once: rank 0 picks the checkpoint (``auto``: its
    ``OUTPUT_DIR/checkpoint-last.pth`` if present, else none) and every rank resumes from that
    one, or all start afresh. A rank that cannot read it stops every rank (one line each): with
    an output folder that is not shared between nodes, rank 0 would otherwise continue a run
    that the others restart, and the job would hang."""
    choice = resume_path(args) if dist_info.is_main else None
    ckpt = broadcast_object(None if choice is None else str(choice))
    error = None
    if ckpt is not None:
        try:
            run.resume(Path(ckpt))
        except CheckpointError as exc:
            error = (CheckpointError(f"rank {dist_info.rank} cannot resume from {ckpt}, the "
                                     f"checkpoint rank 0 chose (is --output_dir shared by all "
                                     f"nodes?): {exc}")
                     if dist_info.distributed and not dist_info.is_main else exc)
    fail_together(error, dist_info.device, lambda ranks: CheckpointError(
        f"rank {', '.join(map(str, ranks))} cannot resume from {ckpt} (see its error): "
        f"stopping every rank"))
    return ckpt


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    dist_info: Optional[DistInfo] = None
    claim: Optional[OutputDirClaim] = None
    # Installed first: a scheduler's signal during start-up stops the run after its first step.
    stop = StopRequest().install(STOP_SIGNALS)
    try:
        validate(args)
        dist_info = init_distributed(args.device)
        claim = claim_output(args, dist_info)
        setup_logging(Path(args.output_dir) if dist_info.is_main else None, dist_info.rank)
        if dist_info.device.type == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
            torch.backends.cudnn.benchmark = True
        logger.info("arguments: %s", " ".join(f"--{k} {v}" for k, v in vars(args).items()))
        run = Run(args, dist_info)
        ckpt = resume_once(run, args, dist_info)
        if ckpt is not None:
            if args.init:
                logger.info("--init %s ignored: continuing the run from %s", args.init, ckpt)
        else:
            if args.resume == "auto":
                logger.info("--resume auto: no %s in %s, starting %s", LAST, args.output_dir,
                            f"from --init {args.init}" if args.init else "from scratch")
            if args.init:
                run.init_from(args.init)
        return run.train(stop)
    except NonFiniteLoss as exc:
        last = Path(args.output_dir) / LAST
        kept = f"last good checkpoint: {last}" if last.is_file() else "no checkpoint was written"
        logging.getLogger("mae_transfer.pretrain").error(
            "stopping: %s; %s (lower --blr, use bf16 rather than fp16, or check the data)",
            exc, kept)
        return 1
    except (DatasetError, CheckpointError, ValueError) as exc:  # OutputDirError is a ValueError
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"interrupted: stopped without saving; {LAST} in {args.output_dir} holds the last "
              f"saved position", file=sys.stderr)
        return 130
    finally:
        stop.uninstall()
        if claim is not None:
            claim.release()
        if dist_info is not None:
            cleanup()
            teardown_logging()


if __name__ == "__main__":
    sys.exit(main())
