"""Train or evaluate a ViTDet-style Mask R-CNN on the shared ViT (Detectron2 LazyConfig).

    python tools/train_det.py --config detection/configs/mask_rcnn_vitdet_b_coco.py \
        [--eval-only] [--resume] [--num-gpus N] [--num-machines M --machine-rank R --dist-url URL] \
        [--dataset NAME=JSON:IMAGES | --dataset NAME=DIR] [--coco-root DIR] [key=value ...]

Flags come first; ``key=value`` config overrides (Detectron2's dotted LazyConfig paths, e.g.
``train.max_iter=1000 train.init_checkpoint=mae.safetensors``) come last. An override that names
no config key (``train.max_iters=3``), or a word where the config has a number, is refused in one
line naming the closest key; ``+key=value`` adds a key on purpose.

Datasets: ``coco_2017_{train,val}`` are registered from ``--coco-root`` (default
``$DETECTRON2_DATASETS``, else ``./datasets``) ``/coco/{train2017,val2017,annotations}``. Bring your
own COCO-format data with ``--dataset NAME=path/to/x.json:path/to/images`` (one split) or
``--dataset NAME=DIR`` (each ``DIR/annotations/instances_<split>.json`` becomes ``NAME_<split>``),
then point the config at it: ``dataloader.train.dataset.names=NAME_train
dataloader.test.dataset.names=NAME_val model.roi_heads.num_classes=K``.

Outputs in ``train.output_dir``: log.txt, config.yaml, metrics.json, TensorBoard events,
``model_*.pth`` + ``last_checkpoint`` (for ``--resume``), ``coco_eval.json`` (latest AP numbers) and
``inference/`` (per-evaluation JSON, COCO-format predictions). A folder that holds another run
(``last_checkpoint``, ``model_*.pth``, ``metrics.json``) is refused unless ``--resume`` continues
it or ``--overwrite`` replaces it; one in use by a running training is refused. Bad input (a
missing file, a broken annotation, a checkpoint that does not fit) and an output folder that
cannot be written (missing and not creatable, read-only, a disk that fills up mid-run) end with one
``error:`` line naming the file or folder and exit status 2, also when it happens in the processes
of ``--num-gpus N``; a failed checkpoint write leaves the previous checkpoint the latest.

Processes (``detection/launch.py``): ``--num-gpus N`` starts N per machine, on a CPU config
(``train.device=cpu``) too, with gloo (a test mode). Not for torchrun / srun (``WORLD_SIZE`` > 1
is refused in one line). SIGTERM or SIGUSR1 (SLURM ``--signal``): every process finishes its
step, rank 0 saves ``model_<iter>.pth``, exit status 0; ``--resume`` continues from it.
"""
from __future__ import annotations

import contextlib
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from mae_transfer import detection  # noqa: E402

detection.setup()  # the framework fixes (detection/compat.py), before any detectron2 import
from detectron2.engine import default_argument_parser  # noqa: E402

from mae_transfer.detection.cli import add_dataset_arguments, run_reporting_input_errors  # noqa: E402
from mae_transfer.detection.config_overrides import load_config  # noqa: E402
from mae_transfer.detection.launch import (WorkersFailed, check_launch,  # noqa: E402
                                           check_not_under_torchrun, launch)
from mae_transfer.detection.training import main as run_process  # noqa: E402
from mae_transfer.tools.run_dir import (OutputDirError, claim_output_dir,  # noqa: E402
                                        writing_into)

#: What marks ``train.output_dir`` as holding a run: a new run there needs --resume or --overwrite.
RUN_FILES = ("last_checkpoint", "model_*.pth", "metrics.json")


def build_parser():
    parser = default_argument_parser(epilog=__doc__.split("\n\n", 1)[1])
    parser.add_argument("--config", dest="config_file", metavar="FILE",
                        help="LazyConfig python file (same as --config-file)")
    add_dataset_arguments(parser)
    parser.add_argument("--overwrite", action="store_true",
                        help="train in a train.output_dir that holds another run (its "
                             "checkpoints and metrics.json are removed first)")
    return parser


def parse_args(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.config_file:
        parser.error("--config FILE is required")
    bad = [o for o in args.opts or [] if o.startswith("-") or "=" not in o]
    if bad:
        parser.error(f"config overrides must be key=value and come after the flags; got {bad}")
    return args


def claim_output(args, folder: str):
    """Training claims ``folder`` (``train.output_dir``, ``tools.run_dir``) in the launching
    process of machine 0, for the whole run; evaluation and other machines claim nothing."""
    if args.eval_only or args.machine_rank != 0:
        return contextlib.nullcontext()
    return claim_output_dir(folder, resume=args.resume, overwrite=args.overwrite,
                            run_files=RUN_FILES)


def main(argv=None) -> int:
    args = parse_args(argv)

    def run():
        check_not_under_torchrun()  # first: torchrun stops the others at the first failure
        cfg = load_config(args.config_file, args.opts)  # a bad override: one line, no process
        device = str(cfg.train.device)
        check_launch(args.num_gpus, args.num_machines, device)
        folder = cfg.train.output_dir
        # a write into the folder that fails (full disk, no permission): one line, not a traceback
        with claim_output(args, folder), writing_into(folder, only_output_faults=True):
            launch(run_process, args.num_gpus, num_machines=args.num_machines,
                   machine_rank=args.machine_rank, dist_url=args.dist_url, device=device,
                   args=(args,))

    try:
        return run_reporting_input_errors(run)
    except OutputDirError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except WorkersFailed as exc:  # the processes' one-line errors, each once
        print("\n".join(exc.lines), file=sys.stderr)
        return exc.status


if __name__ == "__main__":
    sys.exit(main())
