"""Paired comparison of two saved evaluations of the same problems:

    python -m rl_sharpen.compare RUN_A/eval/eval_step500.json RUN_B/eval/eval_step500.json [--out change.json]

Reads two `evaluation.save_json` files (an RL run's validations, <workdir>/eval/eval_step<N>.json; an
eval run's <workdir>/eval_step0.json; the demo's <workdir>/eval/<model>/eval.json)
and prints, for pass@k, maj@k, greedy accuracy, mean length and distinct answers, A, B and A - B
over the problems both evaluated, ± its paired standard error (`evaluation.paired_difference`), with
z = (A - B) / error; |z| > 2 is a change that the problems' own noise rarely produces.
"""

from __future__ import annotations

import argparse
import sys

from rl_sharpen import evaluation

_SCALARS = (("greedy", "greedy_accuracy"), ("tokens", "mean_response_tokens"), ("distinct", "mean_distinct_answers"))


def comparison_rows(change: dict, a: dict, b: dict) -> list[list[str]]:
    """One row per metric: name, A, B, A - B ± error, z (from `paired_difference` and two summaries)."""
    def row(name, diff, error, value_a, value_b, scale):
        z = "-" if not error else f"{diff / error:+.1f}"
        spread = "" if error is None else f" ± {scale * error:.1f}"
        return [name, f"{scale * value_a:.1f}", f"{scale * value_b:.1f}", f"{scale * diff:+.1f}{spread}", z]

    rows = []
    for table in ("pass@k", "maj@k"):
        for k, diff in change[table].items():
            rows.append(row(f"{table[:-2]}@{k}", diff, change["stderr"][table][k], a[table][k], b[table][k], 100))
    for name, key in _SCALARS:
        if key in change:
            rows.append(row(name, change[key], change["stderr"][key], a[key], b[key], 100 if name == "greedy" else 1))
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("a", help="evaluation JSON of the run to measure (A)")
    parser.add_argument("b", help="evaluation JSON of the baseline (B), on the same problems")
    parser.add_argument("--k", default="", help="comma-separated k (default: 1, 2, 4, ... up to the samples both have)")
    parser.add_argument("--out", default="", help="also write the comparison as JSON here")
    args = parser.parse_args(argv)
    try:
        k_list = [int(k) for k in args.k.split(",") if k.strip()] or None
        results_a, results_b = evaluation.load_results(args.a), evaluation.load_results(args.b)
        change = evaluation.paired_difference(results_a, results_b, k_list)
        ids = {r.problem.id for r in results_a} & {r.problem.id for r in results_b}
        k_list = list(change["pass@k"])
        summary_a = evaluation.summarize([r for r in results_a if r.problem.id in ids], k_list, breakdown=False)
        summary_b = evaluation.summarize([r for r in results_b if r.problem.id in ids], k_list, breakdown=False)
    except (OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"A = {args.a}\nB = {args.b}\n{change['num_problems']} problems in both "
          f"(A has {len(results_a)}, B {len(results_b)}); accuracies in %, ± one paired standard error\n")
    print(evaluation.text_table(["metric", "A", "B", "A - B", "z"], comparison_rows(change, summary_a, summary_b)))
    if args.out:
        evaluation.write_json({"a": args.a, "b": args.b, "change": change, "a_summary": summary_a,
                               "b_summary": summary_b}, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
