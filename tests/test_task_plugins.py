"""A task added with `task_setup.register_task` is graded by its own grader in rollouts and in
validation, and the math verifier is never called for it; bad names and bad graders are refused."""

import dataclasses
import json

import numpy as np
import pytest

from rl_sharpen import evaluation, experiment, task_setup
from rl_sharpen.config import ConfigError
from rl_sharpen.task_setup import DataConfig, SyntheticTask
from rl_sharpen.tasks import answers as answer_lib
from rl_sharpen.tasks import verify
from tests.experiment_configs import get_config


class ParityGrader(evaluation.Grader):
    """The answer is the parity of the completion's length; correct if it is the gold's. The math
    verifier would find no answer in these completions, so its verdicts cannot pass for these."""

    def __init__(self):
        self.calls = []  # (completions, rewards) per call

    def grade(self, completions, golds, *, timeout=5.0, workers=None):
        answers = ["even" if len(c) % 2 == 0 else "odd" for c in completions]
        rewards = np.array([a == g for a, g in zip(answers, golds)], np.float32)
        self.calls.append((list(completions), rewards))
        return rewards, answers, {"graded": len(completions)}


class ParityTask(SyntheticTask):
    """The arithmetic prompts, with "even" as every problem's gold."""

    def problems(self, split):
        return [dataclasses.replace(p, answer="even") for p in super().problems(split)]


@pytest.fixture
def registry(monkeypatch):
    """task_setup.TASKS as it is now, restored after the test."""
    monkeypatch.setattr(task_setup, "TASKS", dict(task_setup.TASKS))
    return task_setup.TASKS


def test_a_registered_task_grades_its_rollouts_and_its_validation_with_its_own_grader(tmp_path, monkeypatch,
                                                                                       registry):
    def math_verifier(*args, **kwargs):
        raise AssertionError("the math verifier ran on the parity task")

    for module, name in [(verify, "grade_batch"), (evaluation, "grade_batch"), (evaluation, "vote_keys"),
                         (evaluation, "canonical_answer"), (answer_lib, "canonical_answer")]:
        monkeypatch.setattr(module, name, math_verifier)
    grader = ParityGrader()

    def build(data, model_source, seed, verify_timeout):
        task = ParityTask(data, seed, verify_timeout)
        task.grader = grader
        return task

    task_setup.register_task("parity", build)
    c = get_config("qwen3_4b_math", "task_reward,tiny")
    c.data.task = "parity"
    c.train.steps, c.train.eval_every, c.train.checkpoint_every = 2, 0, 2
    c.data.validation_limit, c.eval.batch_size, c.eval.keep_texts = 3, 3, c.eval.num_samples
    result = experiment.run(c, str(tmp_path))

    G, prompts = c.sampling.num_samples, c.rl.prompts_per_step
    rollouts = [rewards for texts, rewards in grader.calls if len(texts) == prompts * G]
    sampled = [(texts, rewards) for texts, rewards in grader.calls if len(texts) == 3 * c.eval.num_samples]
    assert len(rollouts) == 2 and len(sampled) == 2  # two steps; validation at the start and the end
    with open(tmp_path / "train.jsonl") as f:
        rows = [json.loads(line) for line in f]
    np.testing.assert_allclose([row["accuracy"] for row in rows], [r.mean() for r in rollouts], rtol=1e-6)
    assert [row["verify_graded"] for row in rows] == [prompts * G] * 2  # the grader's counters, logged

    with open(tmp_path / "eval" / "eval_step2.json") as f:
        saved = json.load(f)
    texts = [t for problem in saved["problems"] for t in problem["texts"]]
    assert texts == sampled[-1][0]
    for problem in saved["problems"]:
        parity = ["even" if len(t) % 2 == 0 else "odd" for t in problem["texts"]]
        assert problem["answers"] == parity and problem["rewards"] == [float(a == "even") for a in parity]
        assert problem["votes"] == [a if a == "even" else "odd" for a in parity]
        assert problem["greedy_answer"] == ("even" if len(problem["greedy_text"]) % 2 == 0 else "odd")
    assert saved["verify"] == {"graded": 3 * c.eval.num_samples + 3}  # the step's sampled and greedy completions
    assert result["pass@1"] == pytest.approx(np.mean([p["rewards"] for p in saved["problems"]]))


def test_a_task_name_is_checked_against_the_registry(registry):
    model = experiment.parse(get_config("qwen3_4b_math", "tiny")).model
    with pytest.raises(ConfigError, match=r"data.task='nope'.*\['math', 'synthetic'\]"):
        task_setup.build_task(DataConfig(task="nope"), model)
    with pytest.raises(ConfigError, match="data.task='math' reads real problem sets"):
        task_setup.build_task(DataConfig(task="math"), model)
    with pytest.raises(ConfigError, match="data.task='synthetic' writes its own problems, not data.train='gsm8k'"):
        task_setup.build_task(DataConfig(task="synthetic", train="gsm8k", validation="gsm8k"), model)
    assert isinstance(task_setup.build_task(DataConfig(), model), SyntheticTask)
    assert isinstance(task_setup.build_task(DataConfig(task="synthetic"), model), SyntheticTask)
    with pytest.raises(ValueError, match="'math' is a shipped task"):
        task_setup.register_task("math", lambda *args: None)
    with pytest.raises(ValueError, match="non-empty string"):
        task_setup.register_task("", lambda *args: None)
    class GraderClass(SyntheticTask):
        grader = ParityGrader  # the class, not an object of it

    task_setup.register_task("parity", lambda *args: GraderClass(DataConfig()))
    with pytest.raises(ConfigError, match="data.task='parity': the task's grader is <class .*allowed: an instance"):
        task_setup.build_task(DataConfig(task="parity"), model)
    first, second = (lambda *args: SyntheticTask(DataConfig())), (lambda *args: ParityTask(DataConfig()))
    task_setup.register_task("parity", first)
    task_setup.register_task("parity", second)  # a notebook cell run again
    assert isinstance(task_setup.build_task(DataConfig(task="parity"), model), ParityTask)


def test_the_default_grader_votes_with_exact_keys_and_keeps_a_wrong_gold_key_apart():
    class Lowercase(evaluation.Grader):
        def answer_key(self, answer):
            return answer.lower()

    keys, _ = Lowercase().vote_keys([["A", "a", "B", None, "b", "A"]], [[True, True, False, False, False, False]],
                                    ["a"])
    assert keys == [["a", "a", "b", None, "b", "a (scored 0)"]]


@pytest.mark.parametrize("rewards, answers", [([1.0, 0.0], ["x"]), ([1.0], ["x", "y"]), ([0.5, 1.0], ["x", "y"]),
                                              ([[1.0, 0.0]], ["x", "y"])])
def test_a_grader_giving_the_wrong_shape_or_non_binary_rewards_is_named(rewards, answers):
    class Broken(evaluation.Grader):
        def grade(self, completions, golds, *, timeout=5.0, workers=None):
            return rewards, answers, {}

    with pytest.raises(ValueError, match=r"Broken.grade must return 2 rewards in \{0, 1\} and 2 answers"):
        evaluation.run_grader(Broken(), ["a", "b"], ["g", "g"], 1.0, None)


class NumericKeys(ParityGrader):
    """Grades exactly ("18" only) but votes by value, so a wrong "18.0" shares the correct "18"'s key."""

    def grade(self, completions, golds, *, timeout=5.0, workers=None):
        answers = [c.split()[-1] for c in completions]
        return np.array([a == g for a, g in zip(answers, golds)], np.float32), answers, {}

    def vote_keys(self, answers, correct, golds, *, timeout=5.0, workers=None):
        return [[str(float(a)) for a in row] for row in answers], {}


class FewKeys(ParityGrader):
    def vote_keys(self, answers, correct, golds, *, timeout=5.0, workers=None):
        return [row[:-1] for row in answers], {}


class NumberAnswers(ParityGrader):
    def grade(self, completions, golds, *, timeout=5.0, workers=None):
        return np.zeros(len(completions), np.float32), [len(c) for c in completions], {}


class TextCounters(ParityGrader):
    def grade(self, completions, golds, *, timeout=5.0, workers=None):
        return np.zeros(len(completions), np.float32), ["x"] * len(completions), {"note": "fine"}


@pytest.mark.parametrize("grader, message", [
    (FewKeys(), r"FewKeys.vote_keys, problem 0: votes must be a list of strings \(null where there is no answer\), "
                r"one per answer; got \['odd'\]"),
    (NumericKeys(), r"NumericKeys.vote_keys, problem 0: votes give a correct and a wrong sample one key"),
    (NumberAnswers(), r"NumberAnswers.grade: answers must be strings or null, got \[5, 7\]"),
    (TextCounters(), r"TextCounters.grade: its counters must map names to numbers, got \{'note': 'fine'\}"),
])
def test_a_grader_s_answers_and_vote_keys_are_checked_as_saved_files_are(grader, message):
    """maj@k needs string keys, none shared by a correct and a wrong sample: a grader breaking that is
    named at its first validation, not when `rl_sharpen.compare` reads the files."""
    def generate(prompts, n, greedy):
        return evaluation.Generations([["so 18", "so 18.0"][:n]] * len(prompts), np.ones((len(prompts), n), int))

    problem = dataclasses.replace(SyntheticTask(DataConfig(synthetic_validation_problems=1)).problems("validation")[0],
                                  id="0", answer="18")
    with pytest.raises(ValueError, match=message):
        evaluation.evaluate(generate, [problem], prompt_fn=str, n_samples=2, greedy=False, grader=grader)
