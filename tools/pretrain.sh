#!/usr/bin/env bash
# MAE pretraining launcher: a thin wrapper around torchrun (the logic is in pretrain/main.py).
#
#   tools/pretrain.sh [torchrun options] -- [training args]
#
#   tools/pretrain.sh -- --data_path DIR --model mae_vit_base_patch16 ...   # all GPUs of this node
#   tools/pretrain.sh --nproc_per_node 4 -- --data_path DIR ...             # 4 GPUs
#   tools/pretrain.sh --nnodes 2 --nproc_per_node 8 --rdzv_backend c10d \
#       --rdzv_endpoint HOST:29500 --rdzv_id JOB -- --data_path DIR ...    # several nodes
#   tools/pretrain.sh -- --device cpu --data_path DIR ...                   # one CPU process
#
# Without "--", every argument goes to the training script. Defaults added to torchrun: a
# single-node standalone rendezvous (unless --nnodes/--rdzv*/--master* is given) and one process
# per GPU (unless --nproc_per_node is given). With --device cpu and no torchrun options, the
# script runs as one plain Python process (gloo is used if you ask torchrun for several).
# SIGTERM / SIGUSR1 to this launcher (scancel, SLURM's --signal): every rank finishes its step,
# rank 0 saves, all exit 0 (mae_transfer.tools.torchrun forwards them to the workers).
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
PY=${PYTHON:-python3}

launcher=() train=()
if [[ " $* " == *" -- "* ]]; then
  while (($#)); do
    if [[ $1 == -- ]]; then shift; break; fi
    launcher+=("$1"); shift
  done
fi
train=("$@")

on_cpu=0
for ((i = 0; i < ${#train[@]}; i++)); do
  case ${train[i]} in
    --device=cpu) on_cpu=1 ;;
    --device) [[ ${train[i + 1]:-} == cpu ]] && on_cpu=1 ;;
  esac
done

wants_help=0
for a in "${train[@]}"; do [[ $a == -h || $a == --help ]] && wants_help=1; done
if ((${#launcher[@]} == 0)) && ((on_cpu || wants_help)); then
  exec "$PY" -m mae_transfer.pretrain.main "${train[@]}"
fi

opts=" ${launcher[*]:-} "
if [[ $opts != *" --nnodes"* && $opts != *" --rdzv"* && $opts != *" --master"* \
      && $opts != *" --standalone "* ]]; then
  launcher=(--standalone "${launcher[@]}")
fi
if [[ $opts != *" --nproc_per_node"* && $opts != *" --nproc-per-node"* ]]; then
  # One process per GPU; one process where there is no GPU (main.py then picks the CPU).
  if ((!on_cpu)) && command -v nvidia-smi >/dev/null && nvidia-smi -L 2>/dev/null | grep -q GPU; then
    launcher+=(--nproc_per_node gpu)
  else
    launcher+=(--nproc_per_node 1)
  fi
fi
# torchrun through tools/torchrun.py: SIGTERM / SIGUSR1 reach the workers, which save and stop;
# the launcher then exits with their status (plain torchrun exits 1 with a traceback).
exec "$PY" -m mae_transfer.tools.torchrun "${launcher[@]}" -m mae_transfer.pretrain.main "${train[@]}"
