"""Every gold answer of a dataset graded against itself, written in a few forms a model uses.

    python benchmarks/grader_self_check.py ../shared/data/math/test500.jsonl ../shared/data/gsm8k/test.jsonl

Prints, per file and form, how many golds the verifier accepts; anything below all of them is a
grader defect (a correct answer scored 0).
"""

import sys

from rl_sharpen.tasks.datasets import load_problems
from rl_sharpen.tasks.verify import grade_batch

FORMS = ("\\boxed{%s}", "\\boxed{%s.}", "The answer is $%s$.")


def main(paths) -> int:
    for path in paths:
        problems, _ = load_problems(path)
        golds = [p.answer for p in problems]
        for form in FORMS:
            correct, _, _ = grade_batch([form % g for g in golds], golds, timeout=10)
            print(f"{path}  {form!r:24}  {int(sum(correct))}/{len(golds)}")
    return 0


if __name__ == "__main__":  # the verifier's worker pool forks from here
    sys.exit(main(sys.argv[1:]))
