"""What every benchmark shares: run options, interleaved rounds, statistics, results, the table and JSON."""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from enum import Enum
from importlib.util import find_spec
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Options:
    """How long and how often to measure; `--quick` trades precision for time."""

    quick: bool = False
    work_dir: Path = Path("/tmp")

    @property
    def rounds(self) -> int:
        """Rounds per contender; rounds alternate A/B/A/B so drift hits both sides alike."""
        return 3 if self.quick else 5

    @property
    def seconds(self) -> float:
        """Length of one measured round of one contender."""
        return 2.0 if self.quick else 4.0

    @property
    def warmup_seconds(self) -> float:
        return 1.0

    @property
    def visibility_writes(self) -> int:
        return 200 if self.quick else 400


class Goal(Enum):
    RATIO_AT_LEAST = "ratio >="  # measured / baseline must reach the target
    AT_MOST = "<="  # the measured value itself must stay under the target


@dataclass
class Result:
    """One line of the table: a measurement, what it is compared with, and the issue's target."""

    name: str
    unit: str
    value: float | None
    target: float
    goal: Goal
    baseline: float | None = None
    baseline_name: str = ""
    details: dict[str, Any] = field(default_factory=dict)
    note: str = ""  # a few words for the table: load, latency, CPU
    error: str | None = None  # set when the benchmark could not run (then `passed` is None)

    @property
    def ratio(self) -> float | None:
        if self.value is None or not self.baseline:
            return None
        return self.value / self.baseline

    @property
    def passed(self) -> bool | None:
        if self.error is not None or self.value is None:
            return None
        if self.goal is Goal.RATIO_AT_LEAST:
            return self.ratio is not None and self.ratio >= self.target
        return self.value <= self.target

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["goal"] = self.goal.value
        data["ratio"] = self.ratio
        data["passed"] = self.passed
        return data


def skipped(name: str, goal: Goal, target: float, unit: str, reason: str) -> Result:
    return Result(name=name, unit=unit, value=None, target=target, goal=goal, error=reason)


# --- timing and statistics ------------------------------------------------------------------------------


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values))


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0-100), nearest-rank: an observed value, never an interpolation."""
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(q / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


def interleave(rounds: int, contenders: Mapping[str, Callable[[], float]]) -> dict[str, list[float]]:
    """Runs every contender once per round, rotating who goes first, and returns each one's samples.

    On a noisy machine a slow minute then hurts every contender alike instead of one of them; compare the
    medians of the samples.
    """
    names = list(contenders)
    samples: dict[str, list[float]] = {name: [] for name in names}
    for i in range(rounds):
        shift = i % len(names)
        for name in names[shift:] + names[:shift]:
            samples[name].append(contenders[name]())
    return samples


def rate_for(seconds: float, step: Callable[[], object]) -> float:
    """Calls `step` in a loop for about `seconds`; returns calls per second."""
    count = 0
    started = time.perf_counter()
    deadline = started + seconds
    while True:
        step()
        count += 1
        now = time.perf_counter()
        if now >= deadline:
            return count / (now - started)


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (all its threads) from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@contextmanager
def stage(title: str) -> Iterator[None]:
    started = time.perf_counter()
    print(f"-- {title} ...", file=sys.stderr, flush=True)
    try:
        yield
    finally:
        print(f"   {title}: {time.perf_counter() - started:.1f}s", file=sys.stderr, flush=True)


# --- output ---------------------------------------------------------------------------------------------


def _number(value: float | None, unit: str = "") -> str:
    if value is None:
        return "-"
    text = f"{value:,.0f}" if abs(value) >= 100 else f"{value:.2f}" if abs(value) < 10 else f"{value:.1f}"
    return f"{text} {unit}".strip()


def _verdict(result: Result) -> str:
    return {True: "PASS", False: "FAIL", None: "SKIP" if result.error else "-"}[result.passed]


def table(results: Sequence[Result]) -> str:
    header = ("benchmark", "measured", "baseline", "ratio", "target", "result", "notes")
    rows = []
    for r in results:
        target = (
            f"{r.goal.value} {r.target:.0%}" if r.goal is Goal.RATIO_AT_LEAST else f"<= {r.target:g} {r.unit}"
        )
        rows.append(
            (
                r.name,
                _number(r.value, r.unit),
                _number(r.baseline, r.unit) if r.baseline is not None else "-",
                f"{r.ratio:.0%}" if r.ratio is not None else "-",
                target,
                _verdict(r),
                r.error or r.note,
            )
        )
    widths = [max(len(str(row[i])) for row in (header, *rows)) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)) for row in (header, *rows)]
    lines.insert(1, "  ".join("-" * w for w in widths))
    baselines = [f"  {r.name}: {r.baseline_name}" for r in results if r.baseline_name]
    if baselines:
        lines += ["", "Baselines:", *baselines]
    return "\n".join(lines)


def _git(*args: str) -> str:
    try:
        done = subprocess.run(["git", *args], capture_output=True, text=True, timeout=10, check=False)
    except OSError:
        return ""
    return done.stdout.strip()


def environment() -> dict[str, Any]:
    return {
        "git_commit": _git("rev-parse", "HEAD"),
        "git_dirty": bool(_git("status", "--porcelain", "--untracked-files=no")),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "uvicorn_loop": "uvloop" if find_spec("uvloop") else "asyncio",
        "uvicorn_http": "httptools" if find_spec("httptools") else "h11",
        "load_average": os.getloadavg(),
    }


def write_json(path: Path, results: Sequence[Result], options: Options, elapsed_s: float) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    document = {
        "issue": 2,
        "finished_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "quick": options.quick,
        "rounds": options.rounds,
        "round_seconds": options.seconds,
        "elapsed_s": round(elapsed_s, 1),
        "environment": environment(),
        "results": [r.to_json() for r in results],
    }
    path.write_text(json.dumps(document, indent=2, default=str) + "\n")
