#!/usr/bin/env bash
# SLURM job script for the three stages: on the time-limit signal the stage saves and stops, the
# job requeues itself, and the requeued job resumes where it stopped.
#
#   sbatch [--nodes N --gpus-per-node G --time T ...] tools/slurm.sh STAGE ARGS...
#
#   STAGE pretrain  ARGS = [torchrun options --] training args   (tools/pretrain.sh; --resume auto)
#   STAGE det       ARGS = tools/train_det.py args               (--resume, --num-gpus added)
#   STAGE seg       ARGS = CONFIG [tools/train_seg.py args]      (torchrun, --launcher pytorch --resume)
#   tools/slurm.sh --print STAGE ARGS...   prints the command it would run (one per node) and exits
#
# Submit from the repository root (sbatch runs a copy of this file; the repository is then
# $SLURM_SUBMIT_DIR) or set MAE_TRANSFER_ROOT. The header below is the recipe; options given to
# sbatch override it:
#SBATCH --ntasks-per-node=1
#SBATCH --signal=B:USR1@120
#SBATCH --requeue
#SBATCH --open-mode=append
#
# --signal=B:USR1@120: SLURM sends SIGUSR1 to this script 120 s before the time limit; the script
#   passes it on to the stage (through srun on several nodes), every rank finishes its step, rank 0
#   saves, all exit 0; then the script runs `scontrol requeue $SLURM_JOB_ID`
#   (python -m mae_transfer.tools.preemption requeue) and the job starts again later, resuming.
#   120 s must cover one training step plus writing a checkpoint.
# --requeue: lets the job be requeued. --open-mode=append: the restarted job appends to its logs.
# SIGTERM (scancel, or preemption) also makes the stage save and stop, without a requeue (a
#   cluster that preempts with PreemptMode=REQUEUE requeues the job itself).
# Exit status: the stage's (0 when it stopped on a signal after saving).
set -uo pipefail

if [[ -n ${MAE_TRANSFER_ROOT:-} ]]; then
  REPO=$MAE_TRANSFER_ROOT
elif [[ -f "$(dirname "${BASH_SOURCE[0]}")/pretrain.sh" ]]; then
  REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
else
  REPO=${SLURM_SUBMIT_DIR:-$PWD}
fi
if [[ ! -f $REPO/tools/pretrain.sh ]]; then
  echo "error: $REPO is not the mae-transfer repository: submit from its root or set MAE_TRANSFER_ROOT" >&2
  exit 2
fi
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
PY=${PYTHON:-python3}
usage="usage: tools/slurm.sh pretrain|det|seg ARGS... (see the top of tools/slurm.sh)"
print_only=0
[[ ${1:-} == --print ]] && { print_only=1; shift; }
(($#)) || { echo "$usage" >&2; exit 2; }
stage=$1; shift

has() { local want=$1 a; shift; for a in "$@"; do [[ $a == "$want" || $a == "$want="* ]] && return 0; done; return 1; }

nodes=${SLURM_NNODES:-1}
head=127.0.0.1  # the rendezvous host: the job's first node
((nodes > 1)) && head=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n1)
port=${MASTER_PORT:-29500}
gpus=${SLURM_GPUS_ON_NODE:-1}

case $stage in
  pretrain)
    launcher=() train=("$@")
    if has -- "$@"; then
      launcher=() train=()
      while (($#)) && [[ $1 != -- ]]; do launcher+=("$1"); shift; done
      shift; train=("$@")
    fi
    has --resume "${train[@]}" || train+=(--resume auto)
    if ((nodes > 1)) && ! has --nnodes "${launcher[@]}"; then
      launcher+=(--nnodes "$nodes" --rdzv_backend c10d --rdzv_endpoint "$head:$port"
                 --rdzv_id "${SLURM_JOB_ID:-mae}")
    fi
    cmd=(bash "$REPO/tools/pretrain.sh" "${launcher[@]}" -- "${train[@]}")
    ;;
  det)  # our flags first: Detectron2 takes everything after the first KEY=VALUE as overrides
    flags=()
    has --resume "$@" || flags+=(--resume)
    has --num-gpus "$@" || flags+=(--num-gpus "$gpus")
    if ((nodes > 1)); then  # the machine rank is the node's own: read where the task runs
      flags+=(--num-machines "$nodes" --dist-url "tcp://$head:$port")
      cmd=(bash -c 'exec "$1" "$2" --machine-rank "$SLURM_NODEID" "${@:3}"' _
           "$PY" "$REPO/tools/train_det.py" "${flags[@]}" "$@")
    else
      cmd=("$PY" "$REPO/tools/train_det.py" "${flags[@]}" "$@")
    fi
    ;;
  seg)  # CONFIG, then our flags, then the rest
    (($#)) || { echo "$usage" >&2; exit 2; }
    flags=()
    has --resume "$@" || flags+=(--resume)
    has --launcher "$@" || flags+=(--launcher pytorch)
    rdzv=(--standalone)
    ((nodes > 1)) && rdzv=(--nnodes "$nodes" --rdzv_backend c10d --rdzv_endpoint "$head:$port"
                           --rdzv_id "${SLURM_JOB_ID:-mae}")
    cmd=("$PY" -m mae_transfer.tools.torchrun "${rdzv[@]}" --nproc_per_node "$gpus"
         "$REPO/tools/train_seg.py" "$1" "${flags[@]}" "${@:2}")
    ;;
  *) echo "$usage" >&2; exit 2 ;;
esac
# One launcher per node through srun on several nodes; on one node, this script runs it.
((nodes > 1)) && cmd=(srun --ntasks-per-node=1 --kill-on-bad-exit=1 "${cmd[@]}")
if ((print_only)); then printf '%q ' "${cmd[@]}"; echo; exit 0; fi

signalled=""
forward() {  # to the launcher here, or to every srun task (each passes it to its workers)
  signalled=$1
  if ((nodes > 1)); then scancel --signal="$1" "$SLURM_JOB_ID"; else kill -s "$1" "$child"; fi
}
trap 'forward USR1' USR1
trap 'forward TERM' TERM
"${cmd[@]}" &
child=$!
while :; do
  wait "$child"; status=$?
  kill -0 "$child" 2>/dev/null && continue  # wait was interrupted by a signal: keep waiting
  wait "$child" 2>/dev/null; again=$?      # the status, if the interrupted wait missed it
  ((again != 127)) && status=$again
  break
done
echo "tools/slurm.sh: $stage exited with status $status${signalled:+ after SIG$signalled}" >&2
if [[ $signalled == USR1 ]] && ((status == 0)); then
  "$PY" -m mae_transfer.tools.preemption requeue
fi
exit "$status"
