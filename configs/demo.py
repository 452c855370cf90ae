"""CPU demo: warm-start a small Llama on synthetic arithmetic, then task-reward RL vs distribution
sharpening from the same start (README quick start; 3 minutes on 2 CPU cores of their own, up to 6
on a shared machine).

  python -m rl_sharpen.main --config=configs/demo.py --workdir=/tmp/rl_sharpen_demo
  python -m rl_sharpen.main --config=configs/demo.py:tiny --workdir=/tmp/demo_tiny   # seconds, for tests
  --config.demo.regimes='("task_reward","sharpening","tempered_a4","tilted_a4_b100")'   # all four regimes
"""

from rl_sharpen.experiment import default_config


def get_config(arg: str = ""):
    if arg not in ("", "tiny"):
        raise ValueError(f"config argument {arg!r}: allowed: '' (the full run) or 'tiny'")
    tiny = arg == "tiny"
    c = default_config()
    c.mode = "demo"
    c.seed = 0
    c.mesh = {"data": -1, "fsdp": 1, "tensor": 1}

    c.model.arch = "custom"  # Llama architecture sized for a CPU; vocab from the character tokenizer
    c.model.custom = dict(family="llama", vocab_size=52, hidden_size=32 if tiny else 64,
                          intermediate_size=64 if tiny else 192, num_layers=1 if tiny else 3, num_heads=4,
                          num_kv_heads=2, head_dim=8 if tiny else 16, rope_theta=10000.0, tie_embeddings=True,
                          max_position_embeddings=256, rms_norm_eps=1e-5)

    c.data.train = c.data.validation = "synthetic"
    c.data.synthetic_max_steps = 3
    c.data.synthetic_max_value = 12  # small numbers: a 0.15M-parameter model learns the arithmetic in minutes
    c.data.synthetic_max_operand = 5
    c.data.sft_correct, c.data.sft_guess, c.data.sft_wrong_step = 0.3, 0.4, 0.3  # measured base pass@1 ~ 0.19
    c.data.synthetic_validation_problems = 100  # the validation set, held out of the RL and warm-start problems
    c.data.validation_limit = 4 if tiny else 100  # of which evaluated

    c.demo.sft_steps = 10 if tiny else 600
    c.demo.regimes = ("task_reward", "sharpening")
    c.sft.batch_size = 8 if tiny else 32
    c.sft.max_completion_tokens = 40

    c.sampling.max_new_tokens = 16 if tiny else 40
    c.sampling.num_samples = 4 if tiny else 8  # G
    c.sampling.temperature = 1.0
    c.rl.prompts_per_step = 2 if tiny else 16
    c.rl.micro_batch = 0
    c.rl.remat = False  # a 0.15M-parameter model needs no rematerialization
    c.advantage.estimator = "rloo"
    c.loss.name = "reinforce"
    # token-mean weighs short samples more than grad E_pi[R] does (rl/losses.py); the demo's recorded
    # results use it. "seq-mean-token-sum" (its normalizer loss.max_len: 0 = sampling.max_new_tokens) follows it.
    c.loss.aggregation = "token-mean"
    c.optim.learning_rate = 1e-4
    c.optim.warmup_steps = 0
    c.optim.clip_norm = 1.0
    c.train.steps = 3 if tiny else 60
    c.train.checkpoint_every = 2 if tiny else 20
    c.train.eval_every = 0

    c.eval.num_samples = 4 if tiny else 8
    c.eval.max_new_tokens = 16 if tiny else 40
    c.eval.batch_size = 4 if tiny else 50
    return c
