"""Qwen2.5-3B-Instruct on MATH-lighteval, validated on MATH-500: the sharpening paper's setting.

  python -m rl_sharpen.main --config=configs/qwen25_3b_math.py:task_reward --workdir=runs/qwen25_3b_math-task
  python -m rl_sharpen.main --config=configs/qwen25_3b_math.py:sharpening --workdir=runs/qwen25_3b_math-sharpen
  python -m rl_sharpen.main --config=configs/qwen25_3b_math.py:tilted_a4_b100,tiny --workdir=/tmp/x   # CPU smoke run
  # Qwen2.5-0.5B-Instruct on the same data at one-GPU sizes:
  python -m rl_sharpen.main --config=configs/qwen25_3b_math.py:task_reward,small --workdir=runs/qwen25_3b_math-small
"""

from rl_sharpen.experiment import paper_config


def get_config(arg: str = ""):
    return paper_config("Qwen/Qwen2.5-3B-Instruct", "qwen2", arg,
                        small_checkpoint="Qwen/Qwen2.5-0.5B-Instruct")
