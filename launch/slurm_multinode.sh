#!/usr/bin/env bash
# Multi-node GPU under Slurm: one process per GPU, as JAX expects there. jax.distributed.initialize()
# reads the Slurm environment (coordinator = first node) and gives each task the GPU of its local
# rank, so every task must see all GPUs of its node (--gpus-per-node, not --gpus-per-task).
#   sbatch --nodes=2 launch/slurm_multinode.sh configs/qwen3_4b_math.py /scratch/runs/q3
# Nodes with another GPU count: sbatch --nodes=2 --gpus-per-node=4 --ntasks-per-node=4 ...
# The workdir must be on a file system every node sees (or gs://...); the run checks this.
#SBATCH --gpus-per-node=8
#SBATCH --ntasks-per-node=8
set -euo pipefail
if [ $# -lt 2 ]; then
  echo "usage: sbatch [--nodes=N] launch/slurm_multinode.sh CONFIG WORKDIR [--config.x=y ...]" >&2
  exit 2
fi
CONFIG=$1; WORKDIR=$2; shift 2
export XLA_PYTHON_CLIENT_MEM_FRACTION=${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.92}  # as launch/gpu.sh; srun passes it on
srun python -m rl_sharpen.main --config="$CONFIG" --workdir="$WORKDIR" --multihost "$@"
