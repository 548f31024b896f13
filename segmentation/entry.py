"""What ``tools/train_seg.py`` and ``tools/test_seg.py`` do: read a config, adapt it, run MMEngine.

The config adaptations, each logged, are what a user would otherwise edit by hand:

- ``--data-root``: one path for the train / val / test sets (ADE20K or any folder in its layout);
  when the root has a ``classes.txt``, the decode and auxiliary heads get that many classes; any
  other difference between the data's classes and the heads' is an error before the run starts
  (``segmentation.class_count``).
- ``--pretrained``: the backbone's weights (any format ``backbones.load_pretrained`` reads).
- device: MMEngine's ``AmpOptimWrapper`` is GPU only; without CUDA the run uses a plain
  ``OptimWrapper`` (fp32), so the same config runs on a laptop.
- processes (``segmentation.distributed``): a process started by torchrun without ``--launcher``
  joins as a real rank; without CUDA ``--launcher pytorch`` runs on gloo with DDP on the CPU (a
  test mode); ``SyncBN`` becomes ``BN`` on a CPU or in one process; ``--resume`` is decided by
  rank 0 for every rank.
- the ``SegResultsJSONHook`` is added if a config lacks it, so every evaluation leaves JSON.
- checkpoints are written whole or not at all (the ``atomic_local`` backend) even where a config
  does not ask for it, and the Runner is ``FullCheckpointRunner`` (reads its own checkpoints on
  torch >= 2.6) unless the config names another ``runner_type``.
- the ``FiniteLossHook`` is added for training if a config lacks it (a NaN loss stops the run; no
  NaN checkpoint).
- ``--resume`` (latest checkpoint in the work dir, or a given file), ``--compile`` (torch.compile
  of the backbone; see ``compile_backbone``).
- the ``StopOnSignalHook`` is added for training (SIGTERM / SIGUSR1: stop after the current
  iteration with a checkpoint, exit 0).
- the image / label loaders of every pipeline are replaced by checked ones
  (``segmentation.data_checks``): a file that does not decode, or a label value the heads have no
  class for (16-bit label maps read as stored), is one line naming the file.
- ``--cfg-options``: each key is checked against the config first (``config_overrides``): a key
  the config does not have is one line naming the closest one, not a silently added key.
- ``--tta`` (or ``tta=True`` in the config): the test set reads ``tta_pipeline`` and the model is
  ``tta_model`` around the segmentor (``segmentation.tta``), for an evaluation only; the
  results JSON says what was used (``"tta"``: ratios, flip, ...; None without).
"""
from __future__ import annotations

import argparse
import logging
import os.path as osp
from typing import Iterator, List, Optional

import torch
from mmengine.config import Config, DictAction
from mmengine.logging import print_log

from mae_transfer.segmentation.class_count import check_num_classes, head_cfgs
from mae_transfer.segmentation.config_overrides import checked_options
from mae_transfer.segmentation.data_checks import use_checked_loaders
from mae_transfer.segmentation.datasets import read_class_names
from mae_transfer.segmentation.distributed import (choose_launcher, decide_resume,
                                                   start_process_group, stop_if_any_failed,
                                                   sync_bn_to_bn)
from mae_transfer.segmentation.file_backend import ATOMIC_BACKEND_ARGS
from mae_transfer.segmentation.hooks import SegResultsJSONHook
from mae_transfer.segmentation.stop_hook import StopOnSignalHook
from mae_transfer.segmentation.runner import FullCheckpointRunner
from mae_transfer.segmentation.tta import describe_tta, use_tta_pipeline, wrap_tta_model


def add_common_args(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("config", help="MMSeg config file (see segmentation/configs/)")
    ap.add_argument("--work-dir", help="where logs, checkpoints and results go "
                                       "(default: ./work_dirs/<config name>)")
    ap.add_argument("--data-root", help="dataset root in the ADE20K layout "
                                        "(images/{training,validation}, annotations/...)")
    ap.add_argument("--cfg-options", nargs="+", action=DictAction, default={},
                    help="override config entries, e.g. train_cfg.max_iters=100")
    ap.add_argument("--launcher", choices=["none", "pytorch", "slurm", "mpi"], default="none",
                    help="job launcher (pytorch: run under torchrun for multi-GPU)")
    ap.add_argument("--local_rank", "--local-rank", type=int, default=0, help=argparse.SUPPRESS)


def _datasets(cfg: Config) -> Iterator[dict]:
    """Every dataset dict of the train / val / test loaders, wrappers (Concat, Repeat) unwrapped."""
    def walk(ds):
        if not isinstance(ds, dict):
            return
        if "dataset" in ds:
            yield from walk(ds["dataset"])
        elif "datasets" in ds:
            for sub in ds["datasets"]:
                yield from walk(sub)
        else:
            yield ds

    for key in ("train_dataloader", "val_dataloader", "test_dataloader"):
        loader = cfg.get(key)
        if isinstance(loader, dict):
            yield from walk(loader.get("dataset"))


def set_data_root(cfg: Config, data_root: str) -> None:
    if not osp.isdir(data_root):
        raise FileNotFoundError(f"--data-root {data_root} is not a folder")
    cfg.data_root = data_root
    for ds in _datasets(cfg):
        ds["data_root"] = data_root
    print_log(f"data root: {data_root}", logger="current")


def sync_num_classes(cfg: Config) -> Optional[List[str]]:
    """Give the heads as many classes as the train set's ``classes.txt`` lists (if it has one)."""
    roots = {ds.get("data_root") for ds in _datasets(cfg)}
    names_by_root = {r: read_class_names(r) for r in roots if r}
    lists = {tuple(n) for n in names_by_root.values() if n is not None}
    if len(lists) > 1:
        raise ValueError(f"the train / val / test sets list different classes: "
                         f"{ {r: n for r, n in names_by_root.items()} }")
    if not lists:
        return None
    names = list(lists.pop())
    for _, head in head_cfgs(cfg.model):
        if head.get("num_classes") != len(names):
            print_log(f"{head.get('type')}: num_classes {head.get('num_classes')} -> "
                      f"{len(names)} (classes.txt: {', '.join(names[:8])}"
                      f"{' ...' if len(names) > 8 else ''})", logger="current")
            head["num_classes"] = len(names)
    return names


def set_pretrained(cfg: Config, path: str) -> None:
    """``--pretrained PATH``: a weights file, or a Hugging Face ``save_pretrained`` folder (the
    one reader reads both; a folder it cannot read stops with its one line at load time)."""
    if not (osp.isfile(path) or osp.isdir(path)):
        raise FileNotFoundError(f"--pretrained {path}: no such file or folder")
    cfg.model.pretrained = None
    cfg.model.backbone.pretrained = path
    cfg.model.backbone.pop("init_cfg", None)


def adapt_to_device(cfg: Config, cuda: Optional[bool] = None) -> None:
    """Without CUDA: AmpOptimWrapper -> OptimWrapper (fp32), and SyncBN -> BN, logged.

    ``--launcher slurm`` / ``mpi`` are refused without CUDA (MMEngine binds each process to a
    CUDA device there); ``--launcher pytorch`` runs on gloo (``distributed.start_process_group``).
    """
    cuda = torch.cuda.is_available() if cuda is None else cuda
    sync_bn_to_bn(cfg, cuda)
    if cuda:
        return
    if cfg.get("launcher", "none") not in ("none", "pytorch"):
        raise ValueError(f"--launcher {cfg.launcher} needs GPUs (MMEngine binds each process to a "
                         f"CUDA device); on a CPU use torchrun and --launcher pytorch (gloo)")
    ow = cfg.get("optim_wrapper")
    if isinstance(ow, dict) and ow.get("type") == "AmpOptimWrapper":
        for key in ("dtype", "loss_scale", "use_fsdp"):
            ow.pop(key, None)
        ow["type"] = "OptimWrapper"
        print_log("no CUDA: AmpOptimWrapper -> OptimWrapper (fp32 training)", logger="current",
                  level=logging.WARNING)


def ensure_hook(cfg: Config, hook_type: str) -> dict:
    """The config's ``custom_hooks`` entry of ``hook_type``, appended if the config lacks it."""
    hooks = list(cfg.get("custom_hooks", []) or [])
    found = [h for h in hooks if h.get("type") == hook_type]
    if not found:
        hooks.append(dict(type=hook_type))
        found = hooks[-1:]
    cfg.custom_hooks = hooks
    return found[0]


def ensure_results_hook(cfg: Config, test_json: Optional[str] = None,
                        test_info: Optional[dict] = None) -> None:
    hook = ensure_hook(cfg, "SegResultsJSONHook")
    if test_json:
        hook["test_json"] = test_json
    if test_info:
        hook["test_info"] = test_info


def load_config(args) -> Config:
    """Read ``args.config`` and apply the command-line adaptations shared by train and test."""
    if not osp.isfile(args.config):
        raise FileNotFoundError(f"no config file {args.config}")
    cfg = Config.fromfile(args.config)
    cfg.launcher = args.launcher
    choose_launcher(cfg)
    if args.cfg_options:
        cfg.merge_from_dict(checked_options(cfg, args.cfg_options))
    cfg.work_dir = (args.work_dir or cfg.get("work_dir")
                    or osp.join("work_dirs", osp.splitext(osp.basename(args.config))[0]))
    if args.data_root:
        set_data_root(cfg, args.data_root)
    sync_num_classes(cfg)
    check_num_classes(_datasets(cfg), cfg.model)
    choose_tta(cfg, args)
    check_data_at_load_time(cfg)
    adapt_to_device(cfg)
    start_process_group(cfg)
    return cfg


def choose_tta(cfg: Config, args) -> None:
    """``--tta`` or the config's ``tta=True``: an evaluation with ``tta_pipeline`` (the model is
    wrapped in ``run_test``, after the checks that read the segmentor's config). Training refuses
    it (one line): validation during training stays single-scale."""
    if getattr(args, "tta", False):
        cfg.tta = True
    if not cfg.get("tta"):
        return
    if not getattr(args, "eval_only", False):
        raise ValueError("--tta / tta=True is test-time augmentation for an evaluation: give "
                         "--eval-only --checkpoint CKPT (or use tools/test_seg.py); validation "
                         "during training is single-scale")
    use_tta_pipeline(cfg)


def check_data_at_load_time(cfg: Config) -> None:
    """MMSeg's image / label loaders -> ``segmentation.data_checks``' checked ones, which name
    the file that does not decode or holds a label the heads have no class for."""
    heads = head_cfgs(cfg.model)
    num_classes = heads[0][1].get("num_classes") if heads else None
    replaced = sum(use_checked_loaders(ds.get("pipeline"), num_classes,
                                       ds.get("ignore_index", 255)) for ds in _datasets(cfg))
    if replaced:
        print_log(f"data checks: {replaced} image / label loaders replaced by the checked ones "
                  f"(label values checked against {num_classes} classes)", logger="current")


def ensure_atomic_checkpoints(cfg: Config) -> None:
    """A local checkpoint hook without backend settings writes through ``atomic_local``.

    Our configs select it themselves (``segmentation/file_backend.py``); a config from elsewhere
    gets it here, so a crash mid-save never leaves a truncated checkpoint behind either.
    """
    hook = (cfg.get("default_hooks") or {}).get("checkpoint")
    if (not isinstance(hook, dict) or hook.get("backend_args") or hook.get("file_client_args")
            or "://" in str(hook.get("out_dir") or "")):
        return
    hook["backend_args"] = dict(ATOMIC_BACKEND_ARGS)
    print_log(f"checkpoint hook: backend_args={ATOMIC_BACKEND_ARGS} (atomic writes)",
              logger="current")


def build_runner(cfg: Config):
    """The config's ``runner_type``, else ``FullCheckpointRunner`` (reads its own checkpoints)."""
    if "runner_type" in cfg:
        from mmengine.registry import RUNNERS
        return RUNNERS.build(cfg)
    return FullCheckpointRunner.from_cfg(cfg)


def results_hook(runner):
    """The run's ``SegResultsJSONHook`` (``ensure_results_hook`` adds it to every config)."""
    return next(h for h in runner.hooks if isinstance(h, SegResultsJSONHook))


def format_metrics(record: dict) -> str:
    m = record.get("metrics", {})
    return "  ".join(f"{k} {v:.2f}" for k, v in m.items())


def resolve_resume(cfg: Config, resume: Optional[str]) -> None:
    """``--resume`` alone: the work dir's ``last_checkpoint``; ``--resume FILE``: that file."""
    if resume is None:
        return
    cfg.resume = True
    if resume == "auto":  # rank 0 picks the checkpoint (or none) for every rank
        cfg.load_from = None
        decide_resume(cfg)
        if not cfg.resume:
            return
    else:  # every rank needs the file (a folder not shared between nodes may lack it)
        stop_if_any_failed(None if osp.isfile(resume) else "no such file", f"--resume {resume}",
                           single=FileNotFoundError)
        cfg.load_from = resume
    # Every weight comes from the run's checkpoint: the pretraining file is not needed (and may
    # have moved since the run started).
    if cfg.model.backbone.get("pretrained"):
        cfg.model.backbone.pretrained = None


def run_test(cfg: Config, checkpoint: str, out: Optional[str] = None) -> Optional[dict]:
    """Evaluate ``checkpoint`` on the test set; returns the record written (rank 0; else None)."""
    stop_if_any_failed(None if osp.isfile(checkpoint) else "no such file",  # on every rank
                       f"--checkpoint {checkpoint}", single=FileNotFoundError)
    cfg.load_from = checkpoint
    cfg.resume = False
    # The weights come from the checkpoint: do not read the pretraining file at all.
    cfg.model.pretrained = None
    if "pretrained" in cfg.model.backbone:
        cfg.model.backbone.pretrained = None
    tta = describe_tta(cfg) if cfg.get("tta") else None
    if tta:
        wrap_tta_model(cfg)
    out = out or osp.join(cfg.work_dir, "test_results.json")
    ensure_results_hook(cfg, test_json=out, test_info={"tta": tta})
    runner = build_runner(cfg)
    runner.test()
    return results_hook(runner).last_test


def compile_backbone(runner, options) -> None:
    """``torch.compile`` the segmentor's backbone in place (parameter names unchanged).

    Not MMEngine's own ``cfg.compile``, which compiles the whole ``train_step``: its guards on
    each batch's metadata (the image paths inside the data samples) recompile the data
    preprocessor at every iteration (measured on the CPU: 12 s an iteration instead of 0.2 s).
    ``options``: True, or a dict of ``torch.compile`` keyword arguments (``backend=...``).
    """
    kwargs = dict(options) if isinstance(options, dict) else {}
    model = getattr(runner.model, "module", runner.model)  # under DDP: the wrapped segmentor
    model.backbone.compile(**kwargs)
    print_log(f"torch.compile: {type(model.backbone).__name__} compiled in place "
              f"({kwargs or 'default options'})", logger="current")


def run_train(cfg: Config):
    """Train; returns the runner (``final_validation`` / ``stopped_by_signal`` read it)."""
    ensure_results_hook(cfg)
    ensure_atomic_checkpoints(cfg)
    ensure_hook(cfg, "FiniteLossHook")  # a NaN loss stops the run; no NaN checkpoint is saved
    ensure_hook(cfg, "StopOnSignalHook")  # SIGTERM / SIGUSR1: stop after this step, saved
    options = cfg.pop("compile", None)
    runner = build_runner(cfg)
    if options:
        compile_backbone(runner, options)
    runner.train()
    return runner


def final_validation(runner) -> Optional[dict]:
    """The validation of the run's last iteration (rank 0; None elsewhere or if there was none)."""
    record = results_hook(runner).last_val
    return record if record and record.get("iter") == runner.iter else None


def stopped_by_signal(runner):
    """The ``StopOnSignalHook`` if it stopped the run, else None."""
    hook = next((h for h in runner.hooks if isinstance(h, StopOnSignalHook)), None)
    return hook if hook is not None and hook.stopped_at is not None else None


def error_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    if text and text[0].startswith("Caught ") and "DataLoader worker" in text[0]:
        # torch re-raises a loader worker's error with the worker's traceback as the message:
        # its last line ("module.Error: message") is the one that says what happened
        return f"{type(exc).__name__}: {text[-1].partition(': ')[2] or text[-1]}"
    return f"{type(exc).__name__}: {text[0] if text else ''}"
