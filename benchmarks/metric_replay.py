"""What a resumed run's metric writer costs: it rewrites the kept JSONL rows into a new TensorBoard
event file (`metrics.MetricWriter`, so that events a killed run had queued are not lost).

    python benchmarks/metric_replay.py --rows 500 10000 --metrics 40 60 --out results.json

For each (rows, metrics) it writes that many rows with a fresh writer, closes it, then opens a writer
resumed at the last row, twice, and reports the seconds each resumed writer takes to open (the
replay) and the event bytes on disk after each.
"""

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

from rl_sharpen.metrics import MetricWriter


def measure(rows: int, metrics: int) -> dict:
    with tempfile.TemporaryDirectory() as folder:
        names = [f"metric_{i}" for i in range(metrics)]
        first = MetricWriter(folder, "train", is_main=True, resume_step=-1)
        for step in range(1, rows + 1):
            first.write(step, {name: step * 1e-3 + i for i, name in enumerate(names)})
        first.close()
        events = Path(folder, "tb", "train")
        result = {"rows": rows, "metrics": metrics,
                  "event_bytes_first": sum(f.stat().st_size for f in events.iterdir())}
        for resume in (1, 2):
            t0 = time.perf_counter()
            MetricWriter(folder, "train", is_main=True, resume_step=rows).close()
            result[f"resume_{resume}_seconds"] = time.perf_counter() - t0
            result[f"event_bytes_after_resume_{resume}"] = sum(f.stat().st_size for f in events.iterdir())
        return result


def main(argv) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, nargs="+", default=[500, 10000])
    parser.add_argument("--metrics", type=int, nargs="+", default=[40, 60])
    parser.add_argument("--out", default="")
    args = parser.parse_args(argv)
    results = [measure(r, m) for r in args.rows for m in args.metrics]
    for r in results:
        print(f"{r['rows']:>6} rows x {r['metrics']:>3} metrics: resume {r['resume_1_seconds']:.2f} s / "
              f"{r['resume_2_seconds']:.2f} s, events {r['event_bytes_first'] / 1e6:.1f} -> "
              f"{r['event_bytes_after_resume_1'] / 1e6:.1f} -> {r['event_bytes_after_resume_2'] / 1e6:.1f} MB")
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
