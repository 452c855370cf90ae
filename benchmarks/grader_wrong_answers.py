"""How often the grader scores a wrong answer correct: each gold answer of a dataset, changed in ways
that usually change its value, graded against the gold.

    python benchmarks/grader_wrong_answers.py ../shared/data/math/test500.jsonl [--out accepted.json]

Changes: a number +1 (first and last), 1e-6 added to the last integer, the whole negated, doubled
or squared; for brackets, either end flipped, items swapped, dropped, added, or written as a set or a
bare list; for lists, an item dropped, added or repeated, or the first alone; pi read as 180 or 1; a
square root dropped or made a cube root; a fraction inverted; an equation's left side alone or its
sides swapped; x renamed or squared; inequalities made strict. Some changes keep the value (-0,
1^2, "(2, oo]", sides swapped, "1,-2,1" against "1,-2"), and "(a, b)" may be a point as well as an
interval, so the accepted list is read by hand, not asserted empty. Prints the accepted count per
change and every accepted pair.
"""

import argparse
import collections
import json
import re
import sys

from rl_sharpen.tasks.answers import _split_top_level
from rl_sharpen.tasks.datasets import load_problems
from rl_sharpen.tasks.verify import grade_batch

_FLIP = {"(": "[", "[": "(", ")": "]", "]": ")"}


def _bump(gold: str, which: int) -> str | None:
    numbers = list(re.finditer(r"\d+", gold))
    if not numbers:
        return None
    m = numbers[which]
    return gold[:m.start()] + str(int(m.group()) + 1) + gold[m.end():]


def changes(gold: str) -> list[tuple[str, str]]:
    """(name, changed answer) pairs for one gold answer."""
    out = [("last+1", _bump(gold, -1)), ("first+1", _bump(gold, 0)), ("negated", f"-\\left({gold}\\right)"),
           ("doubled", f"2\\left({gold}\\right)"), ("squared", f"\\left({gold}\\right)^2")]
    last = list(re.finditer(r"\d+", gold))
    if last and "." not in gold:
        out.append(("plus 1e-6", gold[:last[-1].end()] + ".000001" + gold[last[-1].end():]))
    s = gold.replace("\\left", "").replace("\\right", "").strip()
    if len(s) > 1 and s[0] in "([" and s[-1] in ")]":
        out += [("left bracket", _FLIP[s[0]] + s[1:]), ("right bracket", s[:-1] + _FLIP[s[-1]])]
        items = _split_top_level(s[1:-1])
        if len(items) > 1:
            out += [("swapped", s[0] + ",".join(items[::-1]) + s[-1]), ("dropped", s[0] + ",".join(items[:-1]) + s[-1]),
                    ("added", s[0] + ",".join(items + ["0"]) + s[-1]), ("as a set", "\\{" + ",".join(items) + "\\}"),
                    ("bare list", ",".join(items))]
    items = _split_top_level(s)
    if len(items) > 1 and s[0] not in "([{":
        out += [("dropped", ",".join(items[:-1])), ("added", ",".join(items + ["0"])),
                ("repeated", ",".join(items + [items[0]])), ("first alone", items[0])]
    if "\\pi" in gold:
        out += [("pi as 180", gold.replace("\\pi", "180")), ("pi as 1", gold.replace("\\pi", "1"))]
    if "\\sqrt" in gold:
        out += [("no root", re.sub(r"\\sqrt\{([^{}]*)\}", r"\1", gold)), ("cube root", gold.replace("\\sqrt{", "\\sqrt[3]{"))]
    if "\\frac" in gold:
        out.append(("inverted", re.sub(r"\\frac\{([^{}]*)\}\{([^{}]*)\}", r"\\frac{\2}{\1}", gold, count=1)))
    if "=" in gold:
        left, right = gold.split("=", 1)
        out += [("left side", left), ("sides swapped", right + "=" + left)]
    if "x" in gold:
        out += [("x renamed", gold.replace("x", "t")), ("x squared", gold.replace("x", "x^2"))]
    if any(op in gold for op in ("<", ">", "\\le", "\\ge")):
        out.append(("strict", gold.replace("\\le", "<").replace("\\ge", ">")))
    return [(name, a) for name, a in out if a and a != gold]


def main(argv) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("path")
    parser.add_argument("--out", help="JSON file for the accepted pairs")
    args = parser.parse_args(argv)
    problems, _ = load_problems(args.path)
    cases = [(name, p.id, a, p.answer) for p in problems for name, a in changes(p.answer)]
    correct, _, stats = grade_batch([f"\\boxed{{{a}}}" for _, _, a, _ in cases], [g for *_, g in cases], timeout=5)
    accepted = [case for case, ok in zip(cases, correct) if ok]
    print(f"{args.path}: {len(accepted)} of {len(cases)} changed answers scored correct "
          f"({stats.num_timeouts} timeouts, {stats.num_errors} errors)")
    tried, hits = collections.Counter(c[0] for c in cases), collections.Counter(c[0] for c in accepted)
    for name in tried:
        print(f"  {name:14} {hits[name]:4} / {tried[name]}")
    for name, problem_id, answer, gold in accepted:
        print(f"  {name:14} {answer!r} against {gold!r}  ({problem_id})")
    if args.out:
        with open(args.out, "w") as f:
            json.dump([dict(change=n, id=i, answer=a, gold=g) for n, i, a, g in accepted], f, indent=1)
    return 0


if __name__ == "__main__":  # the verifier's worker pool forks from here
    sys.exit(main(sys.argv[1:]))
