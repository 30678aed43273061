"""The scheduler role (SPEC §3): claims every due fire of every enabled job, exactly once across replicas.

It keeps each enabled job's next fire in a `Timetable` and sleeps until the earliest is due (no
polling). The times come from the jobs read model, which follows the store: a create, edit, disable or
delete reaches the timetable as soon as this process applies the event (a write of this process at once,
another process's within the follower's lag, well under a second), and a claimed fire moves the job's
`nextRunAt` on. A due fire is claimed with `request_run`: the job's aggregate refuses a second claim of the
same instant, so replicas racing for it resolve through optimistic concurrency and exactly one
`RunRequested` (or `FireSkipped`) is stored. The relay turns it into a work item; nothing here publishes.

Replicas share the jobs out (`owns`, from the replicas heard on NATS: `adapters.nats.presence`) so that
they do not all race for every fire: a replica claims its own jobs' fires when due, and another's only
if still unclaimed `OTHERS_GRACE` later (that replica is gone, or the replicas disagree for a moment on
who is alive). That only saves work; exactly-once rests on the claim alone.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from uuid import UUID

from service.domain.cron import parse_cron
from service.domain.schedule import fires_between
from service.domain.timetable import Fire, Timetable, plan_fire
from service.domain.timezones import zone
from service.ports import Clock

log = logging.getLogger("libjobs.scheduler")
MAX_SLEEP_S = 30.0  # re-read the wall clock at least this often (it may have been set)
RETRY_AFTER = timedelta(seconds=1)  # a claim that failed (the store was away) is tried again
# A fire of a job another replica owns is claimed here only if it is still unclaimed this long after it
# was due (its owner is gone, or the replicas briefly disagree on who is alive); SPEC §3.3 wants a fire
# within 1 s on an idle machine.
OTHERS_GRACE = timedelta(seconds=0.5)


@dataclass(frozen=True, slots=True)
class JobTimes:
    """What the scheduler needs of a job: its next fire (None: it does not fire) and its schedule."""

    next_fire: datetime | None
    cron: str
    timezone: str


# Claims a batch of fires; for each, None when another replica had claimed it (or it was refused).
ClaimFires = Callable[[list[Fire]], Awaitable[list[object | None]]]
CLAIM_BATCH = 200  # fires per claim: one store transaction each


class Scheduler:
    def __init__(
        self,
        *,
        claim: ClaimFires,
        clock: Clock,
        catchup_window: timedelta,
        max_claims_in_flight: int = 4,
        on_fire: Callable[[Fire, float], None] | None = None,
        owns: Callable[[UUID], bool] = lambda _: True,
        on_take_over: Callable[[], None] | None = None,
    ) -> None:
        self._claim = claim
        self._owns = owns  # whether this replica claims the job's fires first (the replicas share them out)
        self._on_take_over = on_take_over  # metrics: another replica's fire is claimed here
        self._others: deque[tuple[datetime, Fire]] = deque()  # others' due fires, by when to claim them
        self.claimed = 0  # fires this replica claimed (a `RunRequested` or `FireSkipped` stored)
        self.taken_over = 0  # fires of another replica's jobs this one tried, still unclaimed after the grace
        self._clock = clock
        self._window = catchup_window
        self._slots = asyncio.Semaphore(max_claims_in_flight)
        self._on_fire = on_fire  # (fire, seconds late): metrics and logs
        self._table = Timetable()
        self._schedules: dict[UUID, tuple[str, str]] = {}
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._claims: set[asyncio.Task[None]] = set()
        self._stopping = False

    @property
    def scheduled(self) -> int:
        return len(self._table)

    def load(self, jobs: Iterable[tuple[UUID, JobTimes]]) -> None:
        for job_id, times in jobs:
            self._set(job_id, times)
        self._wake.set()

    def job_changed(self, job_id: UUID, times: JobTimes | None) -> None:
        """On the loop, whenever the read model changes a job (None: deleted)."""
        self._set(job_id, times)
        self._wake.set()

    def _set(self, job_id: UUID, times: JobTimes | None) -> None:
        if times is None or times.next_fire is None:
            self._schedules.pop(job_id, None)
            self._table.set(job_id, None)
            return
        self._schedules[job_id] = (times.cron, times.timezone)
        self._table.set(job_id, times.next_fire)

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="scheduler")

    async def stop(self) -> None:
        self._stopping = True  # ends the loop even if the cancel below were lost
        self._wake.set()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._claims:  # claims already sent to the store finish: they are idempotent anyway
            await asyncio.wait(set(self._claims))

    async def _run(self) -> None:
        while not self._stopping:
            self._wake.clear()
            now = self._clock.now()
            due = []
            for job_id, instant in self._table.take_due(now):
                fire = self._plan(job_id, instant, now)
                if fire is None:
                    continue
                if self._owns(job_id):
                    due.append(fire)
                else:
                    self._others.append((now + OTHERS_GRACE, fire))
            while self._others and self._others[0][0] <= now:
                fire = self._others.popleft()[1]
                if self._unclaimed(fire):
                    due.append(fire)
                    self.taken_over += 1
                    if self._on_take_over is not None:
                        self._on_take_over()
            for start in range(0, len(due), CLAIM_BATCH):
                self._start_claim(due[start : start + CLAIM_BATCH])
            upcoming = min(
                (t for t in (self._table.next_due(), self._others[0][0] if self._others else None) if t),
                default=None,
            )
            delay = MAX_SLEEP_S if upcoming is None else (upcoming - self._clock.now()).total_seconds()
            if delay > 0:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(min(delay, MAX_SLEEP_S)):
                        await self._wake.wait()

    def _plan(self, job_id: UUID, due: datetime, now: datetime) -> Fire | None:
        cron, timezone = self._schedules[job_id]
        try:
            return plan_fire(job_id, due, now, self._window, self._fires_of(cron, timezone))
        except Exception:  # one job's bad data must not stop every other job's fires
            log.exception("cannot plan a fire; skipping it", extra={"job_id": str(job_id)})
            return None

    @staticmethod
    def _fires_of(cron: str, timezone: str) -> Callable[[datetime, datetime], Iterator[datetime]]:
        schedule, tz = parse_cron(cron, min_interval_s=0), zone(timezone)
        return lambda start, end: fires_between(schedule, tz, start, end)

    def _start_claim(self, fires: list[Fire]) -> None:
        task = asyncio.create_task(self._claim_batch(fires), name=f"claim {len(fires)} fires")
        self._claims.add(task)
        task.add_done_callback(self._claims.discard)

    async def _claim_batch(self, fires: list[Fire]) -> None:
        async with self._slots:
            try:
                claimed = await self._claim(fires)
            except Exception:  # the store is away: try again soon (a late retry becomes a catch-up)
                log.exception("claiming fires failed; retrying", extra={"fires": len(fires)})
                for fire in fires:
                    asyncio.get_running_loop().call_later(RETRY_AFTER.total_seconds(), self._retry, fire)
                return
        self.claimed += sum(result is not None for result in claimed)
        if self._on_fire is not None:
            now = self._clock.now()
            for fire, result in zip(fires, claimed, strict=True):
                if result is not None:
                    self._on_fire(fire, (now - fire.instant).total_seconds())

    def _retry(self, fire: Fire) -> None:
        if self._unclaimed(fire):
            self._table.set(fire.job_id, fire.instant)
            self._wake.set()

    def _unclaimed(self, fire: Fire) -> bool:
        """Nothing changed since the fire was taken: an edit, a disable or a replica's claim of it would
        have come with a newer next fire (or none), which wins."""
        return fire.job_id in self._schedules and self._table.get(fire.job_id) is None
