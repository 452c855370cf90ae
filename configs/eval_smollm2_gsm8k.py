"""Evaluate a local SmolLM2-135M-Instruct folder on GSM8K test: pass@k / maj@k, JSON and a plot.

  python -m rl_sharpen.main --config=configs/eval_smollm2_gsm8k.py:/path/to/smollm2 --workdir=/tmp/eval
"""

from rl_sharpen.experiment import default_config


def get_config(arg: str = ""):
    c = default_config()
    c.mode = "eval"
    c.model.checkpoint = arg or "HuggingFaceTB/SmolLM2-135M-Instruct"
    c.data.train = c.data.validation = "../shared/data/gsm8k/test.jsonl"
    c.eval.num_samples = 4
    c.eval.k_list = (1, 2, 4)
    c.eval.max_new_tokens = 256
    c.eval.limit = 100
    c.eval.batch_size = 25
    c.eval.temperature = 1.0
    return c
