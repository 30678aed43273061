"""The scheduler's timetable: every enabled job's next fire, in a heap, and what to do when one is due.

Pure: the caller says what time it is. Changing a job is O(log n): its new entry is pushed and the old one
is left in the heap, recognised as stale by its generation when it surfaces (lazy deletion), so edits,
disables and deletes never scan the heap.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal
from uuid import UUID

Trigger = Literal["schedule", "catchup", "missed"]  # missed: too old to run, recorded as skipped

# A fire this late, with no later fire due yet, is still an ordinary one (the process was busy, not down).
LATE_TOLERANCE = timedelta(seconds=5)


@dataclass(frozen=True, slots=True)
class Fire:
    """A claim to make: `instant` is the nominal fire to record (for a catch-up, the latest missed one)."""

    job_id: UUID
    instant: datetime
    trigger: Trigger
    missed_fires: int = 0  # fires older than the catch-up window, counted and not run


class Timetable:
    def __init__(self) -> None:
        self._heap: list[tuple[datetime, int, UUID]] = []
        self._current: dict[UUID, tuple[datetime, int]] = {}  # job → (next fire, generation)
        self._generation = 0

    def __len__(self) -> int:
        return len(self._current)

    def get(self, job_id: UUID) -> datetime | None:
        current = self._current.get(job_id)
        return None if current is None else current[0]

    def set(self, job_id: UUID, next_fire: datetime | None) -> None:
        """The job's next fire (None: it does not fire: disabled, deleted or never matching)."""
        current = self._current.get(job_id)
        if current is not None and current[0] == next_fire:
            return
        if next_fire is None:
            self._current.pop(job_id, None)
            return
        self._generation += 1
        self._current[job_id] = (next_fire, self._generation)
        heapq.heappush(self._heap, (next_fire, self._generation, job_id))
        if len(self._heap) > 2 * len(self._current) + 1024:
            self._compact()

    def next_due(self) -> datetime | None:
        """When the earliest fire is due; None when nothing is scheduled."""
        self._drop_stale()
        return self._heap[0][0] if self._heap else None

    def take_due(self, now: datetime) -> Iterator[tuple[UUID, datetime]]:
        """Removes and yields every (job, fire instant) due at `now`, earliest first."""
        while True:
            self._drop_stale()
            if not self._heap or self._heap[0][0] > now:
                return
            instant, _, job_id = heapq.heappop(self._heap)
            del self._current[job_id]
            yield job_id, instant

    def _drop_stale(self) -> None:
        heap = self._heap
        while heap and self._current.get(heap[0][2], (None, -1))[1] != heap[0][1]:
            heapq.heappop(heap)

    def _compact(self) -> None:
        self._heap = [(instant, gen, job) for job, (instant, gen) in self._current.items()]
        heapq.heapify(self._heap)


def plan_fire(
    job_id: UUID,
    due: datetime,
    now: datetime,
    window: timedelta,
    fires_between: Callable[[datetime, datetime], Iterator[datetime]],
) -> Fire:
    """What a due fire becomes (SPEC §3.4). On time (or a little late, and the only one due): that fire.
    After downtime: the missed fires inside the catch-up window are coalesced into one `catchup` run,
    recorded at the latest of them; older ones are only counted.

    `fires_between(start, end)` yields the job's fires in (start, end]; `due` itself is the first missed.
    """
    later = list(fires_between(due, now))
    if not later and now - due <= LATE_TOLERANCE:
        return Fire(job_id, due, "schedule")
    missed = [due, *later]
    horizon = now - window
    recent = [instant for instant in missed if instant >= horizon]
    if not recent:  # all too old: nothing runs, but the latest is recorded so the claims move past them
        return Fire(job_id, missed[-1], "missed", missed_fires=len(missed))
    return Fire(job_id, recent[-1], "catchup", missed_fires=len(missed) - len(recent))
