"""Qwen3-4B-Instruct-2507 on MATH-lighteval, validated on MATH-500: the sharpening paper's setting.

  python -m rl_sharpen.main --config=configs/qwen3_4b_math.py:task_reward --workdir=runs/qwen3_4b_math-task
  python -m rl_sharpen.main --config=configs/qwen3_4b_math.py:sharpening --workdir=runs/qwen3_4b_math-sharpen
  python -m rl_sharpen.main --config=configs/qwen3_4b_math.py:tilted_a4_b100,tiny --workdir=/tmp/x   # CPU smoke run
  # Qwen3-0.6B (thinking off) on the same data at one-GPU sizes:
  python -m rl_sharpen.main --config=configs/qwen3_4b_math.py:task_reward,small --workdir=runs/qwen3_4b_math-small
"""

from rl_sharpen.experiment import paper_config


def get_config(arg: str = ""):
    return paper_config("Qwen/Qwen3-4B-Instruct-2507", "qwen3", arg,
                        small_checkpoint="Qwen/Qwen3-0.6B", small_prompt={"thinking": "off"})
