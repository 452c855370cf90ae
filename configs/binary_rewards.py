"""Binary rewards on an exactly enumerable toy model (Dymetman 2026; Kruszewski et al. 2026): KL
control toward the filtered model p* at decreasing beta, and alpha-DPG, in a policy family that can
represent p* (autoregressive) and one that cannot (factorized). Exact sums, no sampling; about 20 s
on a 2-core CPU.

  python -m rl_sharpen.main --config=configs/binary_rewards.py --workdir=/tmp/binary_rewards
  python -m rl_sharpen.main --config=configs/binary_rewards.py:tiny --workdir=/tmp/br_tiny   # seconds
"""

from rl_sharpen.experiment import default_config


def get_config(arg: str = ""):
    if arg not in ("", "tiny"):
        raise ValueError(f"config argument {arg!r}: allowed: '' (the full run) or 'tiny'")
    tiny = arg == "tiny"
    c = default_config()
    c.mode = "binary_rewards"
    c.seed = 0
    b = c.binary_rewards
    b.vocab_size = 3  # V
    b.length = 4 if tiny else 5  # T: 81 or 243 sequences
    b.max_token_sum = 3 if tiny else 4  # valid: tokens sum to at most this
    b.betas = (1.0, 0.1) if tiny else (1.0, 0.3, 0.1, 0.03, 0.01)
    b.alphas = (1.0,) if tiny else (0.5, 1.0)
    b.steps = 300 if tiny else 4000
    b.restarts = 2 if tiny else 8  # factorized fits also from perturbed starts: the best objective found
    return c
