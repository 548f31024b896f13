"""The training / evaluation run behind ``tools/train_det.py`` (one process per GPU).

Detectron2's LazyConfig conventions: a python config with ``model``, ``dataloader`` (train, test,
evaluator), ``optimizer``, ``lr_multiplier`` and ``train``; ``detectron2.engine`` hooks for the lr
schedule, periodic checkpoints, periodic COCO evaluation and metric writers (log, metrics.json,
TensorBoard). What is ours:

- the optimizer's parameter groups come from ``tools.lr_decay.param_groups`` (layer decay); each
  group's ``lr`` is already ``base lr * lr_scale``, and Detectron2's ``LRMultiplier`` multiplies
  every group's initial lr by the schedule, so the decay survives warm-up and steps;
- ``AutocastTrainer``: the forward under ``torch.autocast`` (bf16 by default, fp16 with a
  GradScaler) on GPU, in fp32 on CPU; Detectron2's ``AMPTrainer`` is fp16-only, CUDA-only and its
  API differs across versions;
- ``train.init_checkpoint`` loads any ViT checkpoint into ``model.backbone.net``
  (``detection.checkpointing``); ``--resume`` restores model, optimizer, scheduler, iteration,
  from the one checkpoint rank 0 chose for every process (``detection.resume``);
- SIGTERM / SIGUSR1 (``tools.preemption``): ``StopOnRequest`` stops every process after the
  same step, rank 0 saves ``model_<iter>.pth``, the run returns normally (exit status 0);
- on a CPU, DDP without device ids or fp16 gradient compression (gloo: ``detection.launch``);
- optional ``train.compile``: ``torch.compile`` of each ViT block in place (names unchanged;
  ``True`` or a dict of ``torch.compile`` keyword arguments);
- ``train.amp.cpu=True``: the bf16 autocast path on a CPU (tests of the GPU path; off by default,
  since CPU bf16 is slower than fp32 on most CPUs);
  ``train.cpu_threads``: torch's thread count for CPU runs (0: torch's default);
- a diverged run (Detectron2's ``FloatingPointError`` on a non-finite loss, box or score, or
  non-finite weights at a checkpoint) ends as one ``TrainingDiverged`` line naming the iteration;
  no checkpoint of non-finite weights is written and ``last_checkpoint`` keeps its last good one;
- an image the data loader cannot read (``DatasetError`` from ``detection/mapper.py``) is one line
  in the train loop's log too, and a training split without annotations is one line naming its
  json (``build_train_loader``).
- a write that fails (a full disk while a checkpoint, ``coco_eval.json`` or a log is written) is
  logged in one line, ends the run with that ``OSError`` (the metric writers' own failure after it
  does not replace it), and ``last_checkpoint`` keeps the previous checkpoint (atomic writes).
"""
from __future__ import annotations

import logging
import sys
import time
from typing import Mapping, Optional

import torch

from mae_transfer.detection import compat

compat.setup()  # Detectron2 v0.6 cannot be imported without it (no compiled _C, Image.LINEAR)
from detectron2.config import instantiate  # noqa: E402
from detectron2.engine import (SimpleTrainer, create_ddp_model, default_setup,  # noqa: E402
                               default_writers, hooks)
from detectron2.utils import comm  # noqa: E402
from detectron2.utils.logger import setup_logger  # noqa: E402

from mae_transfer.detection.checkpointing import (AtomicCheckpointer,  # noqa: E402
                                                  load_init_checkpoint)
from mae_transfer.detection.cli import (UsageError, apply_cpu_threads,  # noqa: E402
                                        register_datasets)
from mae_transfer.detection.config_overrides import load_config  # noqa: E402
from mae_transfer.detection.datasets import (DatasetError, check_num_classes,  # noqa: E402
                                             no_training_data)
from mae_transfer.detection.evaluation import evaluate  # noqa: E402
from mae_transfer.detection.launch import no_gpu_message  # noqa: E402
from mae_transfer.detection.resume import decide_resume  # noqa: E402
from mae_transfer.tools.divergence import TrainingDiverged, diverged  # noqa: E402
from mae_transfer.tools.preemption import StopRequest  # noqa: E402

logger = logging.getLogger("mae_transfer.detection")

_AMP_DTYPES = {"bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
               "float16": torch.float16, "fp16": torch.float16}


class AutocastTrainer(SimpleTrainer):
    """``SimpleTrainer`` whose forward runs under ``torch.autocast(device_type, amp_dtype)``.

    ``amp_dtype=None`` trains in fp32. fp16 scales the loss with a GradScaler (saved in training
    checkpoints); bf16 has fp32's range and needs none.
    """

    def __init__(self, model, data_loader, optimizer, amp_dtype: Optional[torch.dtype] = None,
                 device_type: str = "cuda"):
        super().__init__(model, data_loader, optimizer)
        self.amp_dtype = amp_dtype
        self.device_type = device_type
        self.grad_scaler = (torch.amp.GradScaler(device_type)
                            if amp_dtype == torch.float16 else None)

    def run_step(self):
        assert self.model.training, "[AutocastTrainer] model was changed to eval mode!"
        start = time.perf_counter()
        data = next(self._data_loader_iter)
        data_time = time.perf_counter() - start
        with torch.autocast(self.device_type, dtype=self.amp_dtype or torch.float32,
                            enabled=self.amp_dtype is not None):
            loss_dict = self.model(data)
        if isinstance(loss_dict, torch.Tensor):
            loss_dict = {"total_loss": loss_dict}
        losses = sum(loss_dict.values())
        self.optimizer.zero_grad(set_to_none=True)
        if self.grad_scaler is not None:
            self.grad_scaler.scale(losses).backward()
        else:
            losses.backward()
        if hasattr(self, "after_backward"):  # hook point of newer Detectron2 versions
            self.after_backward()
        self._write_metrics(loss_dict, data_time)
        if self.grad_scaler is not None:
            self.grad_scaler.step(self.optimizer)
            self.grad_scaler.update()
        else:
            self.optimizer.step()

    def after_train(self):
        # Detectron2 runs every hook's after_train even when a step raised (its ``finally``); a run
        # stopped short (e.g. diverged at its last iteration) gets no "final" checkpoint or eval.
        if self.iter < self.max_iter:
            finishing = (hooks.PeriodicCheckpointer, hooks.EvalHook)
            self._hooks = [h for h in self._hooks if not isinstance(h, finishing)]
        failed = sys.exc_info()[1]  # the error that ended training, if one did
        try:
            super().after_train()
        except OSError as exc:
            if failed is None:
                raise
            # e.g. the metric writers' flush on the disk that is full: the first error is the one
            # to report (it names the checkpoint that could not be written)
            logger.warning("after the error, the metric writers failed too: %s", exc)

    def state_dict(self):
        state = super().state_dict()
        if self.grad_scaler is not None:
            state["grad_scaler"] = self.grad_scaler.state_dict()
        return state

    def load_state_dict(self, state_dict):
        super().load_state_dict(state_dict)
        if self.grad_scaler is not None and "grad_scaler" in state_dict:
            self.grad_scaler.load_state_dict(state_dict["grad_scaler"])


def amp_dtype(cfg) -> Optional[torch.dtype]:
    """The autocast dtype for this run: None (fp32) unless ``train.amp.enabled`` on a GPU."""
    amp = cfg.train.get("amp", {})
    if not amp.get("enabled", False):
        return None
    name = str(amp.get("dtype", "bfloat16"))
    if name not in _AMP_DTYPES:
        raise UsageError(f"train.amp.dtype must be one of {sorted(_AMP_DTYPES)}, got {name!r}")
    if not str(cfg.train.device).startswith("cuda"):
        if not amp.get("cpu", False):
            logger.info("train.amp.enabled ignored: mixed precision is for GPUs; training in fp32 "
                        "(train.amp.cpu=True runs the bf16 path on the CPU, to test it)")
            return None
        if _AMP_DTYPES[name] is not torch.bfloat16:
            raise UsageError(f"train.amp.cpu=True: CPU autocast is bfloat16 only, got {name!r}")
    return _AMP_DTYPES[name]


def build_model(cfg) -> torch.nn.Module:
    """Instantiate ``cfg.model`` on ``cfg.train.device`` (compiled blocks if ``train.compile``)."""
    model = instantiate(cfg.model).to(str(cfg.train.device))
    options = cfg.train.get("compile", False)
    if options:
        # True, or torch.compile's keyword arguments (e.g. {"backend": "aot_eager"})
        kwargs = dict(options) if isinstance(options, Mapping) else {}
        for block in model.backbone.net.blocks:
            block.compile(**kwargs)  # in place: parameter names (and checkpoints) stay the same
    logger.info("model: %.1fM parameters (%.1fM in the ViT)",
                sum(p.numel() for p in model.parameters()) / 1e6,
                sum(p.numel() for p in model.backbone.net.parameters()) / 1e6)
    return model


def build_optimizer(cfg, model: torch.nn.Module) -> torch.optim.Optimizer:
    """The config's optimizer; its ``params`` node receives the model (layer-decay groups)."""
    cfg.optimizer.params.model = model
    optimizer = instantiate(cfg.optimizer)
    del cfg.optimizer.params.model  # keep the config printable / savable
    return optimizer


def setup(args):
    """Load the config + overrides, set up logging / seed / config copy, register datasets."""
    cfg = load_config(args.config_file, args.opts)
    device = str(cfg.train.device)
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UsageError(no_gpu_message(device))
    default_setup(cfg, args)
    setup_logger(cfg.train.output_dir, distributed_rank=comm.get_rank(), name="mae_transfer")
    apply_cpu_threads(cfg, cfg.train.device)
    register_datasets(args)
    return cfg


def ddp_options(cfg) -> dict:
    """``train.ddp`` for ``create_ddp_model``; on a CPU (gloo) without ``device_ids`` (Detectron2
    would pass the local rank as a GPU index) and without fp16 gradient compression."""
    options = dict(cfg.train.ddp)
    if not str(cfg.train.device).startswith("cuda"):
        options.update(device_ids=None, fp16_compression=False)
    return options


class StopTraining(BaseException):
    """Raised by ``StopOnRequest`` to leave Detectron2's train loop after a step. Not an
    ``Exception``: the loop logs those with a traceback; this one only runs ``after_train``."""

    def __init__(self, iteration: int):
        super().__init__(iteration)
        self.iteration = iteration


class StopOnRequest(hooks.HookBase):
    """After every step, ``stop.agree()`` (one all-reduce): if any process got SIGTERM / SIGUSR1,
    rank 0 saves ``model_<iter>.pth`` (``last_checkpoint`` names it, ``--resume`` continues at the
    next iteration), all processes wait for it and leave the loop together (``StopTraining``)."""

    def __init__(self, stop: StopRequest, checkpointer):
        self.stop, self.checkpointer = stop, checkpointer

    def after_step(self):
        if not self.stop.agree():
            return
        iteration = self.trainer.iter
        self.checkpointer.save(f"model_{iteration:07d}", iteration=iteration)  # rank 0 only
        comm.synchronize()
        logger.warning("stop requested: stopped after iteration %d of %d, checkpoint saved in %s "
                       "(--resume continues at iteration %d)", iteration, self.trainer.max_iter,
                       self.checkpointer.save_dir, iteration + 1)
        raise StopTraining(iteration)


def do_train(cfg, args, model: torch.nn.Module, train_loader, stop: StopRequest) -> None:
    optimizer = build_optimizer(cfg, model)
    dtype = amp_dtype(cfg)
    trainer = AutocastTrainer(create_ddp_model(model, **ddp_options(cfg)), train_loader, optimizer,
                              amp_dtype=dtype, device_type=str(cfg.train.device).split(":")[0])
    checkpointer = AtomicCheckpointer(model, cfg.train.output_dir, trainer=trainer)
    trainer.register_hooks([
        hooks.IterationTimer(),
        hooks.LRScheduler(scheduler=instantiate(cfg.lr_multiplier)),
        hooks.PeriodicCheckpointer(checkpointer, **cfg.train.checkpointer)
        if comm.is_main_process() else None,
        StopOnRequest(stop, checkpointer),  # after the lr step, before a periodic evaluation
        # Labelled with the number of completed iterations (30 = after the 30th step; the
        # final evaluation runs after training, when trainer.iter == max_iter).
        hooks.EvalHook(cfg.train.eval_period,
                       lambda: evaluate(cfg, model, min(trainer.iter + 1, cfg.train.max_iter))),
        hooks.PeriodicWriter(default_writers(cfg.train.output_dir, cfg.train.max_iter),
                             period=cfg.train.log_period)
        if comm.is_main_process() else None,
    ])
    resume_from = decide_resume(lambda: latest_checkpoint(checkpointer, args.resume))
    if resume_from:
        checkpointer.load(resume_from)  # model, optimizer, scheduler, iteration (trainer state)
        start_iter = trainer.iter + 1
        logger.info("resumed from %s: continuing at iteration %d of %d",
                    resume_from, start_iter, cfg.train.max_iter)
    else:
        if args.resume:
            logger.info("--resume: no checkpoint in %s yet; starting from train.init_checkpoint",
                        cfg.train.output_dir)
        load_init_checkpoint(model, cfg.train.init_checkpoint)
        start_iter = 0
    logger.info("training iterations %d..%d on %s (%s)", start_iter, cfg.train.max_iter - 1,
                cfg.train.device, f"autocast {dtype}" if dtype else "fp32")
    _log_errors_in_one_line()
    try:
        trainer.train(start_iter, cfg.train.max_iter)
    except StopTraining:
        return
    except TrainingDiverged:
        raise
    except FloatingPointError as exc:  # Detectron2's checks: a non-finite loss, boxes or scores
        raise diverged(f"iteration {trainer.iter}", str(exc).strip().splitlines()[0],
                       cfg.train.output_dir) from None


def latest_checkpoint(checkpointer, resume: bool) -> Optional[str]:
    """The file ``--resume`` continues from (``last_checkpoint``), None without --resume or one."""
    return checkpointer.get_checkpoint_file() if resume and checkpointer.has_checkpoint() else None


class _OneLineErrors(logging.Filter):
    """Detectron2's train loop logs any exception with its traceback. A diverged run (a
    ``FloatingPointError``: the user's lr rather than a bug), an image the data loader cannot read
    (a ``DatasetError``) and an ``OSError`` (a full disk; ``tools/train_det.py`` reports it in one
    line) get one line there instead."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, (FloatingPointError, DatasetError, OSError)):
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            record.msg = f"{record.getMessage()} {type(exc).__name__}: {first}"
            record.args, record.exc_info, record.exc_text = None, None, None
        return True


def _log_errors_in_one_line() -> None:
    train_loop_logger = logging.getLogger("detectron2.engine.train_loop")
    if not any(isinstance(f, _OneLineErrors) for f in train_loop_logger.filters):
        train_loop_logger.addFilter(_OneLineErrors())


def build_train_loader(cfg):
    """``cfg.dataloader.train``; a training split with no annotated image (Detectron2's
    ``get_detection_dataset_dicts`` asserts) is one line naming its json files."""
    try:
        return instantiate(cfg.dataloader.train)
    except AssertionError as exc:
        if "No valid data found" not in str(exc):
            raise
        raise no_training_data(cfg.dataloader.train.dataset.names) from None


def main(args) -> Optional[dict]:
    """One process: evaluation only, or training (with periodic and final evaluation)."""
    cfg = setup(args)
    if args.eval_only:
        model = build_model(cfg)
        checkpointer = AtomicCheckpointer(model, cfg.train.output_dir)
        resume_from = decide_resume(lambda: latest_checkpoint(checkpointer, args.resume))
        if resume_from:
            checkpointer.load(resume_from, checkpointables=[])
        else:
            load_init_checkpoint(model, cfg.train.init_checkpoint)
        return evaluate(cfg, model)
    # SIGTERM / SIGUSR1 from here on: remembered, and acted on after the first step it meets
    stop = StopRequest().install()
    try:
        # Data first: a broken dataset is reported before minutes of building a large model.
        train_loader = build_train_loader(cfg)  # loads the train json (sets its classes)
        check_num_classes(cfg.dataloader.train.dataset.names, cfg.model.roi_heads.num_classes)
        do_train(cfg, args, build_model(cfg), train_loader, stop)
    finally:
        stop.uninstall()
    return None
