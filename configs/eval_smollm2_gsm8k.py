"""Evaluate a local SmolLM2-135M-Instruct folder on GSM8K test: pass@k / maj@k, JSON and a plot.

  python -m rl_sharpen.main --config=configs/eval_smollm2_gsm8k.py:/path/to/smollm2 --workdir=/tmp/eval
  python -m rl_sharpen.main --config=configs/eval_smollm2_gsm8k.py:/path/to/smollm2,tiny --workdir=/tmp/e
      # 2 problems x 2 samples of 16 tokens: the whole path on CPU in seconds, for tests

The argument is a checkpoint folder (default: the hub id), optionally followed by ",tiny"; a bare "tiny"
is the hub id at the tiny size (a folder named tiny: "./tiny"). GSM8K test is
read from ../shared/data beside the repository when it is there, else from the hub; another local copy:
--config.data.validation=/path/to/test.jsonl.
"""

import os

from rl_sharpen.experiment import default_config

# GSM8K test as shipped beside the repository (../shared/data), wherever the command is run from
GSM8K_TEST = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared", "data", "gsm8k",
                          "test.jsonl")


def get_config(arg: str = ""):
    checkpoint, _, switch = arg.partition(",")
    if arg == "tiny":  # the tiny switch alone, as the other configs take it
        checkpoint, switch = "", "tiny"
    if switch not in ("", "tiny"):
        raise ValueError(f"config argument {arg!r}: '<checkpoint folder>' or '<checkpoint folder>,tiny'")
    c = default_config()
    c.mode = "eval"
    c.model.checkpoint = checkpoint or "HuggingFaceTB/SmolLM2-135M-Instruct"
    c.data.train = c.data.validation = os.path.normpath(GSM8K_TEST) if os.path.exists(GSM8K_TEST) else "gsm8k"
    c.data.train_split, c.data.validation_split = "test", "test"  # eval mode reads only the validation set
    c.eval.num_samples = 4
    c.eval.k_list = (1, 2, 4)
    c.eval.max_new_tokens = 256
    c.data.validation_limit = 100
    c.eval.batch_size = 25
    c.eval.temperature = 1.0
    if switch == "tiny":
        c.data.validation_limit, c.eval.batch_size = 2, 2
        c.eval.num_samples, c.eval.k_list, c.eval.max_new_tokens = 2, (1, 2), 16
    return c
