"""Evaluation: pass@k, maj@k, greedy accuracy and answer diversity on math problems.

For a problem with n samples of which c are correct:

  pass@k = 1 - C(n - c, k) / C(n, k) = 1 - prod_{i = n - c + 1}^{n} (1 - k / i)

(the unbiased estimator of P[at least one of k samples is correct]; the product avoids huge
binomials). maj@k is the probability that a majority vote over k samples drawn without
replacement picks a correct answer. Equal answers vote together (`vote_keys`): all correct answers
(each equals the gold, whatever its notation: "\\frac{\\pi}{2}" and "\\pi/2"), and wrong answers
with one canonical form ("0.5" and "\\frac12") or found equal by the verifier; "25" and "25\\%"
or "x = 1" and "y = 1" never share a vote when one is right and the other wrong. Samples without a
final answer do not vote; a tie between the top answers counts as the fraction of tied answers
that are correct (the expectation of a uniformly random tie-break). It is averaged over all C(n, k)
subsets when there are at most `maj_draws` of them, else over `maj_draws` subsets drawn with one
fixed seed, the same for every problem and every run, so that the saved summaries of any two runs
are estimated alike.

Every mean over problems comes with its standard error over problems (`standard_error` of the
per-problem values of `problem_scores`), and `paired_difference` measures the change between two
evaluations of the same problems with a paired error, the comparison a training run is judged by.
`evaluate` runs a generation callable over problems, verifies the samples, and summarizes;
`save_json`, `format_table` and `plot_pass_at_k` report the summaries, `load_results` reads them back.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import itertools
import json
import math
import os
import time
from typing import Any, Callable, Mapping, Sequence

import jax
import numpy as np
from tqdm import tqdm

from rl_sharpen.metrics import save_png, workdir_path, write_json
from rl_sharpen.tasks.datasets import Problem
from rl_sharpen.tasks.answers import canonical_answer, fast_verdict, too_long
from rl_sharpen.tasks.verify import VerifierPool, VerifyStats, default_pool, grade_batch


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k = 1 - C(n - c, k) / C(n, k) for c correct among n samples."""
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"need 0 <= c <= n and 1 <= k <= n, got n={n}, c={c}, k={k}")
    if n - c < k:
        return 1.0
    return 1.0 - float(np.prod(1.0 - k / np.arange(n - c + 1, n + 1)))


def default_k_list(n: int) -> list[int]:
    """1, 2, 4, ... up to n, and n itself."""
    ks = [2**i for i in range(n.bit_length()) if 2**i <= n]
    return ks if ks[-1] == n else ks + [n]


def _vote_scores(labels: np.ndarray, label_correct: np.ndarray) -> np.ndarray:
    """Majority-vote score per row of `labels` [D, k] (answer label per sample, -1 = none)."""
    num_rows, num_labels = labels.shape[0], len(label_correct)
    if num_labels == 0:
        return np.zeros(num_rows)
    rows = np.repeat(np.arange(num_rows), labels.shape[1])
    votes = labels.ravel()
    counts = np.bincount(rows[votes >= 0] * num_labels + votes[votes >= 0],
                         minlength=num_rows * num_labels).reshape(num_rows, num_labels)
    top = counts.max(axis=1, keepdims=True)
    winners = (counts == top) & (top > 0)
    num_winners = winners.sum(axis=1)
    return np.where(num_winners > 0, (winners & label_correct).sum(axis=1) / np.maximum(num_winners, 1), 0.0)


def maj_at_k(keys: Sequence[str | None], correct: Sequence[bool], k: int, maj_draws: int = 1000,
             seed: int = 0) -> float:
    """maj@k for one problem: keys[i] is sample i's vote key (None: no answer), correct[i] its
    reward. A key is correct if its first sample is (`vote_keys` never gives a correct and a wrong
    answer one key)."""
    n = len(keys)
    if len(correct) != n or not 1 <= k <= n:
        raise ValueError(f"need len(correct) == len(keys) = n and 1 <= k <= n, got {len(correct)}, {n}, k={k}")
    label_of: dict[str, int] = {}
    label_correct: list[bool] = []
    for key, ok in zip(keys, correct):
        if key is not None and key not in label_of:
            label_of[key] = len(label_of)
            label_correct.append(bool(ok))
    labels = np.array([-1 if key is None else label_of[key] for key in keys])
    if math.comb(n, k) <= maj_draws:
        subsets = np.array(list(itertools.combinations(range(n), k)))
    else:
        rng = np.random.default_rng(seed)
        subsets = np.argsort(rng.random((maj_draws, n)), axis=1)[:, :k]
    return float(_vote_scores(labels[subsets], np.array(label_correct, dtype=bool)).mean())


# Wrong answers compared pairwise per problem for `vote_keys`: the most frequent 16 (120 pairs at most).
MAX_COMPARED_WRONG_ANSWERS = 16


def vote_keys(answers: Sequence[Sequence[str | None]], correct: Sequence[Sequence[bool]], golds: Sequence[str],
              *, compare_wrong: bool = True, timeout: float = 5.0, workers: int | None = None,
              pool: VerifierPool | None = None) -> tuple[list[list[str | None]], dict[str, float]]:
    """Majority-vote keys per problem (answers[p][i]: sample i's final answer, None for none): samples
    with equal answers share a key, so that maj@k counts an answer's votes whatever its notation.

    A correct answer equals the gold, so all correct samples share the key `canonical_answer(gold)`.
    A wrong sample starts from its own `canonical_answer` (one equal to the gold's, which only a
    grader other than this one can give, is kept apart). With `compare_wrong`, the
    MAX_COMPARED_WRONG_ANSWERS most frequent wrong keys (ties by key; not those too long to be graded,
    `answers.too_long` against the gold, which keep their own key) are compared pairwise by the
    verifier (`fast_verdict`, else `symbolic_equal` in the worker pool under `timeout`; a pair that
    times out or fails counts as unequal), and two groups join only if every pair across them is equal:
    the verifier is not transitive ("25%" equals both 0.25 and 25), so 0.25 and 25 stay apart. The
    keys do not depend on the order of the samples, and a correct and a wrong sample never share one.
    Returns the keys and counters (pairs compared by sympy, keys joined to a group, timeouts, errors,
    seconds).
    """
    start = time.perf_counter()
    compared = []  # per problem: (first keys of its samples, {wrong key: representative}, keys compared, verdicts)
    undecided = set()
    for problem_answers, problem_correct, gold in zip(answers, correct, golds, strict=True):
        gold_key = canonical_answer(gold)
        sample_keys = [None if answer is None else gold_key if ok else _wrong_key(answer, gold_key)
                       for answer, ok in zip(problem_answers, problem_correct, strict=True)]
        by_key: dict[str, list[str]] = collections.defaultdict(list)
        for answer, ok, key in zip(problem_answers, problem_correct, sample_keys):
            if answer is not None and not ok:
                by_key[key].append(answer)
        representative = {key: min(forms) for key, forms in by_key.items()}
        parsed = [key for key in by_key if not too_long(representative[key], gold)]  # grading never parsed the rest
        order = sorted(parsed, key=lambda key: (-len(by_key[key]), key))
        top = order[:MAX_COMPARED_WRONG_ANSWERS] if compare_wrong else []
        verdicts = {(a, b): fast_verdict(representative[b], representative[a])
                    for i, a in enumerate(top) for b in top[i + 1:]}
        undecided.update((representative[b], representative[a]) for (a, b), v in verdicts.items() if v is None)
        compared.append((sample_keys, representative, top, verdicts))
    equal, timeouts, errors = {}, 0, 0
    if undecided:
        undecided = sorted(undecided)
        results, timeouts, errors = (pool or default_pool(workers)).run(undecided, timeout)
        equal = dict(zip(undecided, map(bool, results)))
    keys, joined = [], 0
    for sample_keys, representative, top, verdicts in compared:
        def same(a, b):
            verdict = verdicts[(a, b)]
            return equal[(representative[b], representative[a])] if verdict is None else verdict
        groups: list[list[str]] = []  # complete linkage, in the order of `top`
        for key in top:
            home = next((g for g in groups if all(same(member, key) for member in g)), None)
            if home is None:
                groups.append([key])
            else:
                home.append(key)
                joined += 1
        group_key = {key: g[0] for g in groups for key in g}  # the gold's key and unjoined keys map to themselves
        keys.append([group_key.get(key, key) for key in sample_keys])
    return keys, {"pairs_symbolic": len(undecided), "keys_joined": joined, "timeouts": timeouts,
                  "errors": errors, "seconds": time.perf_counter() - start}


def with_votes(results: Sequence[ProblemResult], *, timeout: float = 5.0, workers: int | None = None,
               pool: VerifierPool | None = None) -> list[ProblemResult]:
    """`results` with the `votes` of `vote_keys` filled in where a result has none (files saved before
    vote keys were), so that two files' maj@k group their votes alike."""
    todo = [i for i, r in enumerate(results) if r.votes is None]
    out = list(results)
    if todo:
        keys, _ = vote_keys([results[i].answers for i in todo], [results[i].rewards > 0 for i in todo],
                            [results[i].problem.answer for i in todo], timeout=timeout, workers=workers, pool=pool)
        for i, votes in zip(todo, keys):
            out[i] = dataclasses.replace(results[i], votes=votes)
    return out


def _wrong_key(answer: str, gold_key: str) -> str:
    key = canonical_answer(answer)
    return f"{key} (scored 0)" if key == gold_key else key


class Grader:
    """How a task judges completions, in rollouts (the task reward) and in validation (pass@k, maj@k).

    `grade` gives r_i = 1[completion_i answers gold_i] (float32 [N] in {0, 1}), the answer read from
    each completion (a string; None: none) and counters (a mapping of numbers); `vote_keys` gives, per
    problem, the key each sample votes with in maj@k: a string, None exactly where the answer is None,
    and never one key for a correct and a wrong sample (maj@k scores a key by one of its samples).
    Validation checks all of these. A new task subclasses this and writes `grade`; the keys it
    inherits are exact: a correct sample votes with `answer_key(gold)`, a wrong one with
    `answer_key(answer)` (kept apart from the gold's key should the two be equal).
    """

    def grade(self, completions: Sequence[str], golds: Sequence[str], *, timeout: float = 5.0,
              workers: int | None = None) -> tuple[np.ndarray, list[str | None], VerifyStats | Mapping[str, float]]:
        raise NotImplementedError(f"{type(self).__name__}.grade")

    def answer_key(self, answer: str) -> str:
        """The key of an answer: equal keys are one answer (rollouts' majority-vote reward groups by it)."""
        return answer

    def rollout_counters(self, counters: dict[str, float]) -> dict[str, float]:
        """The counters of `grade` (as a dict) that a rollout logs, as verify_<name>: all of them."""
        return counters

    def vote_keys(self, answers: Sequence[Sequence[str | None]], correct: Sequence[Sequence[bool]],
                  golds: Sequence[str], *, timeout: float = 5.0, workers: int | None = None
                  ) -> tuple[list[list[str | None]], dict[str, float]]:
        keys = []
        for problem_answers, problem_correct, gold in zip(answers, correct, golds, strict=True):
            gold_key = self.answer_key(gold)
            wrong = {a: self.answer_key(a) for a, ok in zip(problem_answers, problem_correct)
                     if a is not None and not ok}
            keys.append([None if a is None else gold_key if ok else
                         f"{wrong[a]} (scored 0)" if wrong[a] == gold_key else wrong[a]
                         for a, ok in zip(problem_answers, problem_correct, strict=True)])
        return keys, {}


class MathGrader(Grader):
    """The math verifier (`tasks.verify.grade_batch`: the last boxed or stated answer against the gold,
    by canonical form, then sympy in a worker pool under `timeout`), and `vote_keys` above, which
    also joins wrong answers the verifier finds equal."""

    def grade(self, completions, golds, *, timeout=5.0, workers=None):
        return grade_batch(list(completions), list(golds), timeout=timeout, workers=workers)

    def answer_key(self, answer):
        return canonical_answer(answer)

    def rollout_counters(self, counters):  # the verifier's time is in the rollout's own time_score
        return {"timeouts": counters["num_timeouts"], "errors": counters["num_errors"]}

    def vote_keys(self, answers, correct, golds, *, timeout=5.0, workers=None):
        return vote_keys(answers, correct, golds, timeout=timeout, workers=workers)


MATH_GRADER = MathGrader()


# ---------------------------------------------------------------------------------------------
# Evaluation loop.


@dataclasses.dataclass(frozen=True)
class Generations:
    texts: list[list[str]]  # [B][G] completion texts
    num_tokens: np.ndarray  # [B, G] completion lengths in tokens


# generate_fn(prompts, num_samples, greedy) -> Generations with len(prompts) rows of num_samples.
GenerateFn = Callable[[Sequence[str], int, bool], Generations]


def generations_from_tokens(tokens: np.ndarray, lengths: np.ndarray, decode: Callable[[Sequence[int]], str],
                            num_samples: int) -> Generations:
    """Sampler output [B * G, N] (row b * G + g is sample g of prompt b) -> Generations."""
    if tokens.shape[0] % num_samples:
        raise ValueError(f"tokens has {tokens.shape[0]} rows, not a multiple of num_samples={num_samples}")
    texts = [decode(row[:length]) for row, length in zip(np.asarray(tokens), np.asarray(lengths))]
    num_prompts = len(texts) // num_samples
    return Generations([texts[b * num_samples:(b + 1) * num_samples] for b in range(num_prompts)],
                       np.asarray(lengths).reshape(num_prompts, num_samples))


@dataclasses.dataclass(frozen=True)
class ProblemResult:
    problem: Problem
    answers: list[str | None]  # extracted final answer per sample
    rewards: np.ndarray  # [n] float32 in {0, 1}
    num_tokens: np.ndarray  # [n]
    greedy_answer: str | None = None
    greedy_reward: float | None = None
    votes: list[str | None] | None = None  # vote key per sample (`vote_keys`); None: `keys` works them out
    texts: list[str] | None = None  # the completions of the first samples, as many as `evaluate` kept
    greedy_text: str | None = None  # the greedy completion, when texts are kept

    @functools.cached_property
    def keys(self) -> list[str | None]:
        """Vote keys: `votes`, else those of `vote_keys` without comparing wrong answers."""
        if self.votes is not None:
            return self.votes
        return vote_keys([self.answers], [self.rewards > 0], [self.problem.answer], compare_wrong=False)[0][0]


# The metrics of `problem_scores`: tables by k, and one value per problem. A metric added there and
# named here gets its mean and standard error in summaries and flat metrics (result.json,
# TensorBoard), and its paired change in `rl_sharpen.compare` (a table by k at once; a value per
# problem once given a row in compare._ROWS). The table and the plot draw pass@k and maj@k only.
PER_K_METRICS = ("pass@k", "maj@k")
_SCALARS = ("mean_response_tokens", "mean_distinct_answers", "no_answer_rate", "greedy_accuracy")


def problem_scores(results: Sequence[ProblemResult], k_list: Sequence[int] | None = None,
                   maj_draws: int = 1000) -> dict[str, Any]:
    """Each problem's own value of every summary metric, in the order of `results`:
    {"pass@k": {k: [N]}, "maj@k": {k: [N]}, "mean_response_tokens": [N], "mean_distinct_answers": [N],
    "no_answer_rate": [N], "greedy_accuracy": [N] (NaN where a problem has no greedy sample)}."""
    if not results:
        raise ValueError("results must be non-empty")
    n = min(len(r.rewards) for r in results)
    if n != max(len(r.rewards) for r in results):
        raise ValueError("all problems must have the same number of samples")
    k_list = list(k_list or default_k_list(n))
    if max(k_list) > n or min(k_list) < 1:
        raise ValueError(f"k_list must lie in [1, n={n}], got {k_list}")
    return {
        "pass@k": {k: np.array([pass_at_k(n, int(r.rewards.sum()), k) for r in results]) for k in k_list},
        "maj@k": {k: np.array([maj_at_k(r.keys, r.rewards > 0, k, maj_draws) for r in results])
                  for k in k_list},
        "mean_response_tokens": np.array([np.mean(r.num_tokens) for r in results], dtype=np.float64),
        "mean_distinct_answers": np.array([len({k for k in r.keys if k is not None}) for r in results], dtype=float),
        "no_answer_rate": np.array([np.mean([a is None for a in r.answers]) for r in results]),
        "greedy_accuracy": np.array([np.nan if r.greedy_reward is None else r.greedy_reward for r in results]),
    }


def standard_error(values) -> float | None:
    """Standard error of a mean over problems, s / sqrt(N) with s^2 = sum_i (x_i - mean)^2 / (N - 1);
    None for N < 2. When each x_i is an unbiased estimate from the problem's own samples (pass@k from
    n samples), s^2 estimates the spread between problems plus each estimate's sampling variance, so
    the error covers both: it is the one to use when problems are a sample of a larger population."""
    x = np.asarray(values, dtype=np.float64)
    return float(x.std(ddof=1) / math.sqrt(len(x))) if len(x) >= 2 else None


def replicated_change(changes) -> dict[str, Any]:
    """A change measured by R replicates (seeds, warm starts) on the same N problems, from the per-problem
    changes d [R, N]: each replicate's mean and standard error, and the mean over replicates with
    the standard error of the problems' mean change, std_i(mean_r d_ri) / sqrt(N). The replicates share
    the problems, so the spread between problems counts once; sqrt(sum_r se_r^2) / R, which treats the
    replicates as independent, understates the error by up to sqrt(R) when that spread dominates."""
    d = np.asarray(changes, dtype=np.float64)
    if d.ndim != 2 or d.shape[1] < 2:
        raise ValueError(f"changes must be [replicates, problems] with at least 2 problems, got shape {d.shape}")
    return {"per_seed": d.mean(1).tolist(), "per_seed_stderr": [standard_error(row) for row in d],
            "mean": float(d.mean()), "stderr_of_mean": standard_error(d.mean(0)), "num_problems": d.shape[1]}


def _mean_and_errors(scores: dict[str, Any]) -> dict[str, Any]:
    """Means of `problem_scores`-shaped values, with their standard errors under "stderr" (NaNs skipped;
    a metric no problem has is left out)."""
    out: dict[str, Any] = {}
    errors: dict[str, Any] = {}
    for key in PER_K_METRICS:
        out[key] = {k: float(np.mean(v)) for k, v in scores[key].items()}
        errors[key] = {k: standard_error(v) for k, v in scores[key].items()}
    for key in _SCALARS:
        values = scores[key][~np.isnan(scores[key])]
        if values.size:
            out[key], errors[key] = float(np.mean(values)), standard_error(values)
    out["stderr"] = errors
    return out


def summarize(results: Sequence[ProblemResult], k_list: Sequence[int] | None = None, maj_draws: int = 1000,
              breakdown: bool = True) -> dict[str, Any]:
    """Mean metrics over problems, each with its standard error over problems (`standard_error`) under
    "stderr"; with `breakdown`, also per level and per subject."""
    scores = problem_scores(results, k_list, maj_draws)
    summary = {"num_problems": len(results), "num_samples": len(results[0].rewards), **_mean_and_errors(scores)}
    if breakdown:  # each group's summary from its problems' scores (a problem's maj@k does not depend on the group)
        for field in ("level", "subject"):
            groups: dict[str, list[int]] = {}
            for i, r in enumerate(results):
                if getattr(r.problem, field) is not None:
                    groups.setdefault(str(getattr(r.problem, field)), []).append(i)
            if groups:
                summary[f"by_{field}"] = {
                    name: {"num_problems": len(rows), "num_samples": summary["num_samples"],
                           **_mean_and_errors(jax.tree.map(lambda v: v[np.asarray(rows)], scores))}
                    for name, rows in sorted(groups.items())}
    return summary


def paired_scores(new: Sequence[ProblemResult], old: Sequence[ProblemResult], k_list: Sequence[int] | None = None,
                  maj_draws: int = 1000, names: tuple[str, str] = ("new", "old")) -> tuple[list[str], dict, dict]:
    """(ids of the problems both evaluated, `problem_scores` of `new` and of `old` on them, in that order):
    the per-problem values a paired comparison averages. Problems pair by id; a shared id whose gold
    answer, level or subject differ between the two is an error: two problem sets numbered alike (e.g.
    synthetic problems drawn with other settings) are not the same problems."""
    def by_id(results, name):
        ids = [r.problem.id for r in results]
        repeated = sorted(i for i, count in collections.Counter(ids).items() if count > 1)
        if repeated:
            raise ValueError(f"{name} has repeated problem ids ({', '.join(repeated[:3])}); they cannot be paired")
        return dict(zip(ids, results))

    new_by_id, old_by_id = by_id(new, names[0]), by_id(old, names[1])
    shared = [i for i in old_by_id if i in new_by_id]
    if not shared:
        raise ValueError(f"{names[0]} and {names[1]} share no problem id")
    def label(result):
        return result.problem.answer, result.problem.level, result.problem.subject

    if differing := [i for i in shared if label(new_by_id[i]) != label(old_by_id[i])]:
        first = differing[0]
        raise ValueError(f"{names[0]} and {names[1]} are not the same problems: {len(differing)} of the {len(shared)} "
                         f"shared ids differ in gold answer, level or subject, e.g. {first}: "
                         f"{label(new_by_id[first])} against {label(old_by_id[first])}")
    k_list = list(k_list or default_k_list(min(len(new[0].rewards), len(old[0].rewards))))
    def scores(by_id, name):
        try:
            return problem_scores([by_id[i] for i in shared], k_list, maj_draws)
        except ValueError as e:
            raise ValueError(f"{name}: {e}") from None

    return shared, scores(new_by_id, names[0]), scores(old_by_id, names[1])


def paired_difference(new: Sequence[ProblemResult], old: Sequence[ProblemResult],
                      k_list: Sequence[int] | None = None, maj_draws: int = 1000,
                      names: tuple[str, str] = ("new", "old")) -> dict[str, Any]:
    """The change from `old` to `new` on the problems both evaluated (`paired_scores`), with paired
    standard errors: for each metric, d_i = x_i(new) - x_i(old), its mean over the N shared problems and
    s_d / sqrt(N). Pairing cancels the part of the spread between problems that both runs share (a hard
    problem stays hard), so the error of a change is usually below that of two independent summaries
    combined. Same layout as `summarize`, plus "new" and "old": each side's means and errors on the
    shared problems (their difference is the change; a greedy accuracy is averaged over the problems
    both sides have one for). `names` name the two sides in errors."""
    shared, new_scores, old_scores = paired_scores(new, old, k_list, maj_draws, names)
    for key in _SCALARS:  # a value one side lacks (greedy) is left out of both sides' means, as of the change's
        missing = np.isnan(new_scores[key]) | np.isnan(old_scores[key])
        for scores in (new_scores, old_scores):
            scores[key] = np.where(missing, np.nan, scores[key])
    diff = jax.tree.map(lambda a, b: a - b, new_scores, old_scores)
    return {"num_problems": len(shared), **_mean_and_errors(diff), "new": _mean_and_errors(new_scores),
            "old": _mean_and_errors(old_scores)}


@dataclasses.dataclass
class EvalReport:
    summary: dict[str, Any]
    results: list[ProblemResult]
    verify_stats: list[dict[str, float]]  # the grader's counters, per call
    vote_stats: dict[str, float] = dataclasses.field(default_factory=dict)  # summed counters of `vote_keys`


def evaluate(generate_fn: GenerateFn, problems: Sequence[Problem], *, prompt_fn: Callable[[Problem], str],
             n_samples: int, k_list: Sequence[int] | None = None, batch_size: int = 8, greedy: bool = True,
             verify_timeout: float = 5.0, verify_workers: int | None = None, maj_draws: int = 1000,
             keep_texts: int = 0, grader: Grader = MATH_GRADER) -> EvalReport:
    """Samples `n_samples` completions (and one greedy one) per problem, grades them and groups equal
    answers into votes with `grader` (the task's; by default the math verifier), summarizes.

    prompt_fn turns a problem into the prompt text given to generate_fn (e.g.
    `lambda p: prompts.render_prompt(tokenizer, p.problem)`). keep_texts: how many completions of
    each problem (its first samples, and the greedy one) its result keeps for reading.
    """
    if n_samples < 1 or batch_size < 1 or keep_texts < 0:
        raise ValueError(f"n_samples and batch_size must be >= 1 and keep_texts >= 0, got {n_samples}, {batch_size}, "
                         f"{keep_texts}")
    results, stats, vote_stats = [], [], {}
    for start in tqdm(range(0, len(problems), batch_size), desc="eval", unit="batch", dynamic_ncols=True,
                      disable=jax.process_index() != 0):
        batch = list(problems[start:start + batch_size])
        prompts = [prompt_fn(p) for p in batch]
        sampled = _checked(generate_fn(prompts, n_samples, False), len(batch), n_samples)
        texts = [t for row in sampled.texts for t in row]
        rewards, answers, stat = run_grader(grader, texts, [p.answer for p in batch for _ in range(n_samples)],
                                            verify_timeout, verify_workers)
        stats.append(stat)
        rewards = rewards.reshape(len(batch), n_samples)
        answers = [answers[i * n_samples:(i + 1) * n_samples] for i in range(len(batch))]
        votes, vote_stat = grader.vote_keys(answers, rewards > 0, [p.answer for p in batch],
                                            timeout=verify_timeout, workers=verify_workers)
        if len(votes) != len(batch):
            raise ValueError(f"{type(grader).__name__}.vote_keys must return {len(batch)} lists of keys, got "
                             f"{len(votes)}")
        for p, keys, problem_answers, problem_rewards in zip(batch, votes, answers, rewards):
            if problem := _votes_problem(keys, problem_answers, problem_rewards):
                raise ValueError(f"{type(grader).__name__}.vote_keys, problem {p.id}: {problem}; got {keys!r}")
        vote_stats = {name: vote_stats.get(name, 0) + value for name, value in vote_stat.items()}
        greedy_answers, greedy_rewards, greedy_texts = [None] * len(batch), [None] * len(batch), [None] * len(batch)
        if greedy:
            greedy_texts = [row[0] for row in _checked(generate_fn(prompts, 1, True), len(batch), 1).texts]
            greedy_scores, greedy_answers, stat = run_grader(grader, greedy_texts, [p.answer for p in batch],
                                                             verify_timeout, verify_workers)
            stats.append(stat)
            greedy_rewards = [float(r) for r in greedy_scores]
        results += [ProblemResult(p, answers[i], rewards[i], np.asarray(sampled.num_tokens[i]), greedy_answers[i],
                                  greedy_rewards[i], votes[i], *((list(sampled.texts[i][:keep_texts]), greedy_texts[i])
                                                                 if keep_texts else ()))
                    for i, p in enumerate(batch)]
    return EvalReport(summarize(results, k_list, maj_draws), results, stats, vote_stats)


def run_grader(grader: Grader, completions: list[str], golds: list[str], timeout: float, workers: int | None):
    """grader.grade's (rewards float32 [N] in {0, 1}, answers [N], counters as a dict), checked."""
    rewards, answers, stats = grader.grade(completions, golds, timeout=timeout, workers=workers)
    rewards = np.asarray(rewards, np.float32)
    if rewards.shape != (len(completions),) or len(answers) != len(completions) or not np.isin(rewards, (0, 1)).all():
        raise ValueError(f"{type(grader).__name__}.grade must return {len(completions)} rewards in {{0, 1}} and "
                         f"{len(completions)} answers, got rewards of shape {rewards.shape} and {len(answers)} answers")
    if problem := _answers_problem(answers):
        raise ValueError(f"{type(grader).__name__}.grade: {problem}, got {list(answers)[:8]!r}")
    counters = dataclasses.asdict(stats) if dataclasses.is_dataclass(stats) else stats
    if not (isinstance(counters, Mapping) and all(isinstance(v, (int, float, np.number)) for v in counters.values())):
        raise ValueError(f"{type(grader).__name__}.grade: its counters must map names to numbers, got {stats!r}")
    return rewards, list(answers), dict(counters)


def _answers_problem(answers) -> str | None:
    """What is wrong with one problem's answers (saved or graded), None if nothing."""
    return None if all(a is None or isinstance(a, str) for a in answers) else "answers must be strings or null"


def _votes_problem(votes, answers, rewards) -> str | None:
    """What is wrong with one problem's vote keys, None if nothing: maj@k needs a string per answer
    (null without one), and no key shared by a correct and a wrong sample."""
    if not (isinstance(votes, (list, tuple)) and len(votes) == len(answers)
            and all((v is None) == (a is None) and (v is None or isinstance(v, str)) for v, a in zip(votes, answers))):
        return "votes must be a list of strings (null where there is no answer), one per answer"
    correct_keys = {v for v, x in zip(votes, rewards) if v is not None and x > 0}
    if any(v in correct_keys for v, x in zip(votes, rewards) if not x > 0):
        return "votes give a correct and a wrong sample one key (maj@k scores a key by one sample)"
    return None


def _checked(out: Generations, num_prompts: int, num_samples: int) -> Generations:
    shape = (len(out.texts), *{len(row) for row in out.texts})
    if shape != (num_prompts, num_samples) or np.shape(out.num_tokens) != (num_prompts, num_samples):
        raise ValueError(f"generate_fn must return {num_prompts} x {num_samples} completions, got texts "
                         f"{[len(row) for row in out.texts]} and num_tokens {np.shape(out.num_tokens)}")
    return out


# ---------------------------------------------------------------------------------------------
# Reporting.


def save_json(report: EvalReport, path: str) -> None:
    """Summary plus one record per problem (answers, rewards, lengths, and the completions kept) as JSON."""
    records = [{
        "id": r.problem.id, "gold": r.problem.answer, "level": r.problem.level, "subject": r.problem.subject,
        "answers": r.answers, "rewards": r.rewards.tolist(), "num_tokens": np.asarray(r.num_tokens).tolist(),
        "greedy_answer": r.greedy_answer, "greedy_reward": r.greedy_reward, "votes": r.keys,
        **({} if r.texts is None else {"texts": r.texts, "greedy_text": r.greedy_text}),
    } for r in report.results]
    verify: dict[str, float] = {}
    for counters in report.verify_stats:
        for name, value in counters.items():
            verify[name] = verify.get(name, 0) + value
    write_json({"summary": report.summary, "verify": verify, "votes": report.vote_stats, "problems": records}, path)


def load_results(path: str | os.PathLike) -> list[ProblemResult]:
    """The per-problem results of a `save_json` file, for `summarize` or `paired_difference` (the
    problem statements are not saved: empty). A file saved before evaluations kept their maj@k vote
    keys gets them from its answers (`with_votes`, which may run the verifier's worker pool). A
    malformed file is a ValueError that names it."""
    try:
        records = json.loads(workdir_path(path).read_text())["problems"]
    except (KeyError, TypeError, json.JSONDecodeError) as e:
        raise ValueError(f"{path} is not an evaluation written by evaluation.save_json ({type(e).__name__}: {e})") from e
    if not isinstance(records, list) or not records:
        raise ValueError(f"{path}: 'problems' must be a non-empty list of per-problem records")
    results = []
    for i, r in enumerate(records):
        try:
            answers, rewards, tokens = r["answers"], r["rewards"], r["num_tokens"]
            if not (isinstance(answers, list) and isinstance(rewards, list) and isinstance(tokens, list)
                    and len(answers) == len(rewards) == len(tokens) > 0):
                raise ValueError("answers, rewards and num_tokens must be lists of one length >= 1")
            votes = r.get("votes")  # absent from files of older versions: `with_votes` below
            if problem := _answers_problem(answers) or (votes is not None and _votes_problem(votes, answers, rewards)):
                raise ValueError(problem)
            texts, greedy_text = r.get("texts"), r.get("greedy_text")  # with eval.keep_texts > 0 (not in older files)
            if texts is not None and not (isinstance(texts, list) and len(texts) <= len(answers)
                                          and all(isinstance(t, str) for t in texts)):
                raise ValueError("texts must be a list of strings, at most one per answer")
            if greedy_text is not None and not isinstance(greedy_text, str):
                raise ValueError("greedy_text must be a string or null")
            results.append(ProblemResult(
                Problem(str(r["id"]), "", str(r["gold"]), r["level"], r["subject"]), answers,
                np.asarray(rewards, dtype=np.float32), np.asarray(tokens, dtype=np.float64), r["greedy_answer"],
                None if r["greedy_reward"] is None else float(r["greedy_reward"]), votes, texts, greedy_text))
        except (KeyError, TypeError, ValueError) as e:
            where = f"record {i}" + (f" (id {r['id']})" if isinstance(r, dict) and "id" in r else "")
            raise ValueError(f"{path}: {where}: {type(e).__name__}: {e}") from e
    return with_votes(results)


def _by_k(table: Mapping[Any, float]) -> dict[int, float]:
    """Metric-by-k table with int keys (JSON turns them into strings)."""
    return {int(k): v for k, v in table.items()}


def format_table(summaries: Mapping[str, Mapping[str, Any]]) -> str:
    """One row per named summary: pass@k and maj@k (%), greedy accuracy, mean length, distinct answers;
    under it, each summary's standard errors at the smallest and largest k (points)."""
    ks = sorted({k for s in summaries.values() for k in _by_k(s["pass@k"])})
    header = ["model"] + [f"pass@{k}" for k in ks] + [f"maj@{k}" for k in ks] + ["greedy", "tokens", "distinct"]
    rows = []
    for name, s in summaries.items():
        passes, majs = _by_k(s["pass@k"]), _by_k(s["maj@k"])
        rows.append([name] + [f"{100 * passes[k]:.1f}" if k in passes else "-" for k in ks]
                    + [f"{100 * majs[k]:.1f}" if k in majs else "-" for k in ks]
                    + [f"{100 * s['greedy_accuracy']:.1f}" if "greedy_accuracy" in s else "-",
                       f"{s['mean_response_tokens']:.0f}", f"{s['mean_distinct_answers']:.2f}"])
    notes = [_error_note(name, s) for name, s in summaries.items()]
    return "\n".join([text_table(header, rows), *[note for note in notes if note]])


def _error_note(name: str, summary: Mapping[str, Any]) -> str:
    """The line "± one standard error over N problems, <name>: pass@1 2.1, ..." (points), or "" without errors."""
    errors = summary.get("stderr", {})
    passes, majs = _by_k(errors.get("pass@k", {})), _by_k(errors.get("maj@k", {}))
    if not passes:
        return ""
    lo, hi = min(passes), max(passes)
    parts = [(f"pass@{k}", passes[k]) for k in sorted({lo, hi})] + [(f"maj@{hi}", majs.get(hi)),
                                                                   ("greedy", errors.get("greedy_accuracy"))]
    shown = ", ".join(f"{label} {100 * value:.1f}" for label, value in parts if value is not None)
    return f"± one standard error over {summary['num_problems']} problems, {name}: {shown}" if shown else ""


def text_table(header: list[str], rows: list[list[str]]) -> str:
    """Right-aligned plain-text columns with a dashed rule under the header."""
    widths = [max(len(row[i]) for row in [header] + rows) for i in range(len(header))]
    lines = ["  ".join(c.rjust(w) for c, w in zip(row, widths)) for row in [header] + rows]
    return "\n".join([lines[0], "  ".join("-" * w for w in widths), *lines[1:]])


def plot_pass_at_k(summaries: Mapping[str, Mapping[str, Any]], path: str, title: str = "") -> None:
    """pass@k (solid, shaded ± one standard error over problems) and maj@k (dashed) against k on a log2
    axis, one color per summary, as PNG.

    Draws on a bare Agg figure, so the caller's pyplot backend (e.g. a notebook's) is untouched.
    """
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5, 3.5))
    ax = fig.subplots()
    for i, (name, s) in enumerate(summaries.items()):
        passes, majs = _by_k(s["pass@k"]), _by_k(s["maj@k"])
        ks = sorted(passes)
        ax.plot(ks, [100 * passes[k] for k in ks], "o-", color=f"C{i}", label=f"{name} pass@k")
        errors = _by_k(s.get("stderr", {}).get("pass@k", {}))
        if ks and all(errors.get(k) is not None for k in ks):
            ax.fill_between(ks, [100 * (passes[k] - errors[k]) for k in ks], [100 * (passes[k] + errors[k]) for k in ks],
                            color=f"C{i}", alpha=0.15, linewidth=0)
        ax.plot(ks, [100 * majs[k] for k in ks], "s--", color=f"C{i}", alpha=0.6, label=f"{name} maj@k")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("k")
    ax.set_ylabel("accuracy (%)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    save_png(fig, path)
