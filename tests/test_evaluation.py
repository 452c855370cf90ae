"""pass@k and maj@k against brute force over subsets, the evaluation loop with a fake sampler,
and the JSON / table / plot outputs."""

import itertools
import json
import math
from fractions import Fraction

import numpy as np
import pytest

from rl_sharpen import evaluation as E
from rl_sharpen.tasks import Problem


def brute_pass_at_k(correct, k):
    subsets = list(itertools.combinations(correct, k))
    return Fraction(sum(any(s) for s in subsets), len(subsets))


def brute_maj_at_k(keys, correct, k):
    """Average over subsets; within a subset, average over every tied top answer (uniform tie-break)."""
    key_correct = {}
    for key, ok in zip(keys, correct):
        key_correct.setdefault(key, ok)
    total = Fraction(0)
    subsets = list(itertools.combinations(range(len(keys)), k))
    for subset in subsets:
        votes = {}
        for i in subset:
            if keys[i] is not None:
                votes[keys[i]] = votes.get(keys[i], 0) + 1
        if votes:
            top = [key for key, v in votes.items() if v == max(votes.values())]
            total += Fraction(sum(key_correct[key] for key in top), len(top))
    return total / len(subsets)


@pytest.mark.parametrize("n", [1, 2, 5, 8])
def test_pass_at_k_matches_brute_force(n):
    for c in range(n + 1):
        correct = [True] * c + [False] * (n - c)
        for k in range(1, n + 1):
            assert E.pass_at_k(n, c, k) == pytest.approx(float(brute_pass_at_k(correct, k)), abs=1e-12)


def test_pass_at_k_closed_forms_and_stability():
    assert E.pass_at_k(10, 3, 1) == pytest.approx(0.3)
    assert E.pass_at_k(256, 1, 128) == pytest.approx(0.5)
    assert E.pass_at_k(1024, 2, 512) == pytest.approx(1 - math.comb(1022, 512) / math.comb(1024, 512))
    assert E.pass_at_k(1024, 0, 1000) == 0.0 and E.pass_at_k(1024, 30, 1000) == 1.0
    with pytest.raises(ValueError, match="1 <= k <= n"):
        E.pass_at_k(4, 1, 5)


CASES = [
    (["1", "1", "2", None, "3", "2"], [1, 1, 0, 0, 0, 0]),  # ties between correct and wrong answers
    (["a", "b", "c", "d", "e"], [0, 1, 0, 0, 0]),  # all distinct: maj@k is a tie of k answers
    ([None, None, "x", "y"], [0, 0, 1, 0]),
    (["7"] * 3 + ["8"] * 4, [1] * 3 + [0] * 4),
]


@pytest.mark.parametrize("keys, correct", CASES)
def test_maj_at_k_exact_enumeration_matches_brute_force(keys, correct):
    for k in range(1, len(keys) + 1):
        assert E.maj_at_k(keys, correct, k) == pytest.approx(float(brute_maj_at_k(keys, correct, k)), abs=1e-12)


def test_maj_at_k_monte_carlo_draws_subsets_without_repeats():
    """11 votes for the right answer and 9 for a wrong one: every 19 of the 20 samples hold at least 10
    right votes, so maj@19 is exactly 1 in Monte Carlo too (subsets with repeated samples would lose
    about a third of the draws)."""
    keys, correct = ["a"] * 11 + ["b"] * 9, [True] * 11 + [False] * 9
    assert E.maj_at_k(keys, correct, 19, maj_draws=10) == 1.0  # C(20, 19) = 20 > 10 draws: Monte Carlo


def test_maj_at_k_monte_carlo_is_close_and_seeded():
    rng = np.random.default_rng(0)
    keys = [str(v) for v in rng.integers(0, 4, size=14)]
    correct = [key == "2" for key in keys]
    exact = float(brute_maj_at_k(keys, correct, 5))  # C(14, 5) = 2002 subsets
    mc = E.maj_at_k(keys, correct, 5, maj_draws=1000, seed=1)  # 1000 < 2002: Monte Carlo
    assert mc == pytest.approx(exact, abs=0.05)
    assert mc == E.maj_at_k(keys, correct, 5, maj_draws=1000, seed=1)
    assert mc != E.maj_at_k(keys, correct, 5, maj_draws=1000, seed=2)
    assert E.maj_at_k(keys, correct, 5, maj_draws=5000) == pytest.approx(exact, abs=1e-12)  # enumerated


@pytest.mark.parametrize("gold, answers", [
    (r"\frac14", ["25", r"25\%", r"25\%"]),  # 25% is right, 25 is not: they must not share a vote
    (r"x = \frac{3}{2}", [r"y = \frac32", r"x = 1.5", r"\frac{3}{2}"]),  # another line, the same value
    (r"\text{east}", [r"\text{seat}", r"\text{East}", "east"]),
    (r"\infty", ["infinity", "Infinity", r"\text{Infinity}"]),
    ("ba", [r"\text{ab}", "ab", "ba"]),  # a gold product of letters: the macro on one side changes nothing
])
def test_answers_sharing_a_vote_key_share_a_verdict(gold, answers):
    """maj@k scores a key by its first sample, so keys must never join answers graded differently;
    then maj@k does not depend on the order of the samples."""
    from rl_sharpen.tasks.answers import canonical_answer
    from rl_sharpen.tasks.verify import verify

    verdict_of = {}
    for answer in answers:
        verdict_of.setdefault(canonical_answer(answer), set()).add(verify(rf"\boxed{{{answer}}}", gold))
    assert all(len(v) == 1 for v in verdict_of.values()), verdict_of
    scores = {order: [E.maj_at_k([canonical_answer(answers[i]) for i in order],
                                 [verify(rf"\boxed{{{answers[i]}}}", gold) > 0 for i in order], k) for k in (1, 2, 3)]
              for order in itertools.permutations(range(len(answers)))}
    assert len(set(map(tuple, scores.values()))) == 1, scores


@pytest.fixture(scope="module")
def pool():
    from rl_sharpen.tasks.verify import VerifierPool

    with VerifierPool(workers=1) as p:
        yield p


def graded(gold, answers):
    from rl_sharpen.tasks.verify import verify

    return [verify(rf"\boxed{{{a}}}", gold) > 0 if a is not None else False for a in answers]


@pytest.mark.parametrize("gold, answers, before, after", [
    # two correct notations against one wrong answer given twice: the canonical keys split the
    # correct votes (2 wrong beat 1 + 1), the verifier's keys tie them
    (r"\frac{\pi}{2}", [r"\pi/2", r"\frac{\pi}{2}", "3", "3"], 0, Fraction(1, 2)),
    # two notations of one wrong polynomial outvote the correct one, where canonical keys tied all three
    ("x^2+1", ["x^2+1", "(x+1)^2", "x^2+2x+1"], Fraction(1, 3), 0),
    ("5", ["x = 5", "5", "3", "3", "y=4"], 0, Fraction(1, 2)),  # an "x =" changes nothing
    (r"\frac12", ["0.5", r"\frac{1}{2}", "2", None], 1, 1),  # one canonical form already
])
def test_equal_answers_vote_together_whatever_their_notation(pool, gold, answers, before, after):
    correct = graded(gold, answers)
    canonical = [None if a is None else E.canonical_answer(a) for a in answers]
    keys, stats = E.vote_keys([answers], [correct], [gold], pool=pool)
    n = len(answers)
    assert E.maj_at_k(canonical, correct, n) == pytest.approx(float(before))
    assert E.maj_at_k(keys[0], correct, n) == pytest.approx(float(after))
    assert E.maj_at_k(keys[0], correct, n) == pytest.approx(float(brute_maj_at_k(keys[0], correct, n)))
    assert stats["timeouts"] == stats["errors"] == 0


def test_vote_keys_never_join_a_correct_and_a_wrong_answer_and_do_not_depend_on_order(pool):
    gold = r"\frac{\sqrt{2}}{2}"
    answers = [r"\frac{1}{\sqrt{2}}", r"\sqrt{2}/2", r"\sqrt{2}", r"2^{1/2}", r"\frac{\sqrt2}{2}", "0.7071", None]
    correct = graded(gold, answers)
    assert correct == [True, True, False, False, True, False, False]
    orders = [np.random.default_rng(seed).permutation(len(answers)) for seed in range(40)]
    all_keys, _ = E.vote_keys([[answers[i] for i in order] for order in orders],
                              [[correct[i] for i in order] for order in orders], [gold] * len(orders), pool=pool)
    scores = set()
    for order, keys in zip(orders, all_keys):
        verdicts = {}
        for key, i in zip(keys, order):
            verdicts.setdefault(key, set()).add(correct[i])
        assert all(len(v) == 1 for v in verdicts.values()), verdicts
        assert len({key for key in keys if key is not None}) == 3  # correct; sqrt 2 twice; 0.7071
        scores.add(tuple(round(E.maj_at_k(keys, [correct[i] for i in order], k), 12) for k in (1, 3, 5)))
    assert len(scores) == 1


def test_vote_keys_join_groups_only_if_every_pair_is_equal(pool):
    """The verifier is not transitive: "25%" equals 0.25 and 25 (a percent against a plain number
    matches p and p/100), so a chain through it must not join 0.25 and 25."""
    answers = ["7", "7", "7", "0.25", "0.25", "25", "25", r"25\%"]
    keys, _ = E.vote_keys([answers], [[True] * 3 + [False] * 5], ["7"], pool=pool)
    assert keys[0][3] == keys[0][4] == keys[0][7] != keys[0][5] == keys[0][6]


def test_vote_keys_do_not_depend_on_the_order_beyond_the_comparison_limit(pool):
    forms, numbers = ["(x+1)^2", "x^2+2x+1", "1+2x+x^2"], [str(i) for i in range(100, 115)]  # 18 wrong keys
    orders = [["0", "0"] + forms + numbers, numbers + forms + ["0", "0"], forms[::-1] + ["0"] + numbers + ["0"]]
    scores = set()
    for answers in orders:
        correct = [a == "0" for a in answers]
        keys, _ = E.vote_keys([answers], [correct], ["0"], pool=pool)
        scores.add(E.maj_at_k(keys[0], correct, len(answers)))
        assert len({key for key in keys[0]}) == 1 + 18 - 1  # the limit leaves one form out of the comparisons
    assert len(scores) == 1


def test_a_wrong_answer_with_the_gold_key_never_votes_with_the_correct_ones():
    """Files saved by an older grader: "81 teachers" scored 0 there, and its canonical form is now 81."""
    result = E.ProblemResult(Problem("p", "", "81"), ["81 teachers", "81", "81 teachers"], np.array([0.0, 1.0, 0.0]),
                             np.ones(3))
    assert result.keys[0] == result.keys[2] != result.keys[1] == "81"
    assert E.maj_at_k(result.keys, result.rewards > 0, 1) == pytest.approx(1 / 3)  # = pass@1
    assert E.maj_at_k(result.keys, result.rewards > 0, 3) == 0.0


def test_files_saved_without_votes_get_the_verifier_s_vote_keys_on_loading(tmp_path):
    from rl_sharpen import compare

    answers = ["x^2+1", "(x+1)^2", "x^2+2x+1", "x^2+1"]  # two correct, two notations of one wrong answer
    result = E.ProblemResult(Problem("p", "", "x^2+1", 1, "algebra"), answers, np.array([1.0, 0.0, 0.0, 1.0]),
                             np.ones(4))
    assert E.maj_at_k(result.keys, result.rewards > 0, 4) == 1.0  # no votes: wrong answers not compared
    E.save_json(E.EvalReport(E.summarize([result]), [result], []), str(tmp_path / "old.json"))
    saved = json.loads((tmp_path / "old.json").read_text())
    del saved["problems"][0]["votes"]  # as saved before vote keys were
    (tmp_path / "old.json").write_text(json.dumps(saved))
    loaded = E.load_results(tmp_path / "old.json")[0]
    assert loaded.votes[1] == loaded.votes[2] != loaded.votes[0]
    assert E.maj_at_k(loaded.keys, loaded.rewards > 0, 4) == pytest.approx(0.5)  # 2 against 2: a tie
    new = E.with_votes([result])[0]
    E.save_json(E.EvalReport(E.summarize([new]), [new], []), str(tmp_path / "new.json"))
    change = compare.compare_files(str(tmp_path / "new.json"), str(tmp_path / "old.json"), [4])["change"]
    assert change["new"]["maj@k"][4] == change["old"]["maj@k"][4] == pytest.approx(0.5)


def test_vote_keys_counters_timeouts_and_the_comparison_limit(pool, monkeypatch):
    slow = ["9^{9^{9^{9}}}", "2^{2^{2^{2^{2^{2}}}}}"]  # sympy cannot compare them: timed out, kept apart
    keys, stats = E.vote_keys([slow], [[False] * 2], ["2"], pool=pool, timeout=1.0)
    assert len(set(keys[0])) == 2 and (stats["pairs_symbolic"], stats["timeouts"], stats["keys_joined"]) == (1, 1, 0)
    answers = ["(x+1)^2"] * 3 + ["x^2+2x+1"] * 2 + ["1+2x+x^2"]
    keys, stats = E.vote_keys([answers], [[False] * 6], ["0"], pool=pool)
    assert len(set(keys[0])) == 1 and stats["keys_joined"] == 2
    monkeypatch.setattr(E, "MAX_COMPARED_WRONG_ANSWERS", 2)  # the least frequent wrong answer is not compared
    keys, stats = E.vote_keys([answers], [[False] * 6], ["0"], pool=pool)
    assert keys[0][:5] == [keys[0][0]] * 5 and keys[0][5] != keys[0][0] and stats["pairs_symbolic"] == 1
    keys, stats = E.vote_keys([answers], [[False] * 6], ["0"], compare_wrong=False)
    assert len(set(keys[0])) == 3 and stats["pairs_symbolic"] == 0


def test_answers_too_long_to_grade_are_not_compared_for_votes(pool):
    """Grading scores an answer over max(1000, 2 len(gold)) characters 0 without parsing it; grouping
    the votes does not send such answers to sympy either, where each pair could take the whole timeout."""
    long_forms = [f"x^{{{n}}}+" + "+".join(f"{i}x" for i in range(300)) for n in range(4)]
    assert all(len(a) > 1000 for a in long_forms)
    answers = long_forms + long_forms[:1] + ["3", "3", "12"]
    correct = [False] * 7 + [True]
    keys, stats = E.vote_keys([answers], [correct], ["12"], pool=pool)
    assert stats["pairs_symbolic"] == 0 and stats["keys_joined"] == 0
    assert keys[0][0] == keys[0][4] and len(set(keys[0])) == 6  # each long form votes with its copies only
    assert E.maj_at_k(keys[0], correct, 8) == 0.0  # "3" twice, and the first long form twice: a tie of wrong ones


def test_default_k_list():
    assert E.default_k_list(1) == [1]
    assert E.default_k_list(8) == [1, 2, 4, 8]
    assert E.default_k_list(12) == [1, 2, 4, 8, 12]


class FakeSampler:
    """Answers problem i (gold "i") correctly in sample g iff g < i; greedy is right for even i."""

    def __init__(self):
        self.calls = []

    def __call__(self, prompts, num_samples, greedy):
        self.calls.append((len(prompts), num_samples, greedy))
        texts, tokens = [], []
        for prompt in prompts:
            i = int(prompt.split()[-1])
            if greedy:
                row = [rf"so \boxed{{{i if i % 2 == 0 else i + 1}}}"]
            else:
                row = [rf"\boxed{{{i}}}" if g < i else (rf"\boxed{{{100 + g % 2}}}" if g % 3 else "no idea")
                       for g in range(num_samples)]
            texts.append(row)
            tokens.append([10 * (g + 1) for g in range(num_samples)])
        return E.Generations(texts, np.array(tokens))


def make_problems(num):
    return [Problem(f"p{i}", f"solve {i}", str(i), level=1 + i % 2, subject="odd" if i % 2 else "even")
            for i in range(num)]


def test_evaluate_with_fake_sampler(tmp_path):
    problems, n = make_problems(6), 4
    sampler = FakeSampler()
    report = E.evaluate(sampler, problems, prompt_fn=lambda p: p.problem, n_samples=n, batch_size=4,
                        verify_workers=1)
    assert sampler.calls == [(4, 4, False), (4, 1, True), (2, 4, False), (2, 1, True)]
    s = report.summary
    num_correct = [min(i, n) for i in range(6)]
    for k in (1, 2, 4):
        assert s["pass@k"][k] == pytest.approx(np.mean([E.pass_at_k(n, c, k) for c in num_correct]))
    assert s["pass@k"][1] == pytest.approx(np.mean(num_correct) / n)
    assert s["greedy_accuracy"] == pytest.approx(0.5)
    assert s["mean_response_tokens"] == pytest.approx(25.0)
    assert s["by_level"]["1"]["num_problems"] == 3 and s["by_subject"]["odd"]["pass@k"][4] == 1.0
    # Problem 1: one correct "1", wrong answers "101", "100" once each, one without an answer.
    r1 = report.results[1]
    assert r1.answers == ["1", "101", "100", None] and r1.rewards.tolist() == [1, 0, 0, 0]
    assert E.maj_at_k(r1.keys, r1.rewards > 0, 4) == pytest.approx(1 / 3)  # three-way tie

    path = tmp_path / "eval.json"
    E.save_json(report, str(path))
    saved = json.loads(path.read_text())
    assert saved["summary"]["pass@k"]["4"] == s["pass@k"][4]
    assert saved["problems"][1]["answers"] == ["1", "101", "100", None]
    assert saved["verify"]["num_items"] == 6 * n + 6


def test_table_and_plot(tmp_path):
    summary = E.summarize([E.ProblemResult(Problem("a", "q", "1"), ["1", "2"], np.array([1.0, 0.0]), np.array([3, 5]))])
    reloaded = json.loads(json.dumps(summary))  # string keys after JSON
    table = E.format_table({"base": summary, "rl": reloaded})
    lines = table.splitlines()
    assert lines[0].split() == ["model", "pass@1", "pass@2", "maj@1", "maj@2", "greedy", "tokens", "distinct"]
    assert lines[2].split() == ["base", "50.0", "100.0", "50.0", "50.0", "-", "4", "2.00"]
    assert lines[3].split()[1:] == lines[2].split()[1:]
    path = tmp_path / "pass_at_k.png"
    E.plot_pass_at_k({"base": summary, "rl": reloaded}, str(path), title="test")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_generations_from_sampler_rows():
    tokens = np.array([[1, 2, 0], [3, 0, 0], [4, 5, 6], [7, 8, 0]], dtype=np.int32)  # [B*G, N], B=2, G=2
    lengths = np.array([2, 1, 3, 2])
    out = E.generations_from_tokens(tokens, lengths, lambda ids: ",".join(map(str, ids)), num_samples=2)
    assert out.texts == [["1,2", "3"], ["4,5,6", "7,8"]]
    np.testing.assert_array_equal(out.num_tokens, [[2, 1], [3, 2]])
    with pytest.raises(ValueError, match="multiple of num_samples"):
        E.generations_from_tokens(tokens[:3], lengths[:3], str, num_samples=2)


def test_evaluate_rejects_wrongly_shaped_generations():
    def short(prompts, num_samples, greedy):
        return E.Generations([["x"]] * len(prompts), np.ones((len(prompts), 1)))

    with pytest.raises(ValueError, match="2 x 3 completions"):
        E.evaluate(short, make_problems(2), prompt_fn=lambda p: p.problem, n_samples=3)


def result(pid, rewards, answers=None, tokens=None, greedy=None):
    rewards = np.asarray(rewards, dtype=np.float32)
    answers = answers or ["1" if r else "2" for r in rewards]
    tokens = np.full(len(rewards), 5) if tokens is None else np.asarray(tokens)
    return E.ProblemResult(Problem(pid, "q", "1"), answers, rewards, tokens, greedy_reward=greedy)


def test_summary_standard_errors_are_those_of_the_per_problem_values():
    results = [result("a", [1, 0, 0, 0], greedy=1.0), result("b", [1, 1, 1, 0], greedy=0.0),
               result("c", [0, 0, 0, 0], tokens=[1, 2, 3, 4], greedy=0.0)]
    s = E.summarize(results, k_list=[1, 2])
    for k in (1, 2):
        per_problem = [E.pass_at_k(4, c, k) for c in (1, 3, 0)]
        assert s["stderr"]["pass@k"][k] == pytest.approx(np.std(per_problem, ddof=1) / np.sqrt(3))
    assert s["stderr"]["greedy_accuracy"] == pytest.approx(np.std([1, 0, 0], ddof=1) / np.sqrt(3))
    assert s["stderr"]["mean_response_tokens"] == pytest.approx(np.std([5, 5, 2.5], ddof=1) / np.sqrt(3))
    assert E.summarize(results[:1])["stderr"]["pass@k"][1] is None  # one problem: no spread to measure
    assert "± one standard error over 3 problems, run: pass@1 " in E.format_table({"run": s})


def test_standard_error_covers_the_population_pass_at_k():
    """Problems with success rates p ~ Beta(1, 2) have population pass@k = E[1 - (1 - p)^k] = k / (k + 2).
    Means of n = 8-sample estimates over N = 40 problems, ± 1.96 standard errors, must cover it about
    95% of the time (a little less with N = 40 and a normal quantile); an error that ignored each problem's own sampling noise would cover less."""
    rng = np.random.default_rng(0)
    for k in (1, 4):
        covered, narrow = 0, 0
        for _ in range(1000):
            p = rng.beta(1.0, 2.0, size=40)
            estimates = [E.pass_at_k(8, c, k) for c in rng.binomial(8, p)]
            miss = abs(np.mean(estimates) - k / (k + 2))
            covered += miss <= 1.96 * E.standard_error(estimates)
            narrow += miss <= 1.96 * np.std(1 - (1 - p) ** k, ddof=1) / np.sqrt(40)
        assert 0.91 <= covered / 1000 <= 0.97, (k, covered)  # 0.925-0.952 over seeds 0-3
        assert narrow < covered - 20, (k, narrow, covered)


def test_paired_difference_matches_problems_by_id_and_has_the_paired_error():
    old = [result("a", [1, 0, 0, 0]), result("b", [0, 0, 0, 0]), result("c", [1, 1, 0, 0]), result("x", [1, 1, 1, 1])]
    new = [result("c", [1, 1, 1, 1]), result("a", [1, 1, 0, 0]), result("b", [1, 0, 0, 0]), result("y", [0, 0, 0, 0])]
    change = E.paired_difference(new, old, k_list=[1, 4])
    assert change["num_problems"] == 3  # a, b, c; x and y were evaluated by one side only
    d = np.array([0.5 - 0.25, 0.25 - 0.0, 1.0 - 0.5])
    assert change["pass@k"][1] == pytest.approx(d.mean())
    assert change["stderr"]["pass@k"][1] == pytest.approx(d.std(ddof=1) / np.sqrt(3))
    assert change["pass@k"][4] == pytest.approx((1 + 1 + 1) / 3 - (1 + 0 + 1) / 3)
    shared_old, shared_new = [old[0], old[1], old[2]], [new[1], new[2], new[0]]
    unpaired = np.hypot(E.summarize(shared_new)["stderr"]["pass@k"][1], E.summarize(shared_old)["stderr"]["pass@k"][1])
    assert change["stderr"]["pass@k"][1] < unpaired  # the spread between problems cancels
    assert "greedy_accuracy" not in change  # neither side has a greedy sample
    with pytest.raises(ValueError, match="share no problem id"):
        E.paired_difference(new[3:], old[:1])
    with pytest.raises(ValueError, match="repeated problem ids"):
        E.paired_difference(new + new[:1], old)
    other = [E.ProblemResult(Problem("a", "q", "7"), ["7"] * 4, np.ones(4, np.float32), np.full(4, 5))]
    with pytest.raises(ValueError, match=r"not the same problems: 1 of the 1 shared ids differ in gold answer, level "
                                         r"or subject, e.g. a: \('7', None, None\) against \('1', None, None\)"):
        E.paired_difference(other, old)  # problem sets numbered alike, e.g. synthetic draws of other settings



def test_paired_greedy_means_are_over_the_problems_both_sides_have_greedy_answers_for():
    old = [result("a", [1, 0], greedy=1.0), result("b", [0, 0], greedy=0.0), result("c", [1, 1], greedy=1.0)]
    new = [result("a", [1, 1], greedy=1.0), result("b", [1, 0], greedy=1.0), result("c", [1, 1])]  # c: none
    change = E.paired_difference(new, old, k_list=[1])
    assert change["greedy_accuracy"] == pytest.approx(0.5)  # over a and b: (1 - 1 + 1 - 0) / 2
    assert change["old"]["greedy_accuracy"] == pytest.approx(0.5)  # not 2/3: c has no greedy answer in new
    assert change["new"]["greedy_accuracy"] - change["old"]["greedy_accuracy"] == pytest.approx(
        change["greedy_accuracy"])
    assert change["old"]["pass@k"][1] == pytest.approx(np.mean([0.5, 0.0, 1.0]))  # other metrics keep every problem

def test_replicated_change_counts_the_shared_problems_spread_once():
    """Seeds evaluated on the same problems: a problem's own effect is common to every seed. Over 400
    simulated campaigns (N = 100 problems with effects of spread 0.3, R = 3 seeds with noise 0.1), the
    error of the seeds' mean covers the true mean at the nominal rate; the independent-seeds formula
    sqrt(sum se^2) / R is too small by about sqrt(3) and does not."""
    rng = np.random.default_rng(0)
    covered = naive_covered = 0
    for _ in range(400):
        d = 0.05 + rng.normal(0, 0.3, 100)[None, :] + rng.normal(0, 0.1, (3, 100))
        change = E.replicated_change(d)
        naive = np.sqrt(np.sum(np.square(change["per_seed_stderr"]))) / 3
        covered += abs(change["mean"] - 0.05) <= 1.96 * change["stderr_of_mean"]
        naive_covered += abs(change["mean"] - 0.05) <= 1.96 * naive
    assert 0.92 <= covered / 400 <= 0.98, covered
    assert naive_covered / 400 < 0.8, naive_covered
    assert E.replicated_change([[0.0, 1.0, 2.0], [2.0, 1.0, 0.0]])["stderr_of_mean"] == 0.0  # the seeds cancel
    with pytest.raises(ValueError, match=r"\[replicates, problems\] with at least 2 problems"):
        E.replicated_change([0.1, 0.2])


def test_compare_notes_what_differs_between_the_files(tmp_path, capsys, monkeypatch):
    from rl_sharpen import compare

    legends, plot = [], E.plot_pass_at_k
    monkeypatch.setattr(E, "plot_pass_at_k", lambda summaries, *a: legends.append(list(summaries)) or plot(summaries, *a))

    eight = [result(f"p{i}", [i % 2, 1, 0, 0, 1, 0, 1, 0], greedy=1.0) for i in range(6)]
    four = [result(f"p{i}", [1, 0, 0, i % 2]) for i in range(6)]
    for name, results in (("eight", eight), ("four", four)):
        E.save_json(E.EvalReport(E.summarize(results), results, []), str(tmp_path / f"{name}.json"))
    assert compare.main([str(tmp_path / "eight.json"), str(tmp_path / "four.json"), "--k", "1,4",
                         "--plot", str(tmp_path / "curves.png"), "--names", "eight samples, four samples"]) == 0
    assert (tmp_path / "curves.png").read_bytes().startswith(b"\x89PNG")
    assert legends == [["eight samples", "four samples"]]
    out = capsys.readouterr().out
    assert ("note: A has 8 samples per problem, B 4: distinct answers, which grow with the samples, are left out"
            in out)
    assert "note: greedy answers only in A: no greedy row" in out
    assert "distinct" not in out.split("note: greedy")[1] and "pass@4" in out
    saved = json.dumps(compare.compare_files(str(tmp_path / "eight.json"), str(tmp_path / "four.json")))
    assert "mean_distinct_answers" not in saved and "pass@k" in saved  # nor in the sides' standard errors
    for names in ("A", "A,A", "A,", "A,B,C"):
        assert compare.main([str(tmp_path / "eight.json"), str(tmp_path / "four.json"), "--names", names]) == 2
        assert capsys.readouterr().err.startswith(f"error: --names={names}: allowed: two different")


def test_kept_completions_are_saved_and_read_back(tmp_path):
    sampler = FakeSampler()
    kept = E.evaluate(sampler, make_problems(3), prompt_fn=lambda p: p.problem, n_samples=4, verify_workers=1,
                      keep_texts=2)
    assert [r.texts for r in kept.results] == [sampler(["solve 0"], 4, False).texts[0][:2],
                                               sampler(["solve 1"], 4, False).texts[0][:2],
                                               sampler(["solve 2"], 4, False).texts[0][:2]]
    assert [r.greedy_text for r in kept.results] == [r"so \boxed{0}", r"so \boxed{2}", r"so \boxed{2}"]
    E.save_json(kept, str(tmp_path / "kept.json"))
    loaded = E.load_results(tmp_path / "kept.json")
    assert [(r.texts, r.greedy_text) for r in loaded] == [(r.texts, r.greedy_text) for r in kept.results]
    saved = json.loads((tmp_path / "kept.json").read_text())
    for field, value, error in [("texts", ["a"] * 5, "at most one per answer"), ("texts", [1], "list of strings"),
                                ("greedy_text", 12345, "greedy_text must be a string or null")]:
        bad = json.loads(json.dumps(saved))
        bad["problems"][1][field] = value
        (tmp_path / "bad.json").write_text(json.dumps(bad))
        with pytest.raises(ValueError, match=rf"bad.json: record 1 \(id p1\): ValueError: .*{error}"):
            E.load_results(tmp_path / "bad.json")
    plain = E.evaluate(FakeSampler(), make_problems(3), prompt_fn=lambda p: p.problem, n_samples=4, verify_workers=1)
    E.save_json(plain, str(tmp_path / "plain.json"))
    assert "texts" not in json.loads((tmp_path / "plain.json").read_text())["problems"][0]
    assert json.dumps(plain.summary, sort_keys=True) == json.dumps(kept.summary, sort_keys=True)


def test_saved_results_load_back_to_the_same_summary_and_compare_from_the_command_line(tmp_path, capsys):
    from rl_sharpen import compare

    report = E.evaluate(FakeSampler(), make_problems(6), prompt_fn=lambda p: p.problem, n_samples=4, verify_workers=1)
    E.save_json(report, str(tmp_path / "old.json"))
    loaded = E.load_results(tmp_path / "old.json")
    assert json.dumps(E.summarize(loaded), sort_keys=True) == json.dumps(report.summary, sort_keys=True)

    saved = json.loads((tmp_path / "old.json").read_text())  # the new run solves every sample of p1 and p2
    assert saved["problems"][1]["votes"] == ["1", "101", "100", None]
    assert saved["votes"]["pairs_symbolic"] == 0  # plain numbers: decided without sympy
    for record in saved["problems"][1:3]:
        record["answers"], record["rewards"] = [record["gold"]] * 4, [1.0] * 4
        del record["votes"]  # as in a file of an older version: worked out again on loading
    (tmp_path / "new.json").write_text(json.dumps(saved))
    assert compare.main([str(tmp_path / "new.json"), str(tmp_path / "old.json"), "--k", "1,4",
                         "--out", str(tmp_path / "change.json")]) == 0
    rows = {line.split()[0]: line.split()[1:] for line in capsys.readouterr().out.splitlines()[5:]}
    d = np.array([0, 3 / 4, 2 / 4, 0, 0, 0])  # pass@1 gains per problem (p1 had 1 of 4, p2 2 of 4)
    assert rows["pass@1"] == [f"{100 * np.mean(d) + 100 * np.mean([min(i, 4) / 4 for i in range(6)]):.1f}",
                              f"{100 * np.mean([min(i, 4) / 4 for i in range(6)]):.1f}",
                              f"{100 * d.mean():+.1f}", "±", f"{100 * d.std(ddof=1) / np.sqrt(6):.1f}",
                              f"{d.mean() / (d.std(ddof=1) / np.sqrt(6)):+.1f}"]
    change = json.loads((tmp_path / "change.json").read_text())["change"]
    assert change["pass@k"]["4"] == pytest.approx(0.0) and change["num_problems"] == 6  # p1, p2 had pass@4 = 1

    (tmp_path / "bad.json").write_text(json.dumps({"summary": {}}))
    assert compare.main([str(tmp_path / "bad.json"), str(tmp_path / "old.json")]) == 2
    assert "bad.json is not an evaluation written by evaluation.save_json" in capsys.readouterr().err
    saved["problems"][2]["rewards"] = 1.0
    (tmp_path / "bad.json").write_text(json.dumps(saved))
    assert compare.main([str(tmp_path / "bad.json"), str(tmp_path / "old.json")]) == 2
    assert "bad.json: record 2 (id p2): ValueError: answers, rewards and num_tokens must be lists" in capsys.readouterr().err
    saved["problems"][2]["rewards"], saved["problems"][3]["votes"] = [1.0] * 4, ["3"] * 4
    (tmp_path / "bad.json").write_text(json.dumps(saved))  # problem 3 has samples without an answer
    assert compare.main([str(tmp_path / "bad.json"), str(tmp_path / "old.json")]) == 2
    assert "record 3 (id p3): ValueError: votes must be a list of strings (null where" in capsys.readouterr().err
    saved["problems"][3]["votes"] = ["3", "3", "3", None]  # sample 3 is wrong: its vote must differ
    saved["problems"][3]["answers"], saved["problems"][3]["rewards"] = ["3", "3", "3", "4"], [1.0, 1.0, 1.0, 0.0]
    (tmp_path / "bad.json").write_text(json.dumps(saved))
    assert compare.main([str(tmp_path / "bad.json"), str(tmp_path / "old.json")]) == 2
    assert "record 3 (id p3): ValueError: votes must be a list of strings" in capsys.readouterr().err
    saved["problems"][3]["votes"] = ["3", "3", "3", "3"]
    (tmp_path / "bad.json").write_text(json.dumps(saved))
    assert compare.main([str(tmp_path / "bad.json"), str(tmp_path / "old.json")]) == 2
    assert "record 3 (id p3): ValueError: votes give a correct and a wrong sample one key" in capsys.readouterr().err
    assert compare.main([str(tmp_path / "new.json"), str(tmp_path / "old.json"), "--k", "1.5"]) == 2
    assert "--k=1.5: allowed: comma-separated integers" in capsys.readouterr().err
    for k in ("0", "1,5"):
        assert compare.main([str(tmp_path / "new.json"), str(tmp_path / "old.json"), "--k", k]) == 2
        assert "allowed: integers in [1, 4], the samples per problem that both files have" in capsys.readouterr().err
    assert compare.main([str(tmp_path / "new.json"), str(tmp_path / "new.json"), "--out", str(tmp_path / "no" / "x")]) == 2
    assert "No such file or directory" in capsys.readouterr().err


def test_summary_counts_no_answer_samples_apart():
    r = E.ProblemResult(Problem("p", "q", "1"), ["1", "2", "2", None], np.array([1, 0, 0, 0], np.float32),
                        np.full(4, 5))
    s = E.summarize([r], k_list=[1])
    assert s["mean_distinct_answers"] == 2.0 and s["no_answer_rate"] == 0.25


def test_paired_greedy_drops_problems_the_old_side_lacks_too():
    def res(pid, greedy):
        return E.ProblemResult(Problem(pid, "q", "1"), ["1", "2"], np.array([1, 0], np.float32), np.full(2, 5),
                               greedy_reward=greedy)
    change = E.paired_difference([res("a", 1.0), res("b", 1.0), res("c", 0.0)],
                                 [res("a", 1.0), res("b", 0.0), res("c", None)], k_list=[1])
    assert change["new"]["greedy_accuracy"] == pytest.approx(1.0)  # over a and b only
    difference = change["new"]["greedy_accuracy"] - change["old"]["greedy_accuracy"]
    assert difference == pytest.approx(change["greedy_accuracy"])


def test_a_metric_by_k_named_once_reaches_summaries_flat_metrics_and_compare(monkeypatch):
    """A researcher's new metric (all@k: every one of k samples correct) added to `problem_scores`
    and named in PER_K_METRICS needs no other edit for summaries, result.json and compare."""
    from rl_sharpen import compare
    from rl_sharpen.task_setup import flat_summary

    base = E.problem_scores

    def with_all_at_k(results, k_list=None, maj_draws=1000):
        scores = base(results, k_list, maj_draws)
        n = len(results[0].rewards)
        scores["all@k"] = {k: np.array([math.comb(int(r.rewards.sum()), k) / math.comb(n, k) for r in results])
                           for k in scores["pass@k"]}
        return scores

    monkeypatch.setattr(E, "problem_scores", with_all_at_k)
    monkeypatch.setattr(E, "PER_K_METRICS", (*E.PER_K_METRICS, "all@k"))
    report = E.evaluate(FakeSampler(), make_problems(6), prompt_fn=lambda p: p.problem, n_samples=4, verify_workers=1)
    rewards = np.array([r.rewards.sum() for r in report.results])
    assert report.summary["all@k"][4] == pytest.approx(np.mean(rewards == 4))
    assert report.summary["stderr"]["all@k"][1] == pytest.approx(E.standard_error(rewards / 4))
    assert flat_summary(report.summary)["all@2"] == report.summary["all@k"][2]
    rows = compare.comparison_rows(E.paired_difference(report.results, report.results))
    assert [r[0] for r in rows if r[0].startswith("all@")] == ["all@1", "all@2", "all@4"]
