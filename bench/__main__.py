"""`python -m bench`: every benchmark (issue 2's and NATS's) in one run, a table on stdout, JSON numbers.

    python -m bench [--quick] [--only NAME[,NAME]] [--out bench/results/latest.json]

Exit status: 0 when every target that could be measured was met, 1 when one was missed, 2 on bad usage.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from bench import cluster, executor, http_reads, nats, rebuild, scheduler, visibility, writes
from bench.common import Options, Result, table, write_json
from bench.load import wrk_path

BENCHMARKS: dict[str, Callable[[Options], list[Result]]] = {
    "reads": http_reads.run,
    "writes": writes.run,
    "visibility": visibility.run,
    "nats": nats.run,
    "scheduler": scheduler.run,
    "executor": executor.run,
    "cluster": cluster.run,
    "rebuild": rebuild.run,
}
DEFAULT_OUT = Path("bench/results/latest.json")


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer, shorter rounds (about 2 minutes)")
    parser.add_argument(
        "--only", default=",".join(BENCHMARKS), help=f"comma-separated subset of: {', '.join(BENCHMARKS)}"
    )
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"JSON results (default {DEFAULT_OUT})")
    args = parser.parse_args(argv)
    unknown = set(args.only.split(",")) - set(BENCHMARKS)
    if unknown:
        parser.error(
            f"unknown benchmark(s): {', '.join(sorted(unknown))}; choose from {', '.join(BENCHMARKS)}"
        )
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse(argv)
    wrk_path()  # fail now, not after minutes of set-up, when the load generator is missing
    started = time.perf_counter()
    results: list[Result] = []
    with tempfile.TemporaryDirectory(prefix="libjobs-bench-") as work:
        options = Options(quick=args.quick, work_dir=Path(work))
        for name in args.only.split(","):
            results += BENCHMARKS[name](options)
    elapsed = time.perf_counter() - started
    write_json(args.out, results, options, elapsed)
    print(table(results))
    print(f"\n{len(results)} results in {elapsed:.0f}s; JSON: {args.out}")
    return 1 if any(r.passed is False for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
