#!/usr/bin/env bash
# Multi-node GPU under Slurm: one process per node; jax.distributed.initialize() reads the Slurm
# environment (coordinator = first node).
#   sbatch --nodes=2 --gpus-per-node=8 launch/slurm_multinode.sh configs/qwen3_4b_math.py /scratch/runs/q3
#SBATCH --ntasks-per-node=1
set -euo pipefail
CONFIG=$1; WORKDIR=$2; shift 2
srun python -m rl_sharpen.main --config="$CONFIG" --workdir="$WORKDIR" --multihost "$@"
