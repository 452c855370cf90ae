"""Paired comparison of two saved evaluations of the same problems:

    python -m rl_sharpen.compare RUN_A/eval/eval_step500.json RUN_B/eval/eval_step500.json \
        [--out change.json] [--plot pass_at_k.png [--names "RL,base"]]

Reads two `evaluation.save_json` files (an RL run's validations, <workdir>/eval/eval_step<N>.json; an
eval run's <workdir>/eval_step0.json; the demo's <workdir>/eval/<model>/eval.json) and prints, for
pass@k, maj@k, greedy accuracy, mean length and distinct answers, A, B and A - B over the problems
both evaluated, ± its paired standard error (`evaluation.paired_difference`), with
z = (A - B) / error; |z| > 2 is a change that the problems' own noise rarely produces. `--plot` draws
both sides' pass@k and maj@k against k on the shared problems (where an RL model's pass@1 gain and a
base model's lead at large k show as crossing curves).
"""

from __future__ import annotations

import argparse
import sys
from typing import Sequence

from rl_sharpen import evaluation
from rl_sharpen.metrics import write_json

# (row name, summary key, scale, digits): accuracies in points, counts as they are
_ROWS = (("greedy", "greedy_accuracy", 100, 1), ("tokens", "mean_response_tokens", 1, 1),
         ("distinct", "mean_distinct_answers", 1, 2))


def comparison_rows(change: dict) -> list[list[str]]:
    """One row per metric of a `paired_difference` result: name, A, B, A - B ± error, z."""
    def row(name, key, k, scale, digits):
        get = (lambda d: d[key][k]) if k is not None else (lambda d: d[key])
        diff, error = get(change), get(change["stderr"])
        z = "-" if not error else f"{diff / error:+.1f}"
        spread = "" if error is None else f" ± {scale * error:.{digits}f}"
        return [name, f"{scale * get(change['new']):.{digits}f}", f"{scale * get(change['old']):.{digits}f}",
                f"{scale * diff:+.{digits}f}{spread}", z]

    rows = [row(f"{table[:-2]}@{k}", table, k, 100, 1) for table in evaluation.PER_K_METRICS for k in change[table]]
    return rows + [row(name, key, None, scale, digits) for name, key, scale, digits in _ROWS if key in change]


def compare_files(a: str, b: str, k_list: Sequence[int] | None = None) -> dict:
    """`evaluation.paired_difference` of two `save_json` files, A against B, plus their paths and sizes."""
    results = {"A": evaluation.load_results(a), "B": evaluation.load_results(b)}
    samples = min(len(results[name][0].rewards) for name in results)
    if k_list and not all(1 <= k <= samples for k in k_list):
        raise ValueError(f"k = {list(k_list)}: allowed: integers in [1, {samples}], the samples per problem "
                         "that both files have")
    change = evaluation.paired_difference(results["A"], results["B"], k_list, names=(f"A ({a})", f"B ({b})"))
    notes = []
    counts = {name: sorted({len(r.rewards) for r in rs}) for name, rs in results.items()}
    if counts["A"] != counts["B"]:  # pass@k and maj@k are unbiased at any n >= k; distinct answers grow with n
        notes.append(f"A has {'/'.join(map(str, counts['A']))} samples per problem, B {'/'.join(map(str, counts['B']))}: "
                     "distinct answers, which grow with the samples, are left out")
        for part in (change, change["new"], change["old"]):
            part.pop("mean_distinct_answers", None)
            part["stderr"].pop("mean_distinct_answers", None)
    greedy = {name: any(r.greedy_reward is not None for r in rs) for name, rs in results.items()}
    if greedy["A"] != greedy["B"]:
        notes.append(f"greedy answers only in {'A' if greedy['A'] else 'B'}: no greedy row")
    return {"a": a, "b": b, "a_problems": len(results["A"]), "b_problems": len(results["B"]), "change": change,
            "notes": notes}


def format_comparison(comparison: dict) -> str:
    change = comparison["change"]
    notes = "".join(f"note: {note}\n" for note in comparison.get("notes", []))
    return (f"A = {comparison['a']}\nB = {comparison['b']}\n{change['num_problems']} problems in both (A has "
            f"{comparison['a_problems']}, B {comparison['b_problems']}); accuracies in %, ± one paired standard "
            f"error\n{notes}\n" + evaluation.text_table(["metric", "A", "B", "A - B", "z"], comparison_rows(change)))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("a", help="evaluation JSON of the run to measure (A)")
    parser.add_argument("b", help="evaluation JSON of the baseline (B), on the same problems")
    parser.add_argument("--k", default="", help="comma-separated k (default: 1, 2, 4, ... up to the samples both have)")
    parser.add_argument("--out", default="", help="also write the comparison as JSON here")
    parser.add_argument("--plot", default="", help="also draw pass@k and maj@k of A and B against k here (PNG)")
    parser.add_argument("--names", default="A,B", help="the plot's legend names of A and B, e.g. 'sharpening,base'")
    args = parser.parse_args(argv)
    try:
        try:
            k_list = [int(k) for k in args.k.split(",") if k.strip()] or None
        except ValueError:
            raise ValueError(f"--k={args.k}: allowed: comma-separated integers") from None
        names = [n.strip() for n in args.names.split(",")]
        if len(names) != 2 or not all(names) or names[0] == names[1]:
            raise ValueError(f"--names={args.names}: allowed: two different non-empty names, comma-separated")
        comparison = compare_files(args.a, args.b, k_list)
        if args.out:
            write_json(comparison, args.out)
        if args.plot:
            change = comparison["change"]
            evaluation.plot_pass_at_k({names[0]: change["new"], names[1]: change["old"]}, args.plot,
                                      f"{change['num_problems']} problems in both")
    except (OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(format_comparison(comparison))
    return 0


if __name__ == "__main__":
    sys.exit(main())
