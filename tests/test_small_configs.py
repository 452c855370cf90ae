"""The paper configs' `small` switch (the family's small model, the paper's algorithm and data at one-GPU
sizes) and the two data fields it sets: a chat template's thinking switch and the training prompts'
length bound."""

import copy
import dataclasses
import logging

import jax
import pytest

from rl_sharpen import experiment, models
from rl_sharpen.checkpoint import flatten_config
from rl_sharpen.config import ConfigError
from rl_sharpen.task_setup import DataConfig, MathTask, build_task, drop_long_prompts
from rl_sharpen.tasks import prompts as prompt_lib
from tests.experiment_configs import get_config

PAPER_CONFIGS = ["llama32_3b_math", "qwen25_3b_math", "qwen3_4b_math"]
# What `small` may change: the model, the sizes, and the prompt settings of the small model.
SMALL_CHANGES = {"model.checkpoint", "sampling.max_new_tokens", "eval.max_new_tokens", "loss.max_len",
                 "rl.prompts_per_step", "rl.micro_batch", "rl.prompt_padding", "train.steps", "train.eval_every",
                 "data.validation_limit", "data.max_prompt_tokens", "data.thinking", "eval.batch_size"}


def _preset_name(checkpoint: str) -> str:
    return checkpoint.split("/")[-1].lower()  # "Qwen/Qwen2.5-0.5B-Instruct" -> "qwen2.5-0.5b-instruct"


@pytest.mark.parametrize("name", PAPER_CONFIGS)
def test_small_keeps_the_algorithm_and_the_data_and_swaps_in_the_familys_small_model(name):
    full = experiment.parse(get_config(name, "tilted_a4_b100"))
    small = experiment.parse(get_config(name, "tilted_a4_b100,small"))
    full_fields, small_fields = (flatten_config(dataclasses.asdict(e)) for e in (full, small))
    changed = {k for k in full_fields if full_fields[k] != small_fields[k]}
    assert changed <= SMALL_CHANGES, changed - SMALL_CHANGES
    assert {"model.checkpoint", "sampling.max_new_tokens", "data.max_prompt_tokens"} <= changed
    assert small.loss.max_len == small.sampling.max_new_tokens == 1024  # the constant normalizer follows
    big, little = (models.PRESETS[_preset_name(e.model.checkpoint)] for e in (full, small))
    assert little[0].family == big[0].family and little[1] < 1.3e9 < big[1]  # published parameter counts
    # validation and rollouts sample the same number of rows, whose KV cache bounds sampling's memory
    assert small.eval.batch_size * small.eval.num_samples == small.rl.prompts_per_step * small.sampling.num_samples
    assert small.data.thinking == ("off" if big[0].family == "qwen3" else "")


def test_size_switches_are_one_at_most_and_small_needs_a_small_checkpoint():
    with pytest.raises(ValueError, match="one size at most"):
        get_config("qwen25_3b_math", "tiny,small")
    with pytest.raises(ValueError, match="names no small checkpoint; allowed: 'tiny'"):
        experiment.paper_config("org/model", "llama", "small")


QWEN3_LIKE_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n"
    "{% if enable_thinking is defined and enable_thinking is false %}<think>\n\n</think>\n\n{% endif %}{% endif %}")


def test_the_thinking_switch_reaches_templates_that_have_one_and_is_refused_by_others(smollm2_tokenizer_dir):
    tokenizer = prompt_lib.load_tokenizer(smollm2_tokenizer_dir)
    switched = copy.deepcopy(tokenizer)
    switched.chat_template = QWEN3_LIKE_TEMPLATE
    default, on, off = (prompt_lib.render_prompt(switched, "1+1?", prompt_lib.PromptConfig(thinking=v))
                        for v in ("", "on", "off"))
    assert default == on and off == default + "<think>\n\n</think>\n\n"
    prompt_lib.check_thinking_switch(switched, prompt_lib.PromptConfig(thinking="off"))
    with pytest.raises(ConfigError, match=r"data.thinking='off': this tokenizer's chat template has no "
                                          r"thinking switch .*allowed: '' \(none set: --config.data.thinking=\)"):
        prompt_lib.check_thinking_switch(tokenizer, prompt_lib.PromptConfig(thinking="off"))
    with pytest.raises(ValueError, match="thinking.*'' when use_chat_template=False"):
        DataConfig(train="math", validation="math500", use_chat_template=False, thinking="off")
    with pytest.raises(ValueError, match="thinking='on': unused by the synthetic task"):
        DataConfig(thinking="on")
    c = get_config("qwen25_3b_math", "small")
    c.data.thinking = "no"
    with pytest.raises(ConfigError, match="data.thinking='no'; allowed: '', 'on', 'off'"):
        experiment.parse(c)


def test_qwen3_small_thinks_off_and_names_the_field_where_a_template_has_no_switch(smollm2_tokenizer_dir,
                                                                                   math_data_dir, tmp_path):
    exp = experiment.parse(get_config("qwen3_4b_math", "small"))
    data = dataclasses.replace(exp.data, train=str(math_data_dir / "math" / "test500.jsonl"),
                               validation=str(math_data_dir / "math" / "test500.jsonl"))
    with pytest.raises(ConfigError, match="data.thinking='off'.*allowed: ''"):
        MathTask(data, smollm2_tokenizer_dir)
    switched = prompt_lib.load_tokenizer(smollm2_tokenizer_dir)
    switched.chat_template = QWEN3_LIKE_TEMPLATE
    switched.save_pretrained(tmp_path / "qwen3_like")
    for thinking, block in (("off", True), ("", False)):
        task = MathTask(dataclasses.replace(data, thinking=thinking), str(tmp_path / "qwen3_like"))
        problem = task.problems("train")[0]
        assert task.prompt_text(problem).endswith("<think>\n\n</think>\n\n") is block
        assert task.tokenizer.decode(task.prompt_ids(problem)) == task.prompt_text(problem)


def test_max_prompt_tokens_leaves_out_exactly_the_longer_training_prompts(smollm2_tokenizer_dir, math_data_dir,
                                                                           caplog):
    data = DataConfig(train=str(math_data_dir / "math" / "test5000.jsonl"), train_limit=300,
                      validation=str(math_data_dir / "math" / "test500.jsonl"))
    task = MathTask(data, smollm2_tokenizer_dir)
    problems = task.problems("train")
    lengths = [len(task.prompt_ids(p)) for p in problems]
    bound = sorted(lengths)[len(lengths) * 9 // 10]  # about a tenth of them are longer
    with caplog.at_level(logging.INFO):
        kept = drop_long_prompts(task, problems, bound)
    assert kept == [p for p, n in zip(problems, lengths) if n <= bound]
    dropped = len(problems) - len(kept)
    assert 0 < dropped < len(problems) // 5
    assert f"{dropped} of {len(problems)} training problems left out" in caplog.text
    assert drop_long_prompts(task, problems, 0) == problems
    with pytest.raises(ConfigError, match=f"data.max_prompt_tokens=5: every one of the {len(problems)} training "
                                          f"prompts is longer .*allowed: 0 \\(no limit\\) or at least {min(lengths)}"):
        drop_long_prompts(task, problems, 5)


def test_a_small_config_trains_and_validates_on_real_math_rows(smollm2_tokenizer_dir, math_data_dir, tmp_path):
    """The small switch's settings together (per-batch prompt padding, the prompt bound, the validation
    subset), on a tiny random model with SmolLM2's tokenizer and shortened budgets."""
    import transformers

    tokenizer = transformers.AutoTokenizer.from_pretrained(smollm2_tokenizer_dir)
    cfg = models.ModelConfig("llama", len(tokenizer), 32, 64, 1, 4, 2, 8, max_position_embeddings=2048)
    base = str(tmp_path / "base")
    models.save_hf(models.init_params(cfg, jax.random.key(0)), cfg, base, tokenizer=tokenizer,
                   copy_from=smollm2_tokenizer_dir)
    c = get_config("qwen25_3b_math", "sharpening,small")
    c.model.checkpoint, c.model.compute_dtype = base, "float32"
    c.data.train = str(math_data_dir / "math" / "test5000.jsonl")
    c.data.validation = str(math_data_dir / "math" / "test500.jsonl")
    c.data.train_limit, c.data.validation_limit, c.data.max_prompt_tokens = 64, 2, 160
    c.sampling.max_new_tokens = c.eval.max_new_tokens = 4
    c.sampling.num_samples, c.rl.prompts_per_step, c.rl.micro_batch = 2, 4, 4
    c.eval.num_samples, c.eval.batch_size, c.eval.k_list = 2, 2, (1, 2)
    c.train.steps, c.train.eval_every, c.train.checkpoint_every = 2, 2, 2
    exp = experiment.parse(c)
    task = build_task(exp.data, exp.model, exp.seed)
    model_cfg, params = experiment.build_model(exp, tokenizer=task.tokenizer)
    run = experiment.make_rl_run(exp, str(tmp_path / "rl"), model_cfg, params, task)
    every = task.problems("train")
    assert 0 < len(run.train_problems) < len(every)
    assert max(len(task.prompt_ids(p)) for p in run.train_problems) <= 160
    result = run.run()
    assert {"pass@1", "maj@2"} <= set(result) and result["step"] == 2


def test_a_warm_start_refuses_the_rl_prompt_bound():
    c = get_config("demo", "tiny")
    c.mode, c.data.max_prompt_tokens = "sft", 100
    with pytest.raises(ConfigError, match="data.max_prompt_tokens=100 with mode='sft': it sets the RL problems"):
        experiment.parse(c)
