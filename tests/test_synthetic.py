"""Synthetic arithmetic task: problems, solution kinds, the mixture's pass@1, and the tokenizer."""

import collections
import re

import numpy as np
import pytest

from rl_sharpen.tasks import synthetic as S
from rl_sharpen.tasks.answers import extract_answer
from rl_sharpen.tasks.verify import verify_batch

CFG = S.ArithmeticConfig()


def evaluate_text(problem_text: str) -> int:
    """Independent reader of the problem text: replays the sentences."""
    sentences = problem_text.split(". ")
    value = int(re.search(r"has (\d+)", sentences[0]).group(1))
    for sentence in sentences[1:-1]:
        n = int(re.search(r"(\d+)", sentence).group(1))
        if re.search(r"buys|finds|gets", sentence):
            value += n
        elif re.search(r"drops|loses|sells", sentence):
            value -= n
        else:
            assert "times as many" in sentence
            value *= n
    return value


@pytest.mark.parametrize("cfg", [CFG, S.ArithmeticConfig(min_steps=2, max_steps=5, max_value=50, operations="+-*")])
def test_problems_are_seeded_bounded_and_their_answers_match_the_text(cfg):
    problems = S.make_problems(300, seed=3, cfg=cfg)
    assert problems == S.make_problems(300, seed=3, cfg=cfg)
    assert problems != S.make_problems(300, seed=4, cfg=cfg)
    for p in problems:
        assert cfg.min_steps <= len(p.steps) <= cfg.max_steps
        assert all(0 <= v <= cfg.max_value for v in [p.start, *p.totals])
        assert evaluate_text(p.text) == p.answer
    assert {len(p.steps) for p in problems} == set(range(cfg.min_steps, cfg.max_steps + 1))
    assert {op for p in problems for op, _ in p.steps} == set(cfg.operations)


def test_solution_kinds():
    rng = np.random.default_rng(0)
    for p in S.make_problems(200, seed=1):
        correct = S.solution(p, "correct", rng)
        lines = correct.split("\n")
        assert len(lines) == len(p.steps) + 1 and lines[-1] == f"\\boxed{{{p.answer}}}"
        for line in lines[:-1]:  # every step is true arithmetic
            a, op, b, c = re.fullmatch(r"(\d+)([-+*])(\d+)=(\d+)", line).groups()
            assert eval(f"{a}{op}{b}") == int(c)
        wrong = S.solution(p, "wrong_step", rng)
        steps = [re.fullmatch(r"(-?\d+)([-+*])(\d+)=(-?\d+)", line).groups() for line in wrong.split("\n")[:-1]]
        assert sum(eval(f"{a}{op}{b}") != int(c) for a, op, b, c in steps) == 1  # exactly one wrong step
        assert extract_answer(wrong) != str(p.answer) and extract_answer(wrong) == steps[-1][3]
        guess = S.solution(p, "guess", rng)
        assert re.fullmatch(r"\\boxed\{(\d+)\}", guess) and 0 <= int(extract_answer(guess)) <= CFG.max_value
    with pytest.raises(ValueError, match="kind must be one of"):
        S.solution(p, "lucky", rng)


def test_mixture_pass_at_1_matches_closed_form():
    mix = S.SolutionMix(correct=0.25, guess=0.5, wrong_step=0.25, correct_decay=0.5)
    cfg = S.ArithmeticConfig(min_steps=1, max_steps=3, max_value=9)
    # Closed form by hand: p_correct(s) = .25 * .5^(s-1) / (.25 * .5^(s-1) + .75), guess hits w.p. 1/10.
    expected = np.mean([(c := 0.25 * 0.5 ** (s - 1)) / (c + 0.75) + 0.5 / (c + 0.75) / 10 for s in (1, 2, 3)])
    assert S.expected_pass_at_1(cfg, mix) == pytest.approx(expected, rel=1e-12)
    examples = S.make_examples(20000, seed=0, cfg=cfg, mix=mix)
    empirical = np.mean([S.score(e.completion, e.problem) for e in examples])
    assert empirical == pytest.approx(expected, abs=0.012)  # ~4 standard errors
    kinds = np.array([e.kind for e in examples])
    steps = np.array([len(e.problem.steps) for e in examples])
    for s in (1, 3):
        assert np.mean(kinds[steps == s] == "correct") == pytest.approx(mix.probabilities(s)[0], abs=0.02)


def test_correct_chain_is_the_mode_of_the_default_mixture():
    rng = np.random.default_rng(0)
    problem = next(p for p in S.make_problems(50, seed=0) if len(p.steps) == CFG.max_steps)
    mix = S.SolutionMix()
    kinds = rng.choice(S.KINDS, size=4000, p=mix.probabilities(len(problem.steps)))
    counts = collections.Counter(S.solution(problem, str(kind), rng) for kind in kinds)
    (mode, mode_count), (_, runner_up) = counts.most_common(2)
    assert mode == S.solution(problem, "correct", rng)
    assert mode_count / 4000 == pytest.approx(mix.probabilities(len(problem.steps))[0], abs=0.03)
    assert runner_up < mode_count / 2


def test_default_mixture_gives_a_base_pass_rate_between_20_and_40_percent():
    assert 0.2 <= S.expected_pass_at_1() <= 0.4


def test_score_agrees_with_the_general_verifier():
    examples = S.make_examples(300, seed=5)
    exact = np.array([S.score(e.completion, e.problem) for e in examples])
    general, stats = verify_batch([e.completion for e in examples], [str(e.problem.answer) for e in examples])
    np.testing.assert_array_equal(exact, general)
    assert stats.num_symbolic == 0  # integers never reach sympy
    assert set(exact) == {0.0, 1.0}


def test_config_validation():
    with pytest.raises(ValueError, match="min_steps"):
        S.ArithmeticConfig(min_steps=3, max_steps=2)
    with pytest.raises(ValueError, match="operations"):
        S.ArithmeticConfig(operations="+*")
    with pytest.raises(ValueError, match="max_operand"):
        S.ArithmeticConfig(max_operand=30, max_value=20)
    with pytest.raises(ValueError, match="correct_decay"):
        S.SolutionMix(correct_decay=0.0)
    with pytest.raises(ValueError, match="positive sum"):
        S.SolutionMix(correct=0, guess=0, wrong_step=0)


def test_problem_record():
    p = S.make_problems(1, seed=0)[0]
    record = p.to_problem(7)
    assert (record.id, record.answer, record.level) == ("synthetic/7", str(p.answer), len(p.steps))
    assert (record.subject, record.source) == ("arithmetic", "synthetic")


def test_char_tokenizer_round_trip_and_specials():
    tok = S.CharTokenizer()
    assert tok.vocab_size == len(S.ALPHABET) + 3 < 64
    for e in S.make_examples(200, seed=2, cfg=S.ArithmeticConfig(operations="+-*")):
        prompt = tok.encode_prompt(e.problem.text)
        completion = tok.encode(e.completion, add_eos=True)
        assert prompt[0] == tok.bos_id and completion[-1] == tok.eos_id
        assert all(3 <= i < tok.vocab_size for i in prompt[1:] + completion[:-1])
        assert tok.decode(prompt + completion) == tok.prompt_text(e.problem.text) + e.completion
    assert tok.decode([tok.bos_id, 3, tok.pad_id, 4, tok.eos_id, 5]) == "ab"  # stops at eos
    with pytest.raises(ValueError, match="'A' at position 0"):
        tok.encode("A")
