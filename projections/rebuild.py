"""The persisted projections, and rebuilding one from the store (`libjobs projections`, SPEC §8).

A rebuild replays every stored event from position 0, in large batches, into fresh `ReadModels` that no
one listens to: it only reads the store and writes rows, so nothing fires, nothing is published and no
plugin is called. It goes:

1. Take the view's rebuild lock (one rebuild at a time) and read the live rows with their position P
   (one snapshot).
2. Replay up to P and compare the models' rows with the live ones, byte for byte: the check that the
   rows running processes wrote, change by change, equal a replay.
3. Replay on to the end of the store and write the rows as the view's next generation
   (`projections.sqlview`), in chunks, while the live generation goes on being read and written.
4. Catch up with what was stored meanwhile, write those changes, and swap the generation in with its
   position in one transaction. If the projector has written past that position in the meantime, the
   swap is refused (it would move the rows back): catch up again and retry.
5. Drop the old generation.

Running processes keep serving from their memory throughout; a process that starts afterwards loads
the new rows, and the projector writes its next changes on top of them (`SqliteViewStore.write`).
"""

from __future__ import annotations

import contextlib
import gc
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from projections.readmodels import ReadModels
from projections.rows import ViewRow
from projections.sqlview import RELAY_NAME, VIEWS_NAME, Swap, ViewStatus

BATCH = 10_000  # events per read of the store
WRITE_CHUNK = 20_000  # rows per `write_staged` call (the store writes them in transactions of its own)
EXAMPLES = 10  # differences a report names (it counts them all)

Read = Callable[[int, int], Sequence[tuple[int, Any]]]  # (after, limit) → (position, event), in order
Progress = Callable[[str, int, int], None]  # (stage: "replay" | "write", done, total)


class HasStatus(Protocol):
    def status(self) -> ViewStatus: ...


class ViewTarget(HasStatus, Protocol):
    """A persisted view (`SqliteViewStore`, `PostgresViewStore`)."""

    name: str

    def load(self) -> tuple[int, list[ViewRow]]: ...
    def begin_rebuild(self) -> str: ...
    def write_staged(
        self,
        table: str,
        upserts: Sequence[ViewRow],
        deletes: Sequence[tuple[str, str]] = (),
        *,
        fresh: bool = False,
    ) -> None: ...
    def swap(self, table: str, position: int, *, force: bool = False) -> Swap: ...
    def drop_rows(self, table: str) -> None: ...
    def end_rebuild(self) -> None: ...


@dataclass(frozen=True)
class Projection:
    name: str  # as the command line says it
    holds: str
    tracking_name: str  # its name in the tracking table (the format version)
    rebuildable: bool


VIEWS = Projection("views", "the jobs, runs and catalog read models", VIEWS_NAME, True)
RELAY = Projection("relay", "what was published to JetStream (a position only)", RELAY_NAME, False)
PROJECTIONS = (VIEWS, RELAY)


class UnknownProjection(ValueError):
    pass


def projection(name: str) -> Projection:
    for known in PROJECTIONS:
        if known.name == name:
            return known
    names = ", ".join(p.name for p in PROJECTIONS)
    raise UnknownProjection(f"unknown projection {name!r}; known: {names}")


@dataclass(frozen=True)
class ProjectionStatus:
    projection: Projection
    table: str
    position: int
    store_position: int
    rows: dict[str, int]

    @property
    def lag(self) -> int:
        return max(0, self.store_position - self.position)


def status(targets: Mapping[str, HasStatus], store_position: int) -> list[ProjectionStatus]:
    """Each projection's position, lag and rows; `targets` maps a projection's name to its store."""
    found = []
    for known in PROJECTIONS:
        target = targets.get(known.name)
        if target is not None:
            view = target.status()
            found.append(ProjectionStatus(known, view.table, view.position, store_position, view.rows))
    return found


@dataclass(frozen=True)
class Difference:
    kind: str
    key: str
    what: Literal["missing", "extra", "different"]  # missing: only in the replay; extra: only live


@dataclass
class RebuildReport:
    name: str
    events: int = 0  # events applied
    position: int = 0  # the rebuilt rows include every event up to here
    rows: int = 0
    compared_position: int | None = None  # the live rows' position; None: there were none
    compared_rows: int = 0
    differences: int = 0
    examples: list[Difference] = field(default_factory=list)
    live_ahead: bool = False  # the live rows claimed a position past the end of the store
    swapped: bool = False
    table: str = ""  # the generation written (and swapped in)
    replaced: str = ""  # the generation it replaced
    seconds: float = 0.0

    @property
    def consistent(self) -> bool:
        """The live rows equalled the replay (or there were none)."""
        return self.differences == 0 and not self.live_ahead


def compare(live: Iterable[ViewRow], rebuilt: Iterable[ViewRow]) -> list[Difference]:
    """Every row that is not byte-for-byte the same, by (kind, key)."""
    theirs, ours = set(live), set(rebuilt)
    if theirs == ours:
        return []
    their_keys = {(row.kind, row.key) for row in theirs - ours}
    our_keys = {(row.kind, row.key) for row in ours - theirs}
    found = [Difference(kind, key, "different") for kind, key in their_keys & our_keys]
    found += [Difference(kind, key, "extra") for kind, key in their_keys - our_keys]
    found += [Difference(kind, key, "missing") for kind, key in our_keys - their_keys]
    return sorted(found, key=lambda d: (d.kind, d.key))


def replay(
    models: ReadModels,
    read: Read,
    *,
    until: int | None = None,
    batch: int = BATCH,
    keep_changes: bool = False,
    on_batch: Callable[[int], None] | None = None,
) -> int:
    """Applies the events stored after the models' position (up to `until`); returns how many.

    Without `keep_changes` the models do not note which rows change (a replay writes every row at the
    end; the set would only grow) and encode each changed row once, when the replay is over; with it,
    `take_changes` tells them afterwards."""
    applied, models.track_changes = 0, keep_changes
    if not keep_changes:
        models.defer_encoding()  # nothing reads the rows before the replay is over
    try:
        while until is None or models.position() < until:
            events = read(models.position(), batch)
            if until is not None and events and events[-1][0] > until:
                events = [event for event in events if event[0] <= until]
            if not events:
                break
            models.apply(events)
            applied += len(events)
            if on_batch is not None:
                on_batch(models.position())
    finally:
        models.encode_deferred()
    return applied


def rebuild(
    target: ViewTarget,
    read: Read,
    max_position: Callable[[], int],
    *,
    name: str = VIEWS.name,
    default_timezone: str = "UTC",
    check_only: bool = False,
    batch: int = BATCH,
    progress: Progress | None = None,
) -> RebuildReport:
    """Rebuilds the view from position 0 and swaps it in (see the module's docstring); `check_only`
    stops after the comparison, writing nothing. Raises `RebuildBusy` when another rebuild runs.

    The cyclic garbage collector is off meanwhile: the models are objects that live as long as the
    rebuild, and it would only walk them again and again (as at a service's start, `Service.start`)."""
    started = time.perf_counter()
    report = RebuildReport(name)
    table = target.begin_rebuild()
    try:
        with _without_cyclic_gc():
            _rebuild(target, table, read, max_position, report, default_timezone, check_only, batch, progress)
        return report
    finally:
        if report.table and not report.swapped:
            with contextlib.suppress(Exception):  # best effort: the next rebuild drops it anyway
                target.drop_rows(report.table)
        target.end_rebuild()
        report.seconds = time.perf_counter() - started


def _rebuild(
    target: ViewTarget,
    table: str,
    read: Read,
    max_position: Callable[[], int],
    report: RebuildReport,
    default_timezone: str,
    check_only: bool,
    batch: int,
    progress: Progress | None,
) -> None:
    models = ReadModels(default_timezone=default_timezone)  # no listener: nothing fires, nothing is told
    live_position, live_rows = target.load()
    end = max_position()  # after the load: the live rows cannot be past the store unless they are stale

    def tell(position: int) -> None:
        if progress is not None:
            progress("replay", position, max(end, position))

    tell(0)
    rows: list[ViewRow] | None = None  # the models' rows at their position, once taken
    if live_position > end:
        report.live_ahead = True
    elif live_position > 0 or live_rows:
        report.events += replay(models, read, until=live_position, batch=batch, on_batch=tell)
        rows = models.dump()[1]
        found = compare(live_rows, rows)
        report.compared_position, report.compared_rows = live_position, len(live_rows)
        report.differences, report.examples = len(found), found[:EXAMPLES]
    del live_rows
    if check_only:
        report.position = models.position()
        return
    applied = replay(models, read, batch=batch, on_batch=tell)
    report.events += applied
    if applied or rows is None:
        rows = models.dump()[1]
    report.table = table
    _write_all(target, table, rows, progress)
    report.rows = len(rows)
    del rows
    applied = _swap(target, table, models, read, max_position, report, batch)
    if applied:
        report.events += applied
        report.rows = len(models.dump()[1])
    report.position = models.position()
    target.drop_rows(report.replaced)


@contextlib.contextmanager
def _without_cyclic_gc() -> Iterator[None]:
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _write_all(target: ViewTarget, table: str, rows: list[ViewRow], progress: Progress | None) -> None:
    """Every row, as a new generation, a chunk at a time, in key order: the table's index is written in
    order, and the generation is dropped later in order (SQLite: three times faster than in the
    models' order, by random ids)."""
    rows.sort()  # by kind, then key: no two rows have both the same
    for start in range(0, len(rows), WRITE_CHUNK):
        target.write_staged(table, rows[start : start + WRITE_CHUNK], fresh=True)
        if progress is not None:
            progress("write", min(start + WRITE_CHUNK, len(rows)), len(rows))


def _swap(
    target: ViewTarget,
    table: str,
    models: ReadModels,
    read: Read,
    max_position: Callable[[], int],
    report: RebuildReport,
    batch: int,
) -> int:
    """Catches up and swaps the generation in; returns how many events it applied to catch up."""
    applied, force = 0, False
    while True:
        applied += replay(models, read, batch=batch, keep_changes=True)
        position, upserts, deletes = models.take_changes()
        if upserts or deletes:
            target.write_staged(table, upserts, deletes)
        swap = target.swap(table, position, force=force)
        if swap.done:
            report.swapped, report.replaced = True, swap.replaced
            return applied
        # The projector wrote past us meanwhile: read on. Rows claiming a position past the end of the
        # store were not written from this store: they are replaced whatever their position.
        force = swap.live_position > max_position()


class Projections:
    """What `libjobs projections` does, over one deployment's stores: `targets` maps each projection's
    name to its persisted view, `read` and `max_position` read the event store."""

    def __init__(
        self,
        targets: Mapping[str, ViewTarget],
        read: Read,
        max_position: Callable[[], int],
        *,
        default_timezone: str = "UTC",
        batch: int = BATCH,
    ) -> None:
        self._targets = targets
        self._read = read
        self._max_position = max_position
        self._default_timezone = default_timezone
        self._batch = batch

    def all(self) -> tuple[Projection, ...]:
        return PROJECTIONS

    def status(self, names: Sequence[str] = ()) -> list[ProjectionStatus]:
        chosen = {name: self._targets[name] for name in names or self._targets}
        return status(chosen, self._max_position())

    def rebuild(
        self, name: str, *, check_only: bool = False, progress: Progress | None = None
    ) -> RebuildReport:
        if not projection(name).rebuildable:
            raise UnknownProjection(f"{name} cannot be rebuilt")
        return rebuild(
            self._targets[name],
            self._read,
            self._max_position,
            name=name,
            default_timezone=self._default_timezone,
            check_only=check_only,
            batch=self._batch,
            progress=progress,
        )
