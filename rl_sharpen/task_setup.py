"""Tasks as the trainer sees them, built from the config: prompts as token ids, completions back
as text, the grader, warm-start pairs, and validation with pass@k / maj@k.

  SyntheticTask  multi-step arithmetic with a character tokenizer (the CPU demo; no downloads)
  MathTask       GSM8K / MATH / AIME ... with a Hugging Face tokenizer and its chat template

`data.task` picks one by name from `TASKS`; `register_task` adds a task, whose `grader` then grades
both its rollouts and its validation.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import re
from typing import Any, Callable, Literal, Sequence

import jax
import numpy as np
from absl import logging

from rl_sharpen import evaluation, sampling
from rl_sharpen import sharding as shd
from rl_sharpen.config import ConfigError
from rl_sharpen.metrics import workdir_path
from rl_sharpen.sampling import ancestral
from rl_sharpen.sampling.prompts import bucket_width, check_fields
from rl_sharpen.tasks import prompts as prompt_lib
from rl_sharpen.tasks import synthetic
from rl_sharpen.tasks.datasets import SOURCES, Problem, load_problems

SYNTHETIC = "synthetic"


@dataclasses.dataclass(frozen=True)
class DataConfig:
    task: str = ""  # a name of task_setup.TASKS; "": "synthetic" when train is "synthetic", else "math"
    train: str = SYNTHETIC  # "synthetic", a source name (tasks.SOURCES) or a local JSONL/parquet path
    train_split: str = "train"  # split of a named source
    train_limit: int = 0  # keep the first N training problems (0: all)
    max_prompt_tokens: int = 0  # RL leaves out training problems whose prompt is longer (counted, logged); 0: none
    validation: str = SYNTHETIC  # same choices as `train`
    validation_split: str = "test"  # split of a named validation source
    validation_limit: int = 0  # keep the first N validation problems (0: all)
    tokenizer: str = ""  # HF folder or hub id; "" uses model.checkpoint; unused for synthetic
    template: str = prompt_lib.DEFAULT_TEMPLATE  # user turn; "{problem}" marks the problem
    system_prompt: str = ""  # "" keeps the chat template's default
    use_chat_template: bool = True  # False: plain "template" text, no chat turns
    thinking: Literal["", "on", "off"] = ""  # a chat template's thinking switch (Qwen3): "" its default, "on", "off"
    synthetic_train_problems: int = 20000  # synthetic training problems (seeded)
    synthetic_validation_problems: int = 200  # synthetic validation problems (their own seed, below)
    synthetic_validation_seed: int = 0  # seed of the synthetic validation problems: one set for every run seed
    synthetic_hold_out: bool = True  # keep the validation problems' arithmetic out of training and warm-start data
    synthetic_hold_out_openings: bool = False  # also keep out problems that open with a validation problem's steps
    synthetic_max_steps: int = 3  # operations per synthetic problem, 1..N
    synthetic_max_value: int = 20  # every synthetic number lies in [0, N]
    synthetic_max_operand: int = 9  # operands of + and - lie in [1, N]
    sft_correct: float = 0.3  # warm-start mixture weight of correct step-by-step chains
    sft_guess: float = 0.4  # ... of bare guesses
    sft_wrong_step: float = 0.3  # ... of chains with one wrong step

    def __post_init__(self):
        check_fields(self, [
            ("train_limit", self.train_limit >= 0, "an integer >= 0 (0: all)"),
            ("max_prompt_tokens", self.max_prompt_tokens >= 0, "an integer >= 0 (0: no limit)"),
            ("validation_limit", self.validation_limit >= 0, "an integer >= 0 (0: all)"),
            ("synthetic_train_problems", self.synthetic_train_problems >= 1, "an integer >= 1"),
            ("synthetic_validation_problems", self.synthetic_validation_problems >= 1, "an integer >= 1"),
            ("synthetic_validation_seed", self.synthetic_validation_seed >= 0, "an integer >= 0"),
            ("synthetic_max_steps", self.synthetic_max_steps >= 1, "an integer >= 1"),
            ("synthetic_max_value", self.synthetic_max_value >= 1, "an integer >= 1"),
            ("synthetic_max_operand", 1 <= self.synthetic_max_operand <= self.synthetic_max_value,
             "an integer in [1, synthetic_max_value]"),
            *[(name, getattr(self, name) >= 0, "a float >= 0 (the three sft_* weights need a positive sum)")
              for name in ("sft_correct", "sft_guess", "sft_wrong_step")],
            ("sft_correct", self.sft_correct + self.sft_guess + self.sft_wrong_step > 0,
             "weights whose sum with sft_guess and sft_wrong_step is > 0"),
            ("synthetic_hold_out", isinstance(self.synthetic_hold_out, bool), "True or False"),
            ("synthetic_hold_out_openings", isinstance(self.synthetic_hold_out_openings, bool)
             and (self.synthetic_hold_out or not self.synthetic_hold_out_openings),
             "True or False (True only with synthetic_hold_out=True)"),
            ("template", self.template.count(prompt_lib.PROBLEM_PLACEHOLDER) == 1,
             f"a string with {prompt_lib.PROBLEM_PLACEHOLDER!r} exactly once"),
            ("thinking", self.thinking in prompt_lib.THINKING and (not self.thinking or self.use_chat_template),
             f"one of {sorted(prompt_lib.THINKING)}; '' when use_chat_template=False (the switch is a chat "
             "template's)"),
        ])
        if SYNTHETIC in (self.train, self.validation):  # the arithmetic task writes its own prompts, character tokens
            defaults = DataConfig.__dataclass_fields__
            for name in ("tokenizer", "template", "system_prompt", "use_chat_template", "thinking"):
                if getattr(self, name) != defaults[name].default:
                    raise ValueError(f"DataConfig.{name}={getattr(self, name)!r}: unused by the synthetic task (its "
                                     f"prompts and character tokenizer are fixed); allowed with it: the default, "
                                     f"{defaults[name].default!r}")
        for which in ("train", "validation"):  # a named source's splits
            name = getattr(self, which)
            if name in SOURCES:
                check_fields(self, [(f"{which}_split", getattr(self, f"{which}_split") in SOURCES[name].splits,
                                     f"a split of {name!r}: {', '.join(sorted(SOURCES[name].splits))}")])


@dataclasses.dataclass(frozen=True)
class EvalConfig:
    num_samples: int = 16  # n samples per problem for pass@k / maj@k
    k_list: tuple[int, ...] = ()  # () gives 1, 2, 4, ..., n; k above num_samples are left out
    max_new_tokens: int = 1024  # completion budget at validation
    temperature: float = 1.0  # sampling temperature at validation
    top_p: float = 1.0  # nucleus mass at validation
    greedy: bool = True  # also report greedy accuracy
    batch_size: int = 16  # problems per sampler call
    verify_timeout: float = 5.0  # seconds per verifier call before it counts as wrong (validation and rollouts)
    keep_texts: int = 1  # completions per problem kept in eval/eval_step*.json to read (first samples, and greedy)

    def __post_init__(self):
        check_fields(self, [
            ("num_samples", self.num_samples >= 1, "an integer >= 1"),
            ("k_list", all(k >= 1 for k in self.k_list), "() or integers >= 1"),
            ("max_new_tokens", self.max_new_tokens >= 1, "an integer >= 1"),
            ("temperature", ancestral.valid_temperature(self.temperature), ancestral.TEMPERATURES),
            ("top_p", 0 < self.top_p <= 1, "a float in (0, 1]"),
            ("batch_size", self.batch_size >= 1, "an integer >= 1"),
            ("verify_timeout", self.verify_timeout > 0, "a float > 0 (seconds)"),
            ("keep_texts", self.keep_texts >= 0, "an integer >= 0"),
        ])
        if any(k > self.num_samples for k in self.k_list):
            logging.warning("eval.k_list=%s: k above eval.num_samples=%d are left out", self.k_list, self.num_samples)

    @property
    def ks(self) -> list[int] | None:
        """The k of pass@k / maj@k that n = num_samples samples allow (None: the default list)."""
        return [k for k in self.k_list if k <= self.num_samples] or None

    def evaluate_options(self) -> dict:
        """The keyword arguments of `evaluation.evaluate` that these settings give."""
        return dict(n_samples=self.num_samples, k_list=self.ks, batch_size=self.batch_size, greedy=self.greedy,
                    verify_timeout=self.verify_timeout, keep_texts=self.keep_texts)


def score_completions(completions: Sequence[str], problems: Sequence[Problem], timeout: float,
                      grader: evaluation.Grader = evaluation.MATH_GRADER):
    """(task rewards 1[answer == gold] float32 [N], answer keys (`grader.answer_key`, None without an
    answer), the counters `grader.rollout_counters` keeps): `grader` as validation applies it
    (`evaluation.run_grader`)."""
    correct, answers, counters = evaluation.run_grader(grader, list(completions), [p.answer for p in problems],
                                                       timeout, None)
    keys = [None if a is None else grader.answer_key(a) for a in answers]
    return correct, keys, grader.rollout_counters(counters)


class SyntheticTask:
    """The arithmetic task of `tasks.synthetic`, character tokenizer. The validation problems are one
    set drawn from `data.synthetic_validation_seed` whatever the run's seed; with
    `data.synthetic_hold_out`, every problem of that set (all `synthetic_validation_problems`, however
    many `validation_limit` keeps) is held out of the training problems and the warm-start examples
    by its arithmetic (start and steps), so a name or item swap does not leak an answer. A longer
    problem that opens with a validation problem's steps stays in (its text and correct chain open with
    the validation problem's; with max_steps = 3, most 1- and 2-step validation problems open some
    training problem) unless `data.synthetic_hold_out_openings`."""

    grader = evaluation.MATH_GRADER

    def __init__(self, data: DataConfig, seed: int = 0, verify_timeout: float = 5.0):
        self.data = data
        self.seed = seed
        self.verify_timeout = verify_timeout
        self.tokenizer = synthetic.CharTokenizer()
        self.pad_id = self.tokenizer.pad_id
        self.eos_ids = (self.tokenizer.eos_id,)
        self.arith = synthetic.ArithmeticConfig(max_steps=data.synthetic_max_steps, max_value=data.synthetic_max_value,
                                                max_operand=data.synthetic_max_operand)
        self.mix = synthetic.SolutionMix(data.sft_correct, data.sft_guess, data.sft_wrong_step)

    @functools.cached_property
    def _validation_draw(self) -> list[synthetic.ArithmeticProblem]:
        return synthetic.make_problems(self.data.synthetic_validation_problems,
                                       [self.data.synthetic_validation_seed, 1], self.arith)

    @functools.cached_property
    def held_out(self) -> synthetic.HeldOut:
        """The arithmetic of every validation problem, when `data.synthetic_hold_out` (else none)."""
        if not self.data.synthetic_hold_out:
            return synthetic.HeldOut()
        return synthetic.HeldOut(frozenset(p.arithmetic for p in self._validation_draw),
                                 self.data.synthetic_hold_out_openings)

    @functools.cached_property
    def _train_draw(self) -> list[synthetic.ArithmeticProblem]:
        limit = self.data.train_limit
        count = min(self.data.synthetic_train_problems, limit) if limit else self.data.synthetic_train_problems
        return synthetic.make_problems(count, [self.seed, 0], self.arith, self.held_out)

    def problems(self, split: str) -> list[Problem]:
        """The split's problems, drawn once."""
        drawn = self._train_draw if split == "train" else self._validation_draw[:self.data.validation_limit or None]
        return [p.to_problem(i) for i, p in enumerate(drawn)]

    def prompt_text(self, problem: Problem) -> str:
        return self.tokenizer.prompt_text(problem.problem)

    def encode_text(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_bos=True)

    def prompt_ids(self, problem: Problem) -> list[int]:
        return self.encode_text(self.prompt_text(problem))

    def decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(ids)

    def score(self, completions, problems):
        return score_completions(completions, problems, self.verify_timeout, self.grader)

    def sft_pairs(self, rng: np.random.Generator, n: int) -> list[tuple[list[int], list[int]]]:
        examples = synthetic.make_examples(n, int(rng.integers(2**31)), self.arith, self.mix, self.held_out)
        return [(self.tokenizer.encode_prompt(e.problem.text), self.tokenizer.encode(e.completion, add_eos=True))
                for e in examples]


class MathTask:
    """Real math problems: chat-formatted prompts, the sympy/math-verify verifier in a worker pool."""

    grader = evaluation.MATH_GRADER

    def __init__(self, data: DataConfig, tokenizer_path: str, verify_timeout: float = 5.0,
                 checkpoint: str = ""):
        self.data = data
        field = "data.tokenizer" if data.tokenizer else "model.checkpoint"
        self.tokenizer = prompt_lib.load_tokenizer(tokenizer_path, field)
        self.pad_id = prompt_lib.pad_id(self.tokenizer)
        self.eos_ids = prompt_lib.stop_token_ids(self.tokenizer, [p for p in {tokenizer_path, checkpoint} if p])
        self.prompt_cfg = prompt_lib.PromptConfig(data.template, data.system_prompt or None, data.use_chat_template,
                                                  data.thinking)
        prompt_lib.check_thinking_switch(self.tokenizer, self.prompt_cfg)
        self.verify_timeout = verify_timeout
        self._loaded: dict[str, list[Problem]] = {}

    def problems(self, split: str) -> list[Problem]:
        """The split's problems, read once (later calls return a copy of the same list)."""
        key = "train" if split == "train" else "validation"
        if key not in self._loaded:
            name, which, limit = (getattr(self.data, key + suffix) for suffix in ("", "_split", "_limit"))
            problems, stats = load_problems(name, which, limit or None, field=f"data.{key}")
            logging.info("%s/%s: %d problems, %d malformed rows skipped %s", name, which, stats.num_loaded,
                         stats.num_skipped, dict(stats.skipped))
            self._loaded[key] = problems
        return list(self._loaded[key])

    def prompt_text(self, problem: Problem) -> str:
        return prompt_lib.render_prompt(self.tokenizer, problem.problem, self.prompt_cfg)

    def encode_text(self, text: str) -> list[int]:
        chat = self.prompt_cfg.use_chat_template and bool(getattr(self.tokenizer, "chat_template", None))
        return list(self.tokenizer(text, add_special_tokens=not chat)["input_ids"])

    def prompt_ids(self, problem: Problem) -> list[int]:
        return self.encode_text(self.prompt_text(problem))

    def decode(self, ids: Sequence[int]) -> str:
        """The completion's text up to its first stop token (special tokens dropped)."""
        ids = [int(i) for i in ids]
        end = next((n for n, i in enumerate(ids) if i in self.eos_ids), len(ids))
        return self.tokenizer.decode(ids[:end], skip_special_tokens=True)

    def score(self, completions, problems):
        return score_completions(completions, problems, self.verify_timeout, self.grader)

    def sft_pairs(self, rng, n):
        raise ValueError("mode='sft' needs data.train='synthetic' (real datasets carry no worked solutions here)")


# builder(data, model_source (experiment.ModelSource), seed, verify_timeout) -> a task
TaskBuilder = Callable[[DataConfig, Any, int, float], Any]
TASKS: dict[str, TaskBuilder] = {}
BUILT_IN_TASKS = (SYNTHETIC, "math")


def register_task(name: str, builder: TaskBuilder) -> None:
    """Makes `data.task=name` build a task with builder(data, model_source, seed, verify_timeout);
    `data` is the run's DataConfig (`train` / `validation` are the builder's to read: a source name,
    a local path, ...), `model_source` its `model` config (the checkpoint, for a tokenizer).

    The task is what `rl.rollout.Task` names, plus what runs and validation read: `problems(split)`
    ("train" or "validation": a list of `tasks.Problem`, whose `answer` is the gold its grader reads),
    `prompt_text(problem)` and `encode_text(text)` (prompt_ids = encode_text(prompt_text)),
    `grader` (an `evaluation.Grader`; `score` should be `score_completions(..., self.grader)`, as in the
    shipped tasks, so that rollouts and validation grade alike), `tokenizer` (with `save_pretrained`
    when a trained policy is saved with it), `pad_id`, `eos_ids`, `data` (this DataConfig), and
    `sft_pairs(rng, n)` when it warm-starts (raise otherwise). Subclassing `SyntheticTask` or
    `MathTask` gives all of them; e.g. real problems graded another way (`evaluation.Grader`):

        class UnitsTask(MathTask):
            grader = UnitsGrader()

        register_task("units", lambda data, model, seed, timeout:
                      UnitsTask(data, data.tokenizer or model.checkpoint, timeout, model.checkpoint))

    Registering a name again replaces its builder (a notebook cell run twice), except the shipped
    tasks' names.
    """
    if not name or not isinstance(name, str):
        raise ValueError(f"register_task: name must be a non-empty string, got {name!r}")
    if name in BUILT_IN_TASKS and name in TASKS:
        raise ValueError(f"register_task: {name!r} is a shipped task ({', '.join(BUILT_IN_TASKS)}); pick another name")
    TASKS[name] = builder


def task_name(data: DataConfig) -> str:
    """The task `data` asks for: `data.task`, or by default the synthetic task for "synthetic" data."""
    return data.task or (SYNTHETIC if SYNTHETIC in (data.train, data.validation) else "math")


def build_task(data: DataConfig, model_source, seed: int = 0, verify_timeout: float = 5.0):
    name = task_name(data)
    if name not in TASKS:
        raise ConfigError(f"data.task={name!r}: not a task; allowed: {sorted(TASKS)} and \"\" (the synthetic task "
                          "for synthetic data, else math), or a name given to task_setup.register_task")
    task = TASKS[name](data, model_source, seed, verify_timeout)
    if not isinstance(getattr(task, "grader", None), evaluation.Grader):
        raise ConfigError(f"data.task={name!r}: the task's grader is {getattr(task, 'grader', None)!r}; allowed: an "
                          "instance of evaluation.Grader (a subclass's object, not the class)")
    return task


def _synthetic_task(data: DataConfig, model_source, seed: int, verify_timeout: float) -> SyntheticTask:
    if data.task == SYNTHETIC and SYNTHETIC not in (data.train, data.validation):
        raise ConfigError(f"data.task={SYNTHETIC!r} writes its own problems, not data.train={data.train!r}, "
                          f"data.validation={data.validation!r}; allowed for them: data.task='math' or \"\"")
    if data.train != SYNTHETIC or data.validation != SYNTHETIC:
        raise ConfigError(f"data.train={data.train!r}, data.validation={data.validation!r}: the synthetic task "
                          "cannot be mixed with a real dataset (different tokenizers); allowed: both "
                          f"{SYNTHETIC!r}, or neither")
    return SyntheticTask(data, seed, verify_timeout)


def _math_task(data: DataConfig, model_source, seed: int, verify_timeout: float) -> MathTask:
    if SYNTHETIC in (data.train, data.validation):
        raise ConfigError(f"data.task='math' reads real problem sets, not data.train={data.train!r}, "
                          f"data.validation={data.validation!r}; allowed for synthetic data: data.task={SYNTHETIC!r} "
                          "or \"\"")
    path = data.tokenizer or model_source.checkpoint
    if not path:
        raise ValueError("data.tokenizer: set a tokenizer folder or hub id (or model.checkpoint)")
    return MathTask(data, path, verify_timeout, checkpoint=model_source.checkpoint)


TASKS.update({SYNTHETIC: _synthetic_task, "math": _math_task})


def drop_long_prompts(task, problems: Sequence[Problem], max_tokens: int) -> list[Problem]:
    """The problems whose prompt has at most `max_tokens` tokens (all of them for 0); how many were left
    out is logged. Bounds the widest rollout batch, and so a step's memory, on sets with a few long
    problems (MATH's longest prompt has about 1,600 tokens, 3 times its 99th percentile)."""
    if not max_tokens:
        return list(problems)
    lengths = [len(task.prompt_ids(p)) for p in problems]
    kept = [p for p, n in zip(problems, lengths) if n <= max_tokens]
    if not kept:
        raise ConfigError(f"data.max_prompt_tokens={max_tokens}: every one of the {len(problems)} training prompts "
                          f"is longer (the shortest has {min(lengths)} tokens); allowed: 0 (no limit) or at "
                          f"least {min(lengths)}")
    if len(kept) < len(problems):
        logging.info("data.max_prompt_tokens=%d: %d of %d training problems left out (prompts of %d to %d tokens)",
                     max_tokens, len(problems) - len(kept), len(problems),
                     min(n for n in lengths if n > max_tokens), max(lengths))
    return kept


def prompt_width(task, problems: Sequence[Problem]) -> int:
    """One padded prompt width for a whole problem set, so every batch has the same shapes (one
    compile of the sampler, scorer and update) instead of one per bucket width."""
    return bucket_width(max(len(task.prompt_ids(p)) for p in problems))


EVAL_STREAM = 0x6576616C  # folded into the seed key for validation sampling (rollouts fold in the step alone)


def task_stops(task, strings: Sequence[str], model_cfg, mesh=None) -> sampling.StopStrings | None:
    """The stop strings' automaton over the task tokenizer's token texts, on the devices (None without
    strings): what `sampling.generate` takes with `SamplingConfig.stop_strings`."""
    if not strings:
        return None
    for escaped in [s for s in strings if re.search(r"\\[ntr]", s)]:
        logging.warning("sampling.stop_strings holds %r, with a backslash before n, t or r: a string given on the "
                        "command line keeps its backslashes; for a newline, give a Python tuple: "
                        "--config.sampling.stop_strings=\"('\\n\\nQuestion:',)\"", escaped)
    return sampling.compile_stops(strings, prompt_lib.token_texts(task.tokenizer), model_cfg.vocab_size).placed(mesh)


def make_generate_fn(task, params_ref: dict, model_cfg, eval_cfg: EvalConfig, base: sampling.SamplingConfig,
                     mesh, seed: int, width: int | None = None, stops: sampling.StopStrings | None = None):
    """evaluation.GenerateFn over the sampler; `params_ref["params"]` is read at call time.

    Call i (`params_ref["calls"]`, counted from 0) with `params_ref["step"] = s` samples with the key
    fold_in(fold_in(fold_in(key(seed), EVAL_STREAM), s), i): validation at a given step draws the same
    samples in a resumed run, and none that a rollout draws. It stops on `base.stop_strings` as rollouts do
    (`stops`: their tables when the caller has them already, e.g. a run's rollouts).
    """
    stops = stops if stops is not None else task_stops(task, base.stop_strings, model_cfg, mesh)

    def generate(prompt_texts, num_samples, greedy):
        scfg = dataclasses.replace(base, max_new_tokens=eval_cfg.max_new_tokens, temperature=eval_cfg.temperature,
                                   top_p=eval_cfg.top_p, top_k=0, greedy=greedy, num_samples=num_samples,
                                   eos_ids=base.eos_ids or tuple(task.eos_ids), ignore_eos=False, pad_id=task.pad_id,
                                   prompt_width=width)
        call = params_ref.get("calls", 0)
        params_ref["calls"] = call + 1
        key = jax.random.fold_in(jax.random.fold_in(jax.random.key(seed), EVAL_STREAM), params_ref.get("step", 0))
        key = jax.random.fold_in(key, call)
        out = sampling.generate(params_ref["params"], model_cfg, [task.encode_text(t) for t in prompt_texts],
                                key, scfg, mesh=mesh, stops=stops)
        return evaluation.generations_from_tokens(shd.host_array(out.tokens), shd.host_array(out.lengths),
                                                  task.decode, num_samples)

    return generate


def flat_summary(summary: dict) -> dict:
    """pass@k / maj@k tables as flat scalar metrics: pass@1, pass@4, maj@4, ..."""
    out = {}
    for key, value in summary.items():
        if isinstance(value, dict) and key in evaluation.PER_K_METRICS:
            out.update({f"{key[:-2]}@{k}": v for k, v in value.items()})
        elif isinstance(value, (int, float)):
            out[key] = value
    return out


REPORT_FILES = ("eval_step{step}.json", "pass_at_k_step{step}.png")  # a validation's files in its folder


def discard_reports_after(folder: str, step: int) -> list[str]:
    """Deletes the validation files (`REPORT_FILES`) of steps after `step` from `folder` and returns
    their names. A run resumed from checkpoint `step` validates those steps again; until it does, the
    folder would hold reports of the killed run, possibly made with other eval settings."""
    folder = workdir_path(folder)
    if not folder.exists():
        return []
    patterns = [re.compile(re.escape(name).replace(re.escape("{step}"), "([0-9]+)")) for name in REPORT_FILES]
    removed = []
    for path in sorted(folder.iterdir()):
        match = next(filter(None, (p.fullmatch(path.name) for p in patterns)), None)
        if match and int(match.group(1)) > step:
            path.unlink()
            removed.append(path.name)
    return removed


def shared_problems(train: Sequence[Problem], validation: Sequence[Problem]) -> int:
    """How many validation problems appear among the training problems, word for word (spacing aside)."""
    seen = {" ".join(p.problem.split()) for p in train}
    return sum(" ".join(p.problem.split()) in seen for p in validation)


def make_evaluator(eval_cfg: EvalConfig, task, model_cfg, sampling_cfg, mesh, seed: int = 0,
                   workdir: str | None = None, stops: sampling.StopStrings | None = None):
    """evaluate(params, step) -> flat metrics, on `evaluate.problems`; with `workdir`, also JSON, a
    table and a pass@k plot (`REPORT_FILES`), and `evaluate.discard_after(step)`,
    `discard_reports_after` on that folder."""
    problems = task.problems("validation")
    params_ref: dict = {}
    generate = make_generate_fn(task, params_ref, model_cfg, eval_cfg, sampling_cfg, mesh, seed,
                                prompt_width(task, problems), stops)

    def evaluate(params, step: int) -> dict:
        params_ref.update(params=params, step=step, calls=0)
        report = evaluation.evaluate(generate, problems, prompt_fn=task.prompt_text, grader=task.grader,
                                     **eval_cfg.evaluate_options())
        if workdir is not None and jax.process_index() == 0:
            out = workdir_path(workdir)
            out.mkdir(parents=True, exist_ok=True)
            report_json, report_png = (out / name.format(step=step) for name in REPORT_FILES)
            evaluation.save_json(report, report_json)
            title = (f"{os.path.basename(task.data.validation)}: {len(problems)} problems, "
                     f"{eval_cfg.num_samples} samples each")
            evaluation.plot_pass_at_k({f"step {step}": report.summary}, report_png, title)
            print(evaluation.format_table({f"step {step}": report.summary}))
        return flat_summary(report.summary)

    evaluate.problems = problems
    if workdir is not None:
        evaluate.discard_after = lambda step: discard_reports_after(workdir, step)
    return evaluate
