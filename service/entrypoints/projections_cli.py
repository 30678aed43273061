"""`libjobs projections list | status [NAME...] | rebuild [--check] [NAME...]` (SPEC §8).

`list` names the persisted projections, `status` shows each one's position against the store's (its
lag) and its rows, `rebuild` replays the store from position 0 into a new generation of a projection's
rows and swaps it in, with a progress bar on stderr. Every rebuild first compares a replay with the live
rows, byte for byte: exit 1 when they differed (a rebuild has replaced them; `--check` writes nothing).
Only the store and the view rows are touched: no NATS, no scheduler, no relay, no plugin.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol, TextIO

from tqdm import tqdm


class ProjectionInfo(Protocol):
    @property
    def name(self) -> str: ...
    @property
    def holds(self) -> str: ...
    @property
    def tracking_name(self) -> str: ...
    @property
    def rebuildable(self) -> bool: ...


class StatusInfo(Protocol):
    @property
    def projection(self) -> ProjectionInfo: ...
    @property
    def table(self) -> str: ...
    @property
    def position(self) -> int: ...
    @property
    def store_position(self) -> int: ...
    @property
    def rows(self) -> Mapping[str, int]: ...
    @property
    def lag(self) -> int: ...


class DifferenceInfo(Protocol):
    @property
    def kind(self) -> str: ...
    @property
    def key(self) -> str: ...
    @property
    def what(self) -> str: ...


class ReportInfo(Protocol):
    @property
    def name(self) -> str: ...
    @property
    def events(self) -> int: ...
    @property
    def position(self) -> int: ...
    @property
    def rows(self) -> int: ...
    @property
    def compared_position(self) -> int | None: ...
    @property
    def compared_rows(self) -> int: ...
    @property
    def differences(self) -> int: ...
    @property
    def examples(self) -> Sequence[DifferenceInfo]: ...
    @property
    def live_ahead(self) -> bool: ...
    @property
    def swapped(self) -> bool: ...
    @property
    def table(self) -> str: ...
    @property
    def replaced(self) -> str: ...
    @property
    def seconds(self) -> float: ...
    @property
    def consistent(self) -> bool: ...


Progress = Callable[[str, int, int], None]


class ProjectionsAdmin(Protocol):
    def all(self) -> Sequence[ProjectionInfo]: ...
    def status(self, names: Sequence[str]) -> Sequence[StatusInfo]: ...
    def rebuild(self, name: str, *, check_only: bool, progress: Progress | None) -> ReportInfo: ...


class BadName(ValueError):
    """A projection name that is not known, or not rebuildable (exit 2)."""


def run(
    admin: ProjectionsAdmin,
    command: str,
    names: Sequence[str] = (),
    *,
    check_only: bool = False,
    out: TextIO | None = None,
    err: TextIO | None = None,
) -> int:
    """Runs the subcommand; raises `BadName` for a name that is not known (or not rebuildable)."""
    output = out if out is not None else sys.stdout
    known = {p.name: p for p in admin.all()}
    for name in names:
        if name not in known:
            raise BadName(f"unknown projection {name!r}; known: {', '.join(known)}")
    if command == "list":
        _print_table(output, ("NAME", "REBUILD", "TRACKING NAME", "HOLDS"), [
            (p.name, "yes" if p.rebuildable else "no", p.tracking_name, p.holds) for p in known.values()
        ])  # fmt: skip
        return 0
    if command == "status":
        _print_status(output, admin.status(names or list(known)))
        return 0
    chosen = list(names) or [p.name for p in known.values() if p.rebuildable]
    for name in chosen:
        if not known[name].rebuildable:
            raise BadName(f"{name} cannot be rebuilt: {known[name].holds}; replaying it would publish again")
    consistent = True
    for name in chosen:
        report = _rebuild(admin, name, check_only, err if err is not None else sys.stderr)
        _print_report(output, report, check_only)
        consistent = consistent and report.consistent
    return 0 if consistent else 1


def _rebuild(admin: ProjectionsAdmin, name: str, check_only: bool, err: TextIO) -> ReportInfo:
    bars: dict[str, tqdm[Any]] = {}

    def progress(stage: str, done: int, total: int) -> None:
        if stage not in bars:
            for earlier in bars.values():
                earlier.close()
            unit = " events" if stage == "replay" else " rows"
            label = f"{name}: {'replaying' if stage == 'replay' else 'writing'}"
            bars[stage] = tqdm(total=total, desc=label, unit=unit, unit_scale=True, file=err,
                               mininterval=0.25, dynamic_ncols=True)  # fmt: skip
        bar = bars[stage]
        bar.total = max(bar.total or 0, total)
        bar.update(done - bar.n)

    try:
        return admin.rebuild(name, check_only=check_only, progress=progress)
    finally:
        for bar in bars.values():
            bar.close()


def _print_table(out: TextIO, header: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    widths = [max(len(row[i]) for row in (header, *rows)) for i in range(len(header))]
    for row in (header, *rows):
        print(
            "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip(), file=out
        )


def _print_status(out: TextIO, found: Sequence[StatusInfo]) -> None:
    rows = []
    for s in found:
        kinds = ", ".join(f"{kind} {count:,}" for kind, count in sorted(s.rows.items())) or "-"
        rows.append(
            (s.projection.name, f"{s.position:,}", f"{s.store_position:,}", f"{s.lag:,}", s.table, kinds)
        )
    _print_table(out, ("NAME", "POSITION", "STORE", "LAG", "TABLE", "ROWS"), rows)


def _print_report(out: TextIO, r: ReportInfo, check_only: bool) -> None:
    if r.live_ahead:
        print(f"{r.name}: the live rows claim a position past the end of the store: not compared", file=out)
    elif r.compared_position is None:
        print(f"{r.name}: no live rows to compare with", file=out)
    elif r.differences == 0:
        print(
            f"{r.name}: the live rows ({r.compared_rows:,}, position {r.compared_position:,}) equal a replay,"
            " byte for byte",
            file=out,
        )
    else:
        print(
            f"{r.name}: {r.differences:,} differences between the live rows ({r.compared_rows:,}, position"
            f" {r.compared_position:,}) and a replay{'' if check_only else ' (now replaced)'}",
            file=out,
        )
        for d in r.examples:
            print(f"  {d.what} {d.kind} {d.key}", file=out)
    if r.swapped:
        print(
            f"{r.name}: rebuilt from {r.events:,} events in {r.seconds:.1f}s: {r.rows:,} rows up to position"
            f" {r.position:,} swapped in as {r.table} (replacing {r.replaced})",
            file=out,
        )
