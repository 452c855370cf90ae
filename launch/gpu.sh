#!/usr/bin/env bash
# One machine, all its GPUs in one JAX process (the mesh spans them).
#   launch/gpu.sh configs/qwen25_3b_math.py /scratch/runs/qwen25 [--config.x=y ...]
set -euo pipefail
if [ $# -lt 2 ]; then
  echo "usage: launch/gpu.sh CONFIG WORKDIR [--config.x=y ...]" >&2
  exit 2
fi
CONFIG=$1; WORKDIR=$2; shift 2
export XLA_PYTHON_CLIENT_MEM_FRACTION=${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.92}
python -m rl_sharpen.main --config="$CONFIG" --workdir="$WORKDIR" "$@"
