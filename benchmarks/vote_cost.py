"""What grouping equal answers into votes (`evaluation.vote_keys`) costs, and how often it changes a vote.

    python benchmarks/vote_cost.py ../shared/data/math/test500.jsonl --samples 16

Each problem gets `--samples` answers: its own gold, written as a correct sample of a model would be
in one of a few notations, for a fraction `--accuracy` of them; the others are wrong answers drawn
from the golds of `--pool-size` other problems (symbolic, intervals, tuples, numbers; none with this
problem's canonical answer, though the grader may still find one equal), so that wrong
answers repeat and some are equal in value (the worst case for the pairwise comparisons is many
distinct symbolic wrong answers). Prints the sympy pairs, seconds, and maj@k with canonical keys
against the verifier's keys.
"""

import argparse
import random
import sys
import time

import numpy as np

from rl_sharpen import evaluation as E
from rl_sharpen.tasks.datasets import load_problems
from rl_sharpen.tasks.verify import grade_batch

NOTATIONS = ("%s", "x = %s", "%s.", "{%s}")


def main(argv) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("path")
    parser.add_argument("--samples", type=int, default=16)
    parser.add_argument("--accuracy", type=float, default=0.3)
    parser.add_argument("--pool-size", type=int, default=6, help="other problems whose golds are the wrong answers")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    problems, _ = load_problems(args.path)
    rng = random.Random(args.seed)
    golds = [p.answer for p in problems]
    canonical_golds = [E.canonical_answer(g) for g in golds]
    answers = []
    for p, own in zip(problems, canonical_golds):
        wrong = rng.sample([g for g, c in zip(golds, canonical_golds) if c != own], args.pool_size)
        answers.append([rng.choice(NOTATIONS) % p.answer if rng.random() < args.accuracy else rng.choice(wrong)
                        for _ in range(args.samples)])
    start = time.perf_counter()
    flat = [a for row in answers for a in row]
    rewards, extracted, _ = grade_batch([rf"\boxed{{{a}}}" for a in flat],
                                        [g for g in golds for _ in range(args.samples)], timeout=10)
    grade_s = time.perf_counter() - start
    correct = (rewards > 0).reshape(len(problems), args.samples)
    extracted = [extracted[i * args.samples:(i + 1) * args.samples] for i in range(len(problems))]
    keys, stats = E.vote_keys(extracted, correct, golds, timeout=10)
    canonical = [[None if a is None else E.canonical_answer(a) for a in row] for row in extracted]
    print(f"{len(problems)} problems x {args.samples} samples, {100 * correct.mean():.1f}% graded correct; "
          f"grading {grade_s:.1f} s; vote keys: {stats}")
    for k in (1, 4, args.samples):
        before = np.mean([E.maj_at_k(c, ok, k) for c, ok in zip(canonical, correct)])
        after = np.mean([E.maj_at_k(v, ok, k) for v, ok in zip(keys, correct)])
        changed = sum(E.maj_at_k(c, ok, k) != E.maj_at_k(v, ok, k) for c, v, ok in zip(canonical, keys, correct))
        print(f"maj@{k}: canonical keys {100 * before:.1f}%, verifier keys {100 * after:.1f}% "
              f"({changed} problems changed)")
    return 0


if __name__ == "__main__":  # the verifier's worker pool forks from here
    sys.exit(main(sys.argv[1:]))
