#!/usr/bin/env bash
# Start trainer.train under torchrun, on one node or on each node of a multi-node job.
#
#   launch/torchrun.sh [launcher options] [--] <trainer args>
#
# Single node:  launch/torchrun.sh --data D --out RUN          (NPROC: GPU count, else 1)
# Multi node, run on every node (static ranks):
#   NNODES=2 NODE_RANK=0|1 MASTER_ADDR=node0 MASTER_PORT=29500 launch/torchrun.sh --data D --out RUN
# Multi node, c10d rendezvous (ranks assigned on arrival; restarts re-form the whole job):
#   NNODES=2 RDZV_ENDPOINT=node0:29400 RDZV_ID=job42 launch/torchrun.sh --data D --out RUN
#
# Launcher options (each also read from the environment variable in capitals):
#   --nproc N  --nnodes N  --node-rank R  --master-addr A  --master-port P
#   --rdzv-endpoint HOST:PORT  --rdzv-id ID  --max-restarts N (default 2)
# A failed rank makes torchrun restart every rank of the node up to MAX_RESTARTS times;
# `--resume auto` is added unless you pass --resume, so a restart continues from the
# last checkpoint (RUN/checkpoints/last.pt; on several nodes --out must be shared storage).
# DRY_RUN=1 prints the torchrun command instead of running it.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

gpu_count() {
    local n
    n=$(nvidia-smi --query-gpu=index --format=csv,noheader 2>/dev/null | grep -c . || true)
    echo "${n:-0}"
}

die() { echo "error: $*" >&2; exit 2; }

while [ $# -gt 0 ]; do
    case "$1" in
        --nproc|--nproc-per-node) NPROC=${2:?}; shift 2 ;;
        --nnodes) NNODES=${2:?}; shift 2 ;;
        --node-rank) NODE_RANK=${2:?}; shift 2 ;;
        --master-addr) MASTER_ADDR=${2:?}; shift 2 ;;
        --master-port) MASTER_PORT=${2:?}; shift 2 ;;
        --rdzv-endpoint) RDZV_ENDPOINT=${2:?}; shift 2 ;;
        --rdzv-id) RDZV_ID=${2:?}; shift 2 ;;
        --max-restarts) MAX_RESTARTS=${2:?}; shift 2 ;;
        --) shift; break ;;
        *) break ;;
    esac
done

if [ -z "${NPROC:-}" ]; then
    NPROC=$(gpu_count)
    [ "$NPROC" -gt 0 ] || NPROC=1
fi
NNODES=${NNODES:-1}
MAX_RESTARTS=${MAX_RESTARTS:-2}

if [ -n "${PYTHON:-}" ]; then :
elif [ -x "$ROOT/.venv/bin/python" ]; then PYTHON="$ROOT/.venv/bin/python"
else PYTHON=$(command -v python3 || command -v python) || die "no python found (set PYTHON)"
fi

cmd=("$PYTHON" -m torch.distributed.run --nproc-per-node "$NPROC" --max-restarts "$MAX_RESTARTS")
if [ -n "${RDZV_ENDPOINT:-}" ]; then
    cmd+=(--nnodes "$NNODES" --rdzv-backend c10d --rdzv-endpoint "$RDZV_ENDPOINT" --rdzv-id "${RDZV_ID:-sparkdp}")
elif [ "$NNODES" != 1 ]; then
    [ -n "${NODE_RANK:-}" ] && [ -n "${MASTER_ADDR:-}" ] \
        || die "NNODES=$NNODES needs NODE_RANK and MASTER_ADDR (or RDZV_ENDPOINT for a c10d rendezvous)"
    cmd+=(--nnodes "$NNODES" --node-rank "$NODE_RANK" --master-addr "$MASTER_ADDR" --master-port "${MASTER_PORT:-29500}")
else
    cmd+=(--standalone --nnodes 1)
fi

resume=(--resume auto)
for arg in "$@"; do
    case "$arg" in --resume|--resume=*) resume=() ;; esac
done
cmd+=(-m trainer.train "$@" ${resume[@]+"${resume[@]}"})

if [ -n "${DRY_RUN:-}" ]; then
    printf '%q ' "${cmd[@]}"; echo
    exit 0
fi
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"  # trainer/ and data/ import even without an install
exec "${cmd[@]}"
