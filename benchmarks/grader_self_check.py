"""Every gold answer of a dataset graded against itself, written in a few forms a model uses.

    python benchmarks/grader_self_check.py ../shared/data/math/test500.jsonl ../shared/data/gsm8k/test.jsonl

Prints, per file and form, how many golds the verifier accepts; anything below all of them is a
grader defect (a correct answer scored 0). Problems that ask "How many <noun>" are also graded with
the noun after the number ("\\boxed{18 apples}"), a form GSM8K answers take.
"""

import re
import sys

from rl_sharpen.tasks.datasets import load_problems
from rl_sharpen.tasks.verify import grade_batch

FORMS = ("\\boxed{%s}", "\\boxed{%s.}", "The answer is $%s$.")
COUNTED_FORMS = ("\\boxed{%s %s}", "\\boxed{%s\\text{ %s}}", "The answer is %s %s.")
_HOW_MANY_RE = re.compile(r"[Hh]ow many ([a-z]{3,}(?: [a-z]{3,})?)\b(?! of\b)")


def main(paths) -> int:
    for path in paths:
        problems, _ = load_problems(path)
        golds = [p.answer for p in problems]
        for form in FORMS:
            correct, _, _ = grade_batch([form % g for g in golds], golds, timeout=10)
            print(f"{path}  {form!r:26}  {int(sum(correct))}/{len(golds)}")
        counted = [(p.answer, m.group(1)) for p in problems if (m := _HOW_MANY_RE.search(p.problem))]
        for form in COUNTED_FORMS if counted else ():
            correct, _, _ = grade_batch([form % pair for pair in counted], [g for g, _ in counted], timeout=10)
            print(f"{path}  {form!r:26}  {int(sum(correct))}/{len(counted)}")
    return 0


if __name__ == "__main__":  # the verifier's worker pool forks from here
    sys.exit(main(sys.argv[1:]))
