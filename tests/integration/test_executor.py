"""The refresh executor end to end (SPEC §4, §2.7): real stores, a real nats-server, and the fixture plugin
as a real process. Runs are requested with run-now and travel as the scheduler's would: store → relay →
`LIBJOBS_RUNS` → the executor's durable consumer → plugin → catalog, run events and `metadata.refreshed`."""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from uuid import UUID, uuid4

import msgspec
import nats
import pytest
from nats.aio.client import Client

from contracts.jobs import LibraryJobDto
from contracts.nats import MetadataRefreshed, Subjects
from service.bootstrap import Service
from service.domain.catalog import Series
from service.domain.jobs import ConfigDraft, CreateDraft, LibraryJob, PatchDraft
from service.settings import PluginSpec, Settings
from tests.integration.harness import (
    book_state,
    ctx,
    eventually,
    make_settings,
    running,
    series_state,
    stored,
    write,
)
from tests.support.nats import NatsServer

pytestmark = pytest.mark.integration

PLUGIN = "fixture"
PROVIDER = f"plugin:{PLUGIN}"
EXECUTING = frozenset({"api", "projector", "executor"})
RUN_TIMEOUT_S = 30


class Fixture:
    """The fixture plugin's data file and its stats, for one test."""

    def __init__(self, tmp_path: Path) -> None:
        self.data_path = tmp_path / "fixture.json"
        self.stats_path = tmp_path / "fixture-stats.json"
        self.write({})

    def write(self, data: dict[str, Any]) -> None:
        self.data_path.write_text(json.dumps(data))

    def spec(
        self, *, permissions: tuple[str, ...] = ("metadata:write:*",), enabled: bool = True
    ) -> PluginSpec:
        return PluginSpec(
            name=PLUGIN,
            command=(sys.executable, "-m", "service.adapters.plugins.fixture", "--data", str(self.data_path)),
            enabled=enabled,
            permissions=permissions,
            env={"LIBJOBS_FIXTURE_STATS": str(self.stats_path)},
        )

    def stats(self) -> dict[str, Any]:
        return json.loads(self.stats_path.read_text()) if self.stats_path.exists() else {}


@pytest.fixture
def fixture(tmp_path: Path) -> Fixture:
    return Fixture(tmp_path)


def executor_settings(
    tmp_path: Path, database_url: str | None, nats_server: NatsServer, *plugins: PluginSpec, **overrides: Any
) -> Settings:
    return make_settings(
        tmp_path,
        database_url,
        roles=EXECUTING,
        nats_urls=(nats_server.url,),
        **{"plugins": plugins, "run_ack_wait_s": 5.0, "provider_timeout_s": 5.0, **overrides},
    )


@pytest.fixture
async def client(nats_server: NatsServer) -> AsyncIterator[Client]:
    nc = await nats.connect(nats_server.url, max_reconnect_attempts=-1, reconnect_time_wait=0.2)
    yield nc
    await nc.close()


async def library_with(svc: Service, *series: tuple[UUID, dict[str, Any]]) -> UUID:
    library_id = uuid4()
    await write(svc, svc.commands.upsert_library, library_id, "Manga", ctx())
    for series_id, state in series:
        await write(svc, svc.commands.upsert_series, library_id, series_id, state, ctx())
    return library_id


def external(external_id: str, synced: datetime | None = None) -> list[dict[str, Any]]:
    ref = {"source": PROVIDER, "externalId": external_id}
    if synced is not None:
        ref["lastSyncedAt"] = synced.isoformat().replace("+00:00", "Z")
    return [ref]


async def job_with(svc: Service, library_id: UUID, **config: Any) -> UUID:
    draft = ConfigDraft(provider=PROVIDER, **config)
    job = await write(
        svc,
        svc.commands.create_job,
        library_id,
        CreateDraft(name="Refresh", cron_schedule="0 0 29 2 *", config=draft, enabled=True),
        ctx(),
    )
    return job.id


async def run_now(svc: Service, library_id: UUID, job_id: UUID) -> UUID:
    saved, run_id = await svc.run_sync(svc.commands.run_now, library_id, job_id, ctx())
    await svc.follower.wait_for(saved.position)
    return run_id


def job_dto(svc: Service, library_id: UUID, job_id: UUID) -> LibraryJobDto:
    found = svc.models.job_json(library_id, job_id)
    assert found is not None
    return msgspec.json.decode(found[0], type=LibraryJobDto)


async def finished(svc: Service, job_id: UUID, run_id: UUID, timeout_s: float = RUN_TIMEOUT_S) -> Any:
    """Waits for the run's `RunFinished` in the store and returns it."""

    def outcome() -> Any:
        return next(
            (
                e
                for _, e in stored(svc)
                if isinstance(e, LibraryJob.RunFinished) and e.originator_id == job_id and e.run_id == run_id
            ),
            None,
        )

    await eventually(lambda: outcome() is not None, timeout_s, every_s=0.05)
    await svc.follower.catch_up()
    return outcome()


def series_json(svc: Service, library_id: UUID, series_id: UUID) -> dict[str, Any]:
    found = svc.models.series_json(library_id, series_id)
    assert found is not None
    return msgspec.json.decode(found)  # type: ignore[no-any-return]


# --- the field rules and the skips, on both stores ---------------------------------------------------------


async def test_a_run_writes_what_the_rules_allow_and_counts_every_skip(
    tmp_path: Path, database_url: str | None, nats_server: NatsServer, fixture: Fixture, client: Client
) -> None:
    fixture.write(
        {
            "series": {
                "s-1": {"title": "One", "metadata": {"rating": 8.5, "status": "ended", "year": 1997,
                                                     "totalVolumeCount": 100, "summary": "not selected"}},
                "s-4": {"title": "Four", "metadata": {"rating": 1}},
                "s-6": {"title": "Six", "metadata": {"rating": 7}},
            },
            "failIds": ["s-5"],
        }
    )  # fmt: skip
    spec = fixture.spec(permissions=("metadata:write:ratings", "metadata:write:status"))
    settings = executor_settings(tmp_path, database_url, nats_server, spec)
    now = datetime.now(UTC)
    one, none, recent, locked, failing, same = (uuid4() for _ in range(6))
    all_default_fields = [
        "rating",
        "externalRatings",
        "status",
        "year",
        "totalVolumeCount",
        "totalChapterCount",
    ]
    refreshed: list[MetadataRefreshed] = []

    async def collect(msg: Any) -> None:
        refreshed.append(msgspec.json.decode(msg.data, type=MetadataRefreshed))

    await client.subscribe(Subjects().metadata_refreshed("*"), cb=collect)
    async with running(settings) as svc:
        library_id = await library_with(
            svc,
            (one, series_state("A One", metadata={"rating": 5, "status": "ongoing"}, locks=["status"],
                               external_ids=external("s-1"))),
            (none, series_state("B None")),
            (recent, series_state("C Recent", external_ids=external("s-3", now - timedelta(minutes=10)))),
            (locked, series_state("D Locked", locks=all_default_fields, external_ids=external("s-4"))),
            (failing, series_state("E Failing", external_ids=external("s-5"))),
            (same, series_state("F Same", metadata={"rating": 7}, external_ids=external("s-6"))),
        )  # fmt: skip
        job_id = await job_with(svc, library_id)
        before = svc.reader.max_position()
        run_id = await run_now(svc, library_id, job_id)
        result = await finished(svc, job_id, run_id)

        assert result.status == "partial"
        assert result.message == "Refreshed 2 of 3 series (2 succeeded, 1 failed, 3 skipped)"
        assert result.counts == {"planned": 3, "done": 3, "succeeded": 2, "failed": 1, "skipped": 3}
        progress = [
            e
            for _, e in stored(svc, before)
            if isinstance(e, LibraryJob.RunProgressed) and e.run_id == run_id
        ]
        assert progress[-1].skipped == {
            "no_external_id": 1,
            "recently_synced": 1,
            "no_match": 0,
            "locked_only": 1,
        }
        assert progress[-1].fields_changed == 2  # rating and year of "A One"

        # the catalog: selected, present, unlocked, permitted, changed fields only
        series = series_json(svc, library_id, one)
        assert series["metadata"] == {"rating": 8.5, "status": "ongoing", "year": 1997}
        synced = series["externalIds"][0]["lastSyncedAt"]
        assert synced is not None
        assert datetime.fromisoformat(synced) >= now
        assert series_json(svc, library_id, same)["externalIds"][0]["lastSyncedAt"] is not None
        assert series_json(svc, library_id, none)["externalIds"] == []
        assert series_json(svc, library_id, failing)["externalIds"][0].get("lastSyncedAt") is None

        # the DTO tells of the last run
        dto = job_dto(svc, library_id, job_id)
        assert (dto.last_run_status, dto.last_run_message, dto.current_run_id) == (
            "partial", result.message, None,
        )  # fmt: skip

        # one metadata.refreshed for the item that changed, with before/after and the fields not written
        await eventually(lambda: len(refreshed) >= 1, 10, every_s=0.05)
        await asyncio.sleep(0.3)
        assert [(m.item_id, m.run_id, m.external_id) for m in refreshed] == [(one, run_id, "s-1")]
        message = refreshed[0]
        assert {k: (c.before, c.after) for k, c in message.changes.items()} == {
            "rating": (5, 8.5),
            "year": (None, 1997),
        }
        assert {(s.field, s.reason) for s in message.skipped} == {
            ("status", "locked"),
            ("totalVolumeCount", "not_permitted"),
        }
        assert message.library_id == library_id
        assert message.item_type == "series"


async def test_a_library_with_nothing_to_refresh_succeeds_saying_so(
    tmp_path: Path, nats_server: NatsServer, fixture: Fixture
) -> None:
    settings = executor_settings(tmp_path, None, nats_server, fixture.spec())
    async with running(settings) as svc:
        library_id = await library_with(svc, (uuid4(), series_state("No id")))
        job_id = await job_with(svc, library_id)
        result = await finished(svc, job_id, await run_now(svc, library_id, job_id))
        assert (result.status, result.message) == ("success", "Nothing to refresh (1 skipped)")


async def test_unmatched_series_are_matched_first_when_ids_are_not_required(
    tmp_path: Path, nats_server: NatsServer, fixture: Fixture
) -> None:
    fixture.write({"series": {"op": {"title": "One Piece", "metadata": {"rating": 9}}}})
    settings = executor_settings(tmp_path, None, nats_server, fixture.spec())
    found, lost = uuid4(), uuid4()
    async with running(settings) as svc:
        library_id = await library_with(
            svc, (found, series_state("One Piece")), (lost, series_state("Nowhere To Be Found"))
        )
        job_id = await job_with(svc, library_id, existing_source_ids_only=False)
        result = await finished(svc, job_id, await run_now(svc, library_id, job_id))
        assert result.message == "Refreshed 1 of 1 series (1 succeeded, 0 failed, 1 skipped)"
        matched = series_json(svc, library_id, found)
        assert matched["metadata"] == {"rating": 9}
        assert [ref["externalId"] for ref in matched["externalIds"]] == ["op"]


async def test_provider_calls_in_flight_never_exceed_max_concurrency(
    tmp_path: Path, nats_server: NatsServer, fixture: Fixture
) -> None:
    count = 24
    fixture.write(
        {
            "series": {f"s-{i}": {"title": f"T{i}", "metadata": {"rating": i}} for i in range(count)},
            "delayMs": 60,
        }
    )
    settings = executor_settings(tmp_path, None, nats_server, fixture.spec())
    async with running(settings) as svc:
        series = [(uuid4(), series_state(f"T{i:02}", external_ids=external(f"s-{i}"))) for i in range(count)]
        library_id = await library_with(svc, *series)
        job_id = await job_with(svc, library_id, max_concurrency=3)
        result = await finished(svc, job_id, await run_now(svc, library_id, job_id))
        assert result.status == "success"
        assert result.counts["succeeded"] == count
        assert fixture.stats()["maxInFlight"] == 3  # bounded, and really used


async def test_a_missing_or_disabled_plugin_fails_the_run_without_calling_it(
    tmp_path: Path, nats_server: NatsServer, fixture: Fixture
) -> None:
    first = executor_settings(tmp_path, None, nats_server, fixture.spec(enabled=False))
    async with running(first) as svc:
        library_id = await library_with(svc, (uuid4(), series_state("A", external_ids=external("s-1"))))
        job_id = await job_with(svc, library_id)
        result = await finished(svc, job_id, await run_now(svc, library_id, job_id))
        assert (result.status, result.message) == (
            "failure", f"Refresh aborted: plugin_disabled (provider={PROVIDER})",
        )  # fmt: skip
    gone = executor_settings(tmp_path, None, nats_server)  # the same data, the plugin no longer configured
    async with running(gone) as svc:
        result = await finished(svc, job_id, await run_now(svc, library_id, job_id))
        assert (result.status, result.message) == (
            "failure", f"Refresh aborted: plugin_missing (provider={PROVIDER})",
        )  # fmt: skip
    assert fixture.stats() == {}  # never started


@pytest.mark.parametrize("how", ["disable", "delete"])
async def test_disabling_or_deleting_the_job_cancels_its_run_between_items(
    tmp_path: Path, nats_server: NatsServer, fixture: Fixture, how: str
) -> None:
    count = 40
    fixture.write({"series": {f"s-{i}": {"title": "T", "metadata": {"rating": i}} for i in range(count)},
                   "delayMs": 50})  # fmt: skip
    settings = executor_settings(tmp_path, None, nats_server, fixture.spec())
    async with running(settings) as svc:
        library_id = await library_with(
            svc, *[(uuid4(), series_state(f"T{i:02}", external_ids=external(f"s-{i}"))) for i in range(count)]
        )
        job_id = await job_with(svc, library_id, max_concurrency=1)
        run_id = await run_now(svc, library_id, job_id)
        await eventually(lambda: fixture.stats().get("calls", 0) >= 3, 20, every_s=0.02)
        if how == "disable":
            await write(svc, svc.commands.update_job, library_id, job_id, PatchDraft(enabled=False), ctx())
        else:
            await write(svc, svc.commands.delete_job, library_id, job_id, ctx())
        result = await finished(svc, job_id, run_id)
        assert (result.status, result.message) == ("cancelled", f"Cancelled: the job was {how}d")
        assert result.counts["done"] < count
        refreshed = [e for _, e in stored(svc) if isinstance(e, Series.Refreshed)]
        assert 0 < len(refreshed) == result.counts["succeeded"]  # what it did before, it keeps
        if how == "disable":
            dto = job_dto(svc, library_id, job_id)
            assert (dto.current_run_id, dto.last_run_status) == (None, None)  # a cancelled run is no last run


async def test_every_item_failing_is_a_failure(
    tmp_path: Path, nats_server: NatsServer, fixture: Fixture
) -> None:
    fixture.write({"series": {}, "failIds": ["a", "b"]})
    settings = executor_settings(tmp_path, None, nats_server, fixture.spec())
    async with running(settings) as svc:
        library_id = await library_with(
            svc, *[(uuid4(), series_state(i, external_ids=external(i))) for i in ("a", "b")]
        )
        job_id = await job_with(svc, library_id)
        result = await finished(svc, job_id, await run_now(svc, library_id, job_id))
        assert (result.status, result.message) == (
            "failure", "Refreshed 0 of 2 series (0 succeeded, 2 failed, 0 skipped)",
        )  # fmt: skip


async def test_a_run_started_max_attempts_times_is_recorded_as_a_failure(
    tmp_path: Path, database_url: str | None
) -> None:
    # Each start is a delivery of the work item that an executor took and never finished (it crashed).
    never_started = PluginSpec(name=PLUGIN, command=("false",), capabilities=("series",))
    settings = make_settings(tmp_path, database_url, plugins=(never_started,))
    async with running(settings) as svc:
        library_id = await library_with(svc)
        job_id = await job_with(svc, library_id)
        run_id = await run_now(svc, library_id, job_id)
        executor = ctx(actor="executor")
        starts = [await svc.run_sync(lambda: svc.commands.start_run(job_id, run_id, executor, max_attempts=3))
                  for _ in range(4)]  # fmt: skip
        assert [getattr(s, "attempt", s) for s in starts] == [1, 2, 3, "failure"]
        again = await svc.run_sync(lambda: svc.commands.start_run(job_id, run_id, executor, max_attempts=3))
        assert again == "failure"  # recorded once: a later delivery finds it finished
        outcomes = [e for _, e in stored(svc) if isinstance(e, LibraryJob.RunFinished)]
        assert [(e.run_id, e.status) for e in outcomes] == [(run_id, "failure")]
        assert outcomes[0].message.startswith("Gave up after 3 attempts")
        await svc.follower.catch_up()
        assert job_dto(svc, library_id, job_id).current_run_id is None


async def test_a_dry_run_shows_what_the_run_then_does_and_writes_nothing(
    tmp_path: Path, database_url: str | None, nats_server: NatsServer, fixture: Fixture
) -> None:
    fixture.write({"series": {"s-1": {"title": "One", "metadata": {"rating": 9, "year": 2001, "status": "x"}},
                              "s-2": {"title": "Two", "metadata": {"rating": 3}}}})  # fmt: skip
    spec = fixture.spec(permissions=("metadata:write:ratings",))
    settings = executor_settings(tmp_path, database_url, nats_server, spec)
    one, two = uuid4(), uuid4()
    async with running(settings) as svc:
        library_id = await library_with(
            svc,
            (
                one,
                series_state("One", metadata={"rating": 1}, locks=["status"], external_ids=external("s-1")),
            ),
            (two, series_state("Two", metadata={"rating": 3}, external_ids=external("s-2"))),
            (uuid4(), series_state("Three")),
        )
        job_id = await job_with(svc, library_id)
        position = svc.reader.max_position()
        preview = await svc.refresher.dry_run(library_id, job_id, None, 5)
        assert svc.reader.max_position() == position  # nothing written
        assert (preview.total_eligible, preview.est_skipped_no_id, preview.est_skipped_recently_synced) == (
            2,
            1,
            0,
        )
        assert preview.plan_failure is None
        sample = {item.series_id: item for item in preview.sample}
        assert {k: (c.before, c.after) for k, c in sample[one].changes.items()} == {"rating": (1, 9)}
        assert {(s.field, s.reason) for s in sample[one].skipped} == {
            ("status", "locked"),
            ("year", "not_permitted"),
        }
        assert sample[two].changes == {}
        assert [(s.field, s.reason) for s in sample[two].skipped] == [("rating", "unchanged")]

        run_id = await run_now(svc, library_id, job_id)
        await finished(svc, job_id, run_id)
        # the run wrote exactly what the preview showed, item by item
        done = {svc.models.catalog._known[e.originator_id][0]: e for _, e in stored(svc, position)
                if isinstance(e, Series.Refreshed)}  # fmt: skip
        assert set(done) == {one, two}
        for series_id, item in sample.items():
            assert done[series_id].changes == {
                k: {"before": c.before, "after": c.after} for k, c in item.changes.items()
            }
            assert done[series_id].skipped == [{"field": s.field, "reason": s.reason} for s in item.skipped]

        # with an override: other groups, and no skipping of what the run just synced
        override = ConfigDraft(provider=PROVIDER, field_groups=["status"], skip_recently_synced_within_s=0)
        other = PatchDraft(config=override)
        preview = await svc.refresher.dry_run(library_id, job_id, other, 1)
        assert len(preview.sample) == 1
        assert preview.sample[0].series_name == "One"
        assert [(s.field, s.reason) for s in preview.sample[0].skipped] == [
            ("status", "locked"),
            ("year", "not_permitted"),
        ]


async def test_a_dry_run_with_a_plugin_that_cannot_start_reports_a_plan_failure(
    tmp_path: Path, nats_server: NatsServer, fixture: Fixture
) -> None:
    broken = PluginSpec(name=PLUGIN, command=(sys.executable, "-c", "raise SystemExit(4)"),
                        permissions=("metadata:write:*",), capabilities=("series",))  # fmt: skip
    settings = executor_settings(tmp_path, None, nats_server, broken)
    async with running(settings) as svc:
        library_id = await library_with(svc, (uuid4(), series_state("A", external_ids=external("s-1"))))
        job_id = await job_with(svc, library_id)
        preview = await svc.refresher.dry_run(library_id, job_id, None, 5)
        assert preview.total_eligible == 1
        assert preview.sample == []
        assert preview.plan_failure is not None
        assert preview.plan_failure.startswith(f"plugin_unavailable: plugin {PLUGIN!r} failed to initialize")
        result = await finished(svc, job_id, await run_now(svc, library_id, job_id))
        assert result.status == "failure"
        assert result.message.startswith(f"Refresh aborted: plugin_unavailable (plugin {PLUGIN!r} failed")


async def test_a_plugin_that_hangs_crashes_or_answers_garbage_fails_those_items_only(
    tmp_path: Path, nats_server: NatsServer, fixture: Fixture
) -> None:
    ids = ["ok-1", "hang", "crash", "garbage", "limited", "ok-2"]
    fixture.write(
        {
            "series": {i: {"title": i, "metadata": {"rating": 5}} for i in ids},
            "hangIds": ["hang"],
            "crashIds": ["crash"],
            "garbageIds": ["garbage"],
            "rateLimitIds": {"limited": {"times": 2, "retryAfterSeconds": 0.2}},
        }
    )
    settings = executor_settings(tmp_path, None, nats_server, fixture.spec(), provider_timeout_s=1.0)
    async with running(settings) as svc:
        series = {i: uuid4() for i in ids}
        library_id = await library_with(
            svc, *[(series[i], series_state(f"{n} {i}", external_ids=external(i))) for n, i in enumerate(ids)]
        )
        job_id = await job_with(svc, library_id, max_concurrency=1)
        result = await finished(svc, job_id, await run_now(svc, library_id, job_id))
        assert result.status == "partial"
        assert result.counts == {"planned": 6, "done": 6, "succeeded": 3, "failed": 3, "skipped": 0}
        # "limited" was refused twice (retryAfterSeconds), then answered; after the crash the host started
        # the plugin again for "garbage" and what followed
        for name in ("ok-1", "limited", "ok-2"):
            assert series_json(svc, library_id, series[name])["metadata"] == {"rating": 5}, name
        for name in ("hang", "crash", "garbage"):
            assert series_json(svc, library_id, series[name])["metadata"] == {}, name


async def test_a_books_scope_refreshes_books_with_their_own_fields(
    tmp_path: Path, nats_server: NatsServer, fixture: Fixture
) -> None:
    fixture.write({"books": {"b-1": {"title": "Vol 1", "metadata": {"pageCount": 200, "isbns": ["978"],
                                                                     "rating": 3}}}})  # fmt: skip
    settings = executor_settings(tmp_path, None, nats_server, fixture.spec())
    async with running(settings) as svc:
        library_id = await library_with(
            svc, (series_id := uuid4(), series_state("S", external_ids=external("s")))
        )
        book_id = uuid4()
        body = book_state(series_id, "Vol 1", external_ids=external("b-1"))
        await write(svc, svc.commands.upsert_book, library_id, book_id, body, ctx())
        job_id = await job_with(
            svc, library_id, scope="books_only", field_groups=[], book_field_groups=["book_extra"]
        )
        result = await finished(svc, job_id, await run_now(svc, library_id, job_id))
        assert result.message == "Refreshed 1 of 1 book (1 succeeded, 0 failed, 0 skipped)"
        book = msgspec.json.decode(svc.models.book_json(library_id, book_id) or b"null")
        assert book["metadata"] == {"pageCount": 200, "isbns": ["978"]}  # rating is not a book_extra field


async def test_a_stopping_executor_hands_its_run_back_and_the_next_one_finishes_it(
    tmp_path: Path, nats_server: NatsServer, fixture: Fixture
) -> None:
    count = 30
    fixture.write({"series": {f"s-{i}": {"title": "T", "metadata": {"rating": i}} for i in range(count)},
                   "delayMs": 100})  # fmt: skip
    settings = executor_settings(tmp_path, None, nats_server, fixture.spec(), drain_grace_s=0.2)
    async with running(settings) as svc:
        library_id = await library_with(
            svc, *[(uuid4(), series_state(f"T{i:02}", external_ids=external(f"s-{i}"))) for i in range(count)]
        )
        job_id = await job_with(svc, library_id, max_concurrency=1)
        run_id = await run_now(svc, library_id, job_id)
        await eventually(lambda: fixture.stats().get("calls", 0) >= 5, 20, every_s=0.02)
    # stopped (as on SIGTERM): the run is not finished, what it did is stored, the work item is back
    async with running(settings) as svc:
        result = await finished(svc, job_id, run_id)
        events = stored(svc)
    assert result.status == "success"
    assert result.counts == {"planned": count, "done": count, "succeeded": count, "failed": 0, "skipped": 0}
    starts = [e.attempt for _, e in events if isinstance(e, LibraryJob.RunStarted) and e.run_id == run_id]
    assert starts == [1, 2]
    refreshed = [e.originator_id for _, e in events if isinstance(e, Series.Refreshed)]
    assert len(refreshed) == len(set(refreshed)) == count  # none twice, none lost
