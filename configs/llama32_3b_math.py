"""Llama-3.2-3B-Instruct on MATH-lighteval, validated on MATH-500: the sharpening paper's setting.

  python -m rl_sharpen.main --config=configs/llama32_3b_math.py:task_reward --workdir=runs/llama32_3b_math-task
  python -m rl_sharpen.main --config=configs/llama32_3b_math.py:sharpening --workdir=runs/llama32_3b_math-sharpen
  python -m rl_sharpen.main --config=configs/llama32_3b_math.py:tilted_a4_b100,tiny --workdir=/tmp/x   # CPU smoke run
  # Llama-3.2-1B-Instruct on the same data at one-GPU sizes:
  python -m rl_sharpen.main --config=configs/llama32_3b_math.py:task_reward,small --workdir=runs/llama32_3b_math-small
"""

from rl_sharpen.experiment import paper_config


def get_config(arg: str = ""):
    return paper_config("meta-llama/Llama-3.2-3B-Instruct", "llama", arg,
                        small_checkpoint="meta-llama/Llama-3.2-1B-Instruct")
