"""Synthetic multi-step arithmetic word problems for the CPU demo, with a tiny tokenizer.

A problem starts from a count and applies 1..max_steps operations (all values stay in
[0, max_value]):

  q: tom has 3 pens. buys 4. sells 2. how many?
  a: 3+4=7
  7-2=5
  \\boxed{5}

Worked solutions come in three kinds, mixed by `SolutionMix`, so that a model fine-tuned on them
starts with a chosen accuracy and both kinds of RL reward have room to move:

  correct     the step-by-step chain above
  guess       only "\\boxed{g}", g uniform on [0, max_value]
  wrong_step  the chain with one step's result off by 1 or 2, carried through to a wrong answer

A model that imitates the mixture exactly has pass@1 = E_s[w_correct(s)] + w_guess / (max_value + 1),
where w_correct(s) = correct * correct_decay^(s - 1) for an s-step problem (the other weights are
renormalized). Within a problem, the correct chain is the single most likely completion (the
wrong chains and guesses are spread over many strings) as long as its weight exceeds
w_guess / (max_value + 1) and w_wrong / (2 * s), so sharpening towards the model's own mode helps.
"""

from __future__ import annotations

import dataclasses
from typing import Container, Sequence

import numpy as np

from rl_sharpen.tasks.answers import last_boxed
from rl_sharpen.tasks.datasets import Problem

_NAMES = ("tom", "ana", "bob", "eve", "max", "sam", "lea", "kim")
_ITEMS = ("pens", "cards", "coins", "eggs", "cups", "hats")
# Short sentences keep a character-level prompt within 64 tokens (cheap CPU training).
_PHRASES = {
    "+": ("buys {n}", "finds {n}", "gets {n}"),
    "-": ("sells {n}", "loses {n}", "drops {n}"),
    "*": ("ends with {n} times as many",),
}
KINDS = ("correct", "guess", "wrong_step")


@dataclasses.dataclass(frozen=True)
class ArithmeticConfig:
    min_steps: int = 1
    max_steps: int = 3
    max_value: int = 20  # start, operands, and every running total lie in [0, max_value]
    max_operand: int = 9  # operands of + and - lie in [1, max_operand]; * uses 2 or 3
    operations: str = "+-"  # "+-" or "+-*"

    def __post_init__(self):
        if not 1 <= self.min_steps <= self.max_steps:
            raise ValueError(f"need 1 <= min_steps <= max_steps, got {self.min_steps}, {self.max_steps}")
        if not 1 <= self.max_operand <= self.max_value:
            raise ValueError(f"need 1 <= max_operand <= max_value, got {self.max_operand}, {self.max_value}")
        if set(self.operations) - set(_PHRASES) or not {"+", "-"} <= set(self.operations):
            raise ValueError(f"operations must be '+-' or '+-*', got {self.operations!r}")


@dataclasses.dataclass(frozen=True)
class SolutionMix:
    """Relative weights of the solution kinds; `correct_decay` scales `correct` per extra step."""

    correct: float = 0.3
    guess: float = 0.4
    wrong_step: float = 0.3
    correct_decay: float = 1.0

    def __post_init__(self):
        weights = (self.correct, self.guess, self.wrong_step)
        if min(weights) < 0 or sum(weights) <= 0:
            raise ValueError(f"correct/guess/wrong_step must be >= 0 with a positive sum, got {weights}")
        if not 0 < self.correct_decay <= 1:
            raise ValueError(f"correct_decay must be in (0, 1], got {self.correct_decay}")

    def probabilities(self, num_steps: int) -> np.ndarray:
        """[p_correct, p_guess, p_wrong_step] for an s-step problem."""
        weights = np.array([self.correct * self.correct_decay ** (num_steps - 1), self.guess, self.wrong_step])
        return weights / weights.sum()


@dataclasses.dataclass(frozen=True)
class ArithmeticProblem:
    name: str
    item: str
    start: int
    steps: tuple[tuple[str, int], ...]  # (operation, operand)

    @property
    def totals(self) -> list[int]:
        """Running totals after each step."""
        totals, value = [], self.start
        for op, n in self.steps:
            value = _apply(op, value, n)
            totals.append(value)
        return totals

    @property
    def answer(self) -> int:
        return self.totals[-1]

    @property
    def arithmetic(self) -> tuple[int, tuple[tuple[str, int], ...]]:
        """What the problem asks, without its name and item: (start, steps)."""
        return self.start, self.steps

    @property
    def text(self) -> str:
        sentences = [f"{self.name} has {self.start} {self.item}."]
        for i, (op, n) in enumerate(self.steps):
            phrase = _PHRASES[op][(self.start + i) % len(_PHRASES[op])]
            sentences.append(f"{phrase.format(n=n)}.")
        sentences.append("how many?")
        return " ".join(sentences)

    def to_problem(self, index: int) -> Problem:
        return Problem(f"synthetic/{index}", self.text, str(self.answer), level=len(self.steps),
                       subject="arithmetic", source="synthetic")


def _apply(op: str, a: int, b: int) -> int:
    return a + b if op == "+" else a - b if op == "-" else a * b


_MAX_REDRAWS = 1000


@dataclasses.dataclass(frozen=True)
class HeldOut:
    """Problems kept out of training, by their `arithmetic` (start, steps). `x in held_out` is True for
    a held-out problem and, with `openings`, also for one whose first steps are a held-out problem's
    ((start, steps[:j]) held out for some j): its text and its correct chain open with that problem's."""
    arithmetic: frozenset = frozenset()
    openings: bool = False

    def __contains__(self, item) -> bool:
        start, steps = item
        if not self.openings:
            return item in self.arithmetic
        return any((start, steps[:j]) in self.arithmetic for j in range(1, len(steps) + 1))


def sample_problem(rng: np.random.Generator, cfg: ArithmeticConfig = ArithmeticConfig(),
                   held_out: Container = frozenset()) -> ArithmeticProblem:
    """A random problem; one whose `arithmetic` is in `held_out` (the validation problems', a set or a
    `HeldOut`) is drawn again, so that training never sees a validation problem under another name or
    item."""
    for _ in range(_MAX_REDRAWS):
        problem = _draw_problem(rng, cfg)
        if problem.arithmetic not in held_out:
            return problem
    raise ValueError(f"{_MAX_REDRAWS} problems in a row were held out: the held-out (validation) problems cover "
                     "almost every problem of this size; use fewer validation problems or more steps / larger values")


def _draw_problem(rng: np.random.Generator, cfg: ArithmeticConfig) -> ArithmeticProblem:
    num_steps = int(rng.integers(cfg.min_steps, cfg.max_steps + 1))
    value = start = int(rng.integers(0, cfg.max_value + 1))
    steps = []
    for _ in range(num_steps):
        options = []  # (op, operand) keeping the total in [0, max_value]
        for op in cfg.operations:
            operands = (2, 3) if op == "*" else range(1, cfg.max_operand + 1)
            options += [(op, n) for n in operands if 0 <= _apply(op, value, n) <= cfg.max_value]
        op, n = options[int(rng.integers(len(options)))]  # never empty: "+1" or "-1" fits
        value = _apply(op, value, n)
        steps.append((op, n))
    return ArithmeticProblem(_NAMES[int(rng.integers(len(_NAMES)))], _ITEMS[int(rng.integers(len(_ITEMS)))],
                             start, tuple(steps))


def make_problems(num: int, seed: int | Sequence[int], cfg: ArithmeticConfig = ArithmeticConfig(),
                  held_out: Container = frozenset()) -> list[ArithmeticProblem]:
    rng = np.random.default_rng(seed)
    return [sample_problem(rng, cfg, held_out) for _ in range(num)]


def _chain(problem: ArithmeticProblem, totals: Sequence[int]) -> str:
    previous = [problem.start, *totals[:-1]]
    lines = [f"{a}{op}{n}={t}" for a, (op, n), t in zip(previous, problem.steps, totals)]
    return "\n".join(lines + [f"\\boxed{{{totals[-1]}}}"])


def solution(problem: ArithmeticProblem, kind: str, rng: np.random.Generator,
             cfg: ArithmeticConfig = ArithmeticConfig()) -> str:
    """A worked solution of the given kind (see module docstring)."""
    if kind == "correct":
        return _chain(problem, problem.totals)
    if kind == "guess":
        return f"\\boxed{{{int(rng.integers(0, cfg.max_value + 1))}}}"
    if kind == "wrong_step":  # later steps (+n, -n, *2, *3) are injective, so the answer is wrong
        wrong_at = int(rng.integers(len(problem.steps)))
        totals, value = [], problem.start
        for i, (op, n) in enumerate(problem.steps):
            value = _apply(op, value, n)
            if i == wrong_at:
                candidates = [value + d for d in (-2, -1, 1, 2) if value + d >= 0]
                value = candidates[int(rng.integers(len(candidates)))]
            totals.append(value)
        return _chain(problem, totals)
    raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")


@dataclasses.dataclass(frozen=True)
class Example:
    problem: ArithmeticProblem
    kind: str
    completion: str


def make_examples(num: int, seed: int, cfg: ArithmeticConfig = ArithmeticConfig(),
                  mix: SolutionMix = SolutionMix(), held_out: Container = frozenset()) -> list[Example]:
    """Warm-start (SFT) data: problems (none in `held_out`) with solutions drawn from the mixture."""
    rng = np.random.default_rng(seed)
    examples = []
    for _ in range(num):
        problem = sample_problem(rng, cfg, held_out)
        kind = KINDS[int(rng.choice(len(KINDS), p=mix.probabilities(len(problem.steps))))]
        examples.append(Example(problem, kind, solution(problem, kind, rng, cfg)))
    return examples


def expected_pass_at_1(cfg: ArithmeticConfig = ArithmeticConfig(), mix: SolutionMix = SolutionMix()) -> float:
    """pass@1 of a model that samples exactly from the mixture (steps uniform on [min, max])."""
    steps = range(cfg.min_steps, cfg.max_steps + 1)
    per_step = [mix.probabilities(s) @ np.array([1.0, 1.0 / (cfg.max_value + 1), 0.0]) for s in steps]
    return float(np.mean(per_step))


def score(completion: str, problem: ArithmeticProblem) -> float:
    """Exact task reward: 1.0 iff the completion's last \\boxed{} holds the answer's digits."""
    boxed = last_boxed(completion)
    return float(boxed is not None and boxed.strip() == str(problem.answer))


# ---------------------------------------------------------------------------------------------
# Tokenizer.

ALPHABET = "abcdefghijklmnopqrstuvwxyz0123456789 .,?:\n\\{}+-*="


@dataclasses.dataclass(frozen=True)
class CharTokenizer:
    """Character-level tokenizer: ids 0, 1, 2 are pad, bos, eos; then one id per character.

    Prompt format: [bos] "q: {problem}\\na: " ; the completion is followed by [eos].
    """

    alphabet: str = ALPHABET
    pad_id: int = 0
    bos_id: int = 1
    eos_id: int = 2

    def __post_init__(self):
        if len(set(self.alphabet)) != len(self.alphabet):
            raise ValueError("alphabet has repeated characters")

    @property
    def vocab_size(self) -> int:
        return len(self.alphabet) + 3

    def __len__(self) -> int:  # like a Hugging Face tokenizer's len(): every id, special ones included
        return self.vocab_size

    def encode(self, text: str, add_bos: bool = False, add_eos: bool = False) -> list[int]:
        ids = []
        for position, char in enumerate(text):
            index = self.alphabet.find(char)
            if index < 0:
                raise ValueError(f"character {char!r} at position {position} is not in the alphabet {self.alphabet!r}")
            ids.append(index + 3)
        return [self.bos_id] * add_bos + ids + [self.eos_id] * add_eos

    def decode(self, ids: Sequence[int]) -> str:
        """Text up to the first eos; pad and bos are dropped."""
        chars = []
        for i in map(int, ids):
            if i == self.eos_id:
                break
            if i >= 3:
                chars.append(self.alphabet[i - 3])
        return "".join(chars)

    @staticmethod
    def prompt_text(problem: str) -> str:
        return f"q: {problem}\na: "

    def encode_prompt(self, problem: str) -> list[int]:
        return self.encode(self.prompt_text(problem), add_bos=True)
