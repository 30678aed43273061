"""The scheduler role against a real store and the real clock (SPEC §3.3, §3.4): fires are claimed once,
never early, follow edits at once, and after downtime become one catch-up run.

Jobs here fire every second or two (6-field crons, `min_interval_s=0`), so each test takes a few seconds.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from uuid import UUID

import nats
import pytest

from contracts.nats import Subjects
from service.adapters.nats.presence import Presence
from service.bootstrap import Service
from service.domain.jobs import LibraryJob, PatchDraft
from service.domain.shares import owner
from service.entrypoints.scheduler import OTHERS_GRACE
from service.settings import Settings
from tests.integration.harness import (
    QUIET_ROLES,
    WITH_SCHEDULER,
    ctx,
    make_settings,
    new_job,
    new_library,
    running,
    stored,
)
from tests.support.nats import NatsServer

pytestmark = pytest.mark.integration

Claim = tuple[str, datetime, datetime]  # (event type, nominal instant, when it was stored)


@pytest.fixture
def settings(tmp_path: Path, database_url: str | None, nats_server: NatsServer) -> Settings:
    return make_settings(
        tmp_path, database_url, nats_urls=(nats_server.url,), min_interval_s=0, roles=WITH_SCHEDULER
    )


def claims(service: Service, job_id: UUID) -> list[Claim]:
    found = []
    for _, event in stored(service):
        if event.originator_id == job_id and isinstance(
            event, LibraryJob.RunRequested | LibraryJob.FireSkipped
        ):
            assert event.scheduled_for is not None
            found.append((type(event).__name__, event.scheduled_for, event.timestamp))
    return found


def every(seconds: int, start: datetime, end: datetime) -> list[datetime]:
    """The instants of `*/seconds * * * * *` in (start, end]."""
    first = start.replace(microsecond=0) + timedelta(seconds=1)
    instants = [first + timedelta(seconds=i) for i in range(int((end - first).total_seconds()) + 1)]
    return [t for t in instants if t.second % seconds == 0 and start < t <= end]


async def test_each_due_fire_is_claimed_once_and_never_early(settings: Settings) -> None:
    async with running(settings) as service:
        library = await new_library(service)
        created = datetime.now(UTC)
        job = await new_job(service, library, cron_schedule="* * * * * *", timezone="UTC", enabled=True)
        await asyncio.sleep(4.5)
        until = datetime.now(UTC)
        await asyncio.sleep(1.5)  # fires due by `until` are claimed by now, even on a busy machine
        found = claims(service, job)
    instants = [instant for _, instant, _ in found]
    assert len(instants) == len(set(instants))  # never twice
    assert set(every(1, created, until)) <= set(instants)  # none missing
    for _, instant, stored_at in found:
        assert stored_at >= instant  # never early
    kinds = [kind for kind, _, _ in found]
    assert kinds[0] == "RunRequested"
    assert set(kinds[1:]) == {"FireSkipped"}  # the first run is still queued: later fires overlap it


def disable(service: Service, library: UUID, job: UUID) -> object:
    return service.commands.update_job(library, job, PatchDraft(enabled=False), ctx())


def move_to_4am(service: Service, library: UUID, job: UUID) -> object:
    return service.commands.update_job(library, job, PatchDraft(cron_schedule="0 0 4 * * *"), ctx())


def delete(service: Service, library: UUID, job: UUID) -> object:
    return service.commands.delete_job(library, job, ctx())


@pytest.mark.parametrize("edit", [disable, move_to_4am, delete])
async def test_an_edit_on_one_replica_stops_the_old_schedule_on_every_replica_within_a_second(
    settings: Settings, edit: Callable[[Service, UUID, UUID], object]
) -> None:
    async with running(settings) as first, running(settings) as second:
        library = await new_library(first)
        job = await new_job(first, library, cron_schedule="* * * * * *", timezone="UTC", enabled=True)
        await asyncio.sleep(2)
        await first.run_sync(edit, first, library, job)
        edited_at = datetime.now(UTC)
        await asyncio.sleep(2.5)
        found = claims(second, job)
    assert found  # it did fire before
    late = [instant for _, instant, _ in found if instant > edited_at + timedelta(seconds=1)]
    assert late == []


async def test_after_downtime_missed_fires_become_one_catch_up_run(
    tmp_path: Path, nats_server: NatsServer
) -> None:
    settings = make_settings(
        tmp_path, None, nats_urls=(nats_server.url,), min_interval_s=0, roles=WITH_SCHEDULER
    )
    quiet = Settings(**{**vars(settings), "roles": QUIET_ROLES})
    async with running(quiet) as service:  # no scheduler: the fires of the next seconds are missed
        library = await new_library(service)
        job = await new_job(service, library, cron_schedule="*/2 * * * * *", timezone="UTC", enabled=True)
        await asyncio.sleep(4.2)
    async with running(settings) as service:
        await asyncio.sleep(0.5)
        found: list[Any] = [
            event
            for _, event in stored(service)
            if event.originator_id == job and isinstance(event, LibraryJob.RunRequested)
        ]
    first = found[0]
    assert first.trigger == "catchup"
    assert first.missed_fires == 0  # all inside the hour-long window: coalesced into this one run
    assert len([e for e in found if e.trigger == "catchup"]) == 1


async def test_fires_older_than_the_catch_up_window_are_counted_not_run(
    tmp_path: Path, nats_server: NatsServer
) -> None:
    settings = make_settings(
        tmp_path,
        None,
        nats_urls=(nats_server.url,),
        min_interval_s=0,
        roles=WITH_SCHEDULER,
        catchup_window_s=2,
    )
    async with running(Settings(**{**vars(settings), "roles": QUIET_ROLES})) as service:
        library = await new_library(service)
        job = await new_job(service, library, cron_schedule="* * * * * *", timezone="UTC", enabled=True)
        await asyncio.sleep(5.2)  # about five fires missed, three of them before the 2 s window
    async with running(settings) as service:
        await asyncio.sleep(0.5)
        catchups = [
            event
            for _, event in stored(service)
            if event.originator_id == job and isinstance(event, LibraryJob.RunRequested)
        ]
    assert [event.trigger for event in catchups][:1] == ["catchup"]
    assert catchups[0].missed_fires >= 2


async def test_stop_right_after_a_job_change_returns(settings: Settings) -> None:
    # A change wakes the scheduler as SIGTERM cancels it: Python 3.11's wait_for could swallow the cancel.
    for _ in range(3):
        async with running(settings) as service:
            library = await new_library(service)
            await new_job(service, library, cron_schedule="0 4 * * *", enabled=True)
            assert service.scheduler is not None
            stopping = asyncio.ensure_future(service.scheduler.stop())
            done, _ = await asyncio.wait({stopping}, timeout=2)
            assert done


async def hearing(service: Service, members: int) -> None:
    """Until the service's scheduler hears `members` replicas (itself included)."""

    async def heard() -> None:
        while service.presence is None or len(service.presence.members) < members:  # noqa: ASYNC110
            await asyncio.sleep(0.05)

    await asyncio.wait_for(heard(), 10)


async def test_replicas_share_the_fires_out_and_each_fire_is_claimed_once(settings: Settings) -> None:
    async with running(settings) as first, running(settings) as second:
        await hearing(first, 2)
        await hearing(second, 2)
        assert first.presence is not None
        assert second.presence is not None
        members = first.presence.members
        assert second.presence.members == members
        library = await new_library(first)
        jobs = await jobs_each_owns(first, library, members, "*/2 * * * * *", at_least=3)
        created = datetime.now(UTC)
        await asyncio.sleep(5)
        until = datetime.now(UTC)
        await asyncio.sleep(1.5)
        found = {job: claims(first, job) for job in jobs}
        claimed = {
            s.presence.member: s.scheduler.claimed for s in (first, second) if s.presence and s.scheduler
        }
        taken_over = [s.scheduler.taken_over for s in (first, second) if s.scheduler is not None]
    for job, job_claims in found.items():
        instants = [instant for _, instant, _ in job_claims]
        assert len(instants) == len(set(instants)), job  # never twice
        assert set(every(2, created, until)) <= set(instants), job  # none missing
    owned = dict.fromkeys(members, 0)
    for job, job_claims in found.items():
        owned[str(owner(job, members))] += len(job_claims)
    assert claimed == owned  # each claimed exactly the fires of the jobs it owns
    assert taken_over == [0, 0]  # neither had to claim a fire of the other's jobs


async def jobs_each_owns(
    svc: Service, library: UUID, members: tuple[str, ...], cron: str, *, at_least: int
) -> list[UUID]:
    """New jobs, until each member owns at least `at_least` of them (their ids are random)."""
    jobs: list[UUID] = []
    while min(Counter(owner(job, members) for job in jobs).get(m, 0) for m in members) < at_least:
        jobs.append(await new_job(svc, library, cron_schedule=cron, timezone="UTC", enabled=True))
    return jobs


async def test_the_jobs_of_a_replica_that_is_heard_but_does_not_claim_fire_after_the_grace(
    settings: Settings, nats_server: NatsServer
) -> None:
    """A replica that announces itself but claims nothing (hung, or killed before it is forgotten): its
    jobs' fires are claimed by the others once the grace is over, each once, none lost."""
    client = await nats.connect(nats_server.url)
    silent = Presence(Subjects(settings.nats_prefix).scheduler_presence)
    await silent.start(client)
    try:
        async with running(settings) as service:
            await hearing(service, 2)
            assert service.presence is not None
            library = await new_library(service)
            members = service.presence.members
            jobs = await jobs_each_owns(service, library, members, "* * * * * *", at_least=2)
            created = datetime.now(UTC)
            await asyncio.sleep(3.5)
            until = datetime.now(UTC)
            await asyncio.sleep(1.5)
            assert service.presence.members == members  # the silent one was heard throughout
            assert service.scheduler is not None
            taken_over = service.scheduler.taken_over
            counted = service.metrics.registry.get_sample_value("libjobs_fires_taken_over_total")
            found = {job: claims(service, job) for job in jobs}
    finally:
        await silent.stop()
        await client.close()
    theirs = [job for job in jobs if owner(job, members) == silent.member]
    for job, job_claims in found.items():
        instants = [instant for _, instant, _ in job_claims]
        assert len(instants) == len(set(instants)), job
        assert set(every(1, created, until)) <= set(instants), job
        if job in theirs:  # claimed here, after the grace
            late = [stored_at - instant for _, instant, stored_at in job_claims]
            assert all(lateness >= OTHERS_GRACE for lateness in late), late
    assert taken_over >= len(theirs) * 3
    assert counted == taken_over  # what operators alert on
