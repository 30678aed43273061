"""The ONE composition root: Settings → wired objects. Nothing connects at import time."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import gc
import logging
import os
import secrets
import sys
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from functools import partial
from typing import Any, TypeVar
from uuid import UUID

from litestar import Litestar
from litestar.types import ASGIApp
from nats.aio.client import Client as NatsClient
from nats.js import JetStreamContext

from contracts.nats import Subjects
from projections.jobs import JobRow
from projections.readmodels import JobChange, ReadModels
from projections.rebuild import PROJECTIONS, Projections
from projections.sqlview import RELAY_NAME, VIEWS_NAME, PostgresViewStore, RebuildBusy, SqliteViewStore
from service.adapters.audit import StoreAuditLog
from service.adapters.batching import Batcher
from service.adapters.follower import Follower
from service.adapters.group_commit import GroupCommitter
from service.adapters.idempotency import PostgresIdempotencyStore, SqliteIdempotencyStore
from service.adapters.live import LiveEvents
from service.adapters.logs import AccessLog, configure_logging
from service.adapters.metrics import Metrics
from service.adapters.nats.client import NatsLink, NatsOptions
from service.adapters.nats.embedded import DataDirNats
from service.adapters.nats.presence import Presence
from service.adapters.nats.relay import Relay
from service.adapters.nats.streams import StreamSettings, ensure_streams
from service.adapters.plugins.directory import PluginDirectory
from service.adapters.plugins.host import PluginHost
from service.adapters.store import (
    PostgresListener,
    PostgresTarget,
    SqliteChangeProbe,
    StoreReader,
    setup_lock,
    sqlite_events_file,
    store_env,
)
from service.application import JobRequest, LibraryJobs, Saved
from service.domain.jobs import CreateDraft, ValidationPolicy
from service.domain.refresh import CatalogEntry, ItemKind
from service.domain.timetable import Fire
from service.entrypoints import cli, projections_cli
from service.entrypoints.asyncapi import asyncapi_yaml
from service.entrypoints.events_cli import print_events
from service.entrypoints.executor import RefreshExecutor, RunConsumer
from service.entrypoints.http.app import create_app, with_request_context
from service.entrypoints.http.auth import Authenticator, sha256_hex
from service.entrypoints.http.common import HttpServices
from service.entrypoints.nats.commands import (
    CommandResponder,
    CommandSubscription,
    NatsServices,
    serve_commands,
)
from service.entrypoints.scheduler import JobTimes, Scheduler
from service.entrypoints.serve import run_server
from service.ports import AuditFilter, Clock, CommandContext, IdempotencyStore, LibraryContents, SystemClock
from service.settings import ApiKeySpec, Settings, SettingsError, load_settings

T = TypeVar("T")
log = logging.getLogger("libjobs")
ADMIN_KEY_FILE = "admin-api-key"
READY_MAX_LAG = 1000
CATCH_UP_BATCH = 1000


class Service:
    """One process of libjobs: the store, read models, plugin host and HTTP app, wired from settings."""

    def __init__(self, settings: Settings, *, clock: Clock | None = None) -> None:
        self.settings = settings
        self.metrics = Metrics()
        self.access_log = AccessLog(settings.log_json)
        self.executor = ThreadPoolExecutor(max_workers=settings.store_pool_size, thread_name_prefix="store")
        self.clock: Clock = clock or SystemClock()
        self.live = LiveEvents()
        self.models = ReadModels(
            default_timezone=settings.default_timezone,
            on_change=self._job_changed,
            on_run_change=self.live.run_changed,
        )
        self.subjects = Subjects(settings.nats_prefix)
        self.presence = Presence(self.subjects.scheduler_presence) if "scheduler" in settings.roles else None
        self.scheduler = (
            Scheduler(
                claim=self._claim_fires,
                clock=self.clock,
                catchup_window=timedelta(seconds=settings.catchup_window_s),
                on_fire=self.metrics.observe_fire,
                owns=self.presence.owns,
                on_take_over=self.metrics.fires_taken_over.inc,
            )
            if self.presence is not None
            else None
        )
        self.plugin_host = PluginHost(
            settings.plugins,
            call_timeout_s=settings.provider_timeout_s,
            start_timeout_s=settings.plugin_start_timeout_s,
            idle_timeout_s=settings.plugin_idle_timeout_s,
        )
        self._loop: asyncio.AbstractEventLoop | None = None
        self.plugins = PluginDirectory(
            self.plugin_host, self._bound_loop, settings.plugin_start_timeout_s + 5
        )
        with setup_lock(settings.database_url):  # replicas starting together take turns creating tables
            env = store_env(
                data_dir=settings.data_dir,
                database_url=settings.database_url,
                pool_size=settings.store_pool_size,
                lock_timeout_s=settings.lock_timeout_s,
            )
            self.commands = LibraryJobs(
                env,
                providers=self.plugins.provider_info,
                library_contents=self._library_contents,
                library_known=self.models.library_exists,
                on_saved=lambda saved: self.follower.offer(saved),
                # The store has one writer at a time: concurrent commands commit together (group commit).
                wrap_save=lambda save: GroupCommitter(save).save,
                policy=ValidationPolicy(min_interval_s=settings.min_interval_s),
                clock=self.clock,
            )
            self.idempotency = self._idempotency_store()
            self.views = self._view_store(VIEWS_NAME)
            self.relay_tracking = self._view_store(RELAY_NAME)
        # Creates made at the same time go to the pool together (see service/adapters/batching.py).
        self.job_creates = Batcher(self.commands.create_jobs, self.run_sync)
        self.reader = StoreReader(self.commands)
        self.follower = Follower(
            self.reader.read,
            self.models.apply,
            self.models.position,
            self.executor,
            batch_size=CATCH_UP_BATCH,
            poll_interval_s=0.02 if settings.database_url is None else 1.0,
            on_advance=self._advanced,
            on_applied=lambda after, batch: self.relay.feed(after, batch),  # the relay need not read back
            maybe_changed=(
                None if settings.database_url else SqliteChangeProbe(sqlite_events_file(settings.data_dir))
            ),
        )
        self.refresher = RefreshExecutor(
            commands=self.commands,
            run_sync=self.run_sync,
            catch_up=self.follower.catch_up,
            catalog=self._catalog_entries,
            job_enabled=self._job_enabled,
            providers=self.plugins,
            clock=self.clock,
            max_attempts=settings.run_max_attempts,
            on_run_ended=self.metrics.observe_run,
        )
        self.run_consumer = (
            RunConsumer(
                self.refresher,
                max_runs=settings.executor_runs,
                ack_wait_s=settings.run_ack_wait_s,
                handback_grace_s=settings.drain_grace_s,
            )
            if "executor" in settings.roles
            else None
        )
        self.stream_settings = stream_settings(settings)
        self.embedded_nats = None if settings.nats_urls else DataDirNats(settings.data_dir)
        self.nats: NatsLink | None = None
        self.command_subscription: CommandSubscription | None = None
        self.relay = Relay(
            read=self.reader.read,
            first_event=self.reader.first_event,
            tracking=self.relay_tracking,
            subjects=self.subjects,
            run_sync=self.run_sync,
            repair=self._ensure_streams,
            on_published=lambda _, count: self.metrics.relay_published.inc(count),
        )
        self.metrics.track_messaging(
            nats_connected=lambda: self.nats is not None and self.nats.connected,
            relay_lag=lambda: (
                max(0, self.reader.max_position() - self.relay.position) if self.relay.leading else 0
            ),
            live_subscribers=lambda: self.live.subscribers,
            live_dropped=lambda: self.live.dropped,
        )
        self.metrics.track_lag(self.reader.max_position, lambda: self.follower.position)
        self._leading = False
        self._persister: asyncio.Task[None] | None = None
        self._settler: asyncio.Task[None] | None = None
        self._listener: PostgresListener | None = None
        if settings.database_url is not None:
            channel = self.commands.recorder.channel_name  # type: ignore[attr-defined]
            target = PostgresTarget.from_url(settings.database_url)
            self._listener = PostgresListener(target, channel, self.follower.wake_threadsafe)

    # --- wiring helpers -----------------------------------------------------------------------------

    def _bound_loop(self) -> asyncio.AbstractEventLoop:
        assert self._loop is not None, "the service has not been started"
        return self._loop

    def _idempotency_store(self) -> IdempotencyStore:
        if self.settings.database_url is None:
            return SqliteIdempotencyStore(self.settings.data_dir / "state.sqlite3")
        return PostgresIdempotencyStore(PostgresTarget.from_url(self.settings.database_url))

    def _view_store(self, name: str) -> SqliteViewStore | PostgresViewStore:
        return view_store(self.settings, name)

    def _job_changed(self, change: JobChange) -> None:
        """On the loop, for every job change the read models apply."""
        self.live.job_changed(change)
        if self.scheduler is not None:
            row = self.models.jobs.rows.get(change.job_id)
            self.scheduler.job_changed(change.job_id, None if row is None else self._job_times(row))

    def _catalog_entries(self, library_id: UUID, kind: ItemKind) -> list[CatalogEntry]:
        index = self.models.catalog.books if kind == "book" else self.models.catalog.series
        return index.entries(library_id)

    def _job_enabled(self, job_id: UUID) -> bool | None:
        row = self.models.jobs.rows.get(job_id)
        return None if row is None else row.enabled

    def _job_times(self, row: JobRow) -> JobTimes:
        definition = row.definition
        timezone = definition.timezone or self.settings.default_timezone
        return JobTimes(row.next_run_at, definition.cron_schedule, timezone)

    async def _claim_fires(self, fires: list[Fire]) -> list[object | None]:
        claim = partial(self.commands.request_runs, fires, CommandContext(actor="scheduler"))
        return list(await self.run_sync(claim))

    def _advanced(self, position: int) -> None:
        """On the loop, whenever the read models advance: new events are stored."""
        self.relay.wake()

    async def _ensure_streams(self, js: JetStreamContext) -> None:
        await ensure_streams(js, self.subjects, self.stream_settings)

    async def _on_nats_connected(self, client: NatsClient, js: JetStreamContext) -> None:
        """After each first connection (nats-py restores subscriptions after reconnects itself)."""
        await self._ensure_streams(js)
        if "projector" in self.settings.roles:
            self.relay.start(js)
        if self.run_consumer is not None:
            self.run_consumer.start(js)
        if self.presence is not None:
            await self.presence.start(client)
        if "api" in self.settings.roles and self.command_subscription is None:  # this step may be retried
            self.command_subscription = await serve_commands(client, self._command_responder())

    def _command_responder(self) -> CommandResponder:
        services = NatsServices(
            commands=self.commands,
            queries=self.models,
            wait_for=self.follower.wait_for,
            run_sync=self.run_sync,
            create_job=self.create_job,
            idempotency=self.idempotency,
            max_payload_bytes=self.settings.max_body_bytes,
            dry_run=self.refresher.dry_run,
        )
        return CommandResponder(services, self.subjects)

    def nats_options(self, urls: Sequence[str]) -> NatsOptions:
        s = self.settings
        return NatsOptions(
            urls=urls,
            name=f"libjobs {','.join(sorted(s.roles))}",
            creds=s.nats_creds,
            tls_ca=s.nats_tls_ca,
            tls_cert=s.nats_tls_cert,
            tls_key=s.nats_tls_key,
        )

    async def _start_nats(self) -> None:
        urls: Sequence[str] = self.settings.nats_urls
        if self.embedded_nats is not None:
            urls = [await self.embedded_nats.start()]
        self.nats = NatsLink(self.nats_options(urls), on_connect=[self._on_nats_connected])
        self.nats.start()

    async def _stop_nats(self) -> None:
        if self.presence is not None:  # after the scheduler stopped: the others take its jobs from now
            await self.presence.stop()
        if self.command_subscription is not None:
            await self.command_subscription.drain()
        if self.run_consumer is not None:
            await self.run_consumer.stop()
        await self.relay.stop()
        if self.nats is not None:
            await self.nats.close()
        if self.embedded_nats is not None:
            await self.embedded_nats.stop()

    def _library_contents(self, library_id: Any) -> Any:
        """From a command's thread: the library's contents, including everything stored before."""

        async def caught_up() -> Any:
            await self.follower.catch_up()
            return self.models.library_contents(library_id)

        return asyncio.run_coroutine_threadsafe(caught_up(), self._bound_loop()).result(30)

    def load_views(self) -> None:
        """Starts the read models from the persisted rows instead of replaying the whole store.

        Runs before the follower and the server start, so nothing else touches the models yet."""
        try:
            position, rows = self.views.load()
            if position > self.reader.max_position():
                log.warning("the persisted read models are ahead of the store; replaying the store")
                return
            self.models.restore(position, rows)
        except Exception:  # an unreadable snapshot only costs a replay
            log.exception("could not load the persisted read models; replaying the store")
            self.models.reset()

    async def persist_views(self) -> None:
        """The projector role: writes changed rows with their position, when this process leads.

        The rows are taken on the event loop (where the models change), written in the pool."""
        if "projector" not in self.settings.roles or not await self.run_sync(self.views.try_lead):
            self.models.forget_changes()
            self._leading = False
            return
        if not self._leading:  # newly leading: whatever the table holds, make it equal ours
            position, rows = self.models.dump()
            self.models.forget_changes()
            await self.run_sync(partial(self.views.write, position, rows, [], replace_all=True))
            self._leading = True
            return
        position, upserts, deletes = self.models.take_changes()
        if upserts or deletes:
            try:
                written = await self.run_sync(self.views.write, position, upserts, deletes)
            except Exception:
                self._leading = False  # these rows are not written: rewrite everything next time
                raise
            if not written:  # a rebuild swapped in rows past ours: write these once we are past them
                self.models.keep_changes(upserts, deletes)

    async def _persist_forever(self, interval_s: float = 0.25) -> None:
        while True:
            await asyncio.sleep(interval_s)
            try:
                await self.persist_views()
            except Exception:
                log.exception("persisting the read models failed; will retry")

    async def _settle_after_backlog(self, limit_s: float = 120) -> None:
        """Once the relay has published what was stored before the start (a backlog of every event after
        a first start) and the rows are persisted, the memory that took is returned too."""
        for _ in range(int(limit_s)):
            await asyncio.sleep(1)
            stored = await self.run_sync(self.reader.max_position)
            if not self.relay.leading or self.relay.position >= stored:
                break
        await asyncio.sleep(1)  # the projector writes its rows every 250 ms
        settle_memory()

    async def create_job(self, library_id: UUID, draft: CreateDraft, ctx: CommandContext) -> Saved:
        return await self.job_creates.submit(JobRequest(library_id, draft, ctx))

    def run_sync(self, fn: Callable[..., T], /, *args: Any) -> Awaitable[T]:
        return asyncio.get_running_loop().run_in_executor(self.executor, partial(fn, *args))

    async def readiness(self) -> tuple[bool, dict[str, Any]]:
        checks: dict[str, Any] = {}
        try:
            store_position = await asyncio.wait_for(self.run_sync(self.reader.max_position), 2.0)
            checks["store"] = "ok"
        except Exception as e:
            checks["store"] = f"unavailable: {type(e).__name__}"
            return False, checks
        lag = max(0, store_position - self.follower.position)
        checks["projectionLag"] = lag
        nats_ok = self.nats is not None and self.nats.connected
        checks["nats"] = "ok" if nats_ok else f"unavailable: {self._nats_problem()}"
        if "projector" in self.settings.roles:
            checks["relayLag"] = max(0, store_position - self.relay.position) if self.relay.leading else None
        return lag <= READY_MAX_LAG and nats_ok, checks

    def _nats_problem(self) -> str:
        if self.nats is None:
            return "not started"
        return self.nats.last_error or "connecting"

    # --- lifecycle ----------------------------------------------------------------------------------

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        # Loading builds a few objects per job and frees nothing: the cyclic collector would only walk
        # them again and again (half of a 100,000-job start-up). Afterwards they are moved out of its
        # sight (gc.freeze): they live as long as the process, and a full collection stays short.
        gc.disable()
        try:
            await self.run_sync(self.load_views)
            await self.follower.start()
            if self.scheduler is not None:  # the read models are current: every job's next fire is known
                rows = self.models.jobs.rows.values()
                self.scheduler.load((row.id, self._job_times(row)) for row in rows)
        finally:
            gc.enable()
        settle_memory()
        if self.scheduler is not None:
            self.scheduler.start()
        await self._start_nats()
        self._persister = asyncio.create_task(self._persist_forever(), name="persist-views")
        self._settler = asyncio.create_task(self._settle_after_backlog(), name="settle-memory")
        if self._listener is not None:
            self._listener.start()
        self.plugin_host.start_idle_reaper()
        log.info(
            "libjobs started",
            extra={"position": self.follower.position, "roles": sorted(self.settings.roles)},
        )

    async def stop(self) -> None:
        if self._settler is not None:
            self._settler.cancel()
        self.live.close()
        if self.scheduler is not None:
            await self.scheduler.stop()
        await self._stop_nats()
        await self.follower.stop()
        if self._persister is not None:
            self._persister.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._persister
            try:  # the last rows; a failure must not keep the rest of shutdown from running
                await self.persist_views()
            except Exception:
                log.exception("could not persist the read models at shutdown; the next start replays")
        if self._listener is not None:
            await asyncio.to_thread(self._listener.stop)
        await self.plugin_host.stop_idle_reaper()
        await self.plugin_host.aclose()
        self.executor.shutdown(wait=True)
        close = getattr(self.idempotency, "close", None)
        if close is not None:
            close()
        self.views.close()
        self.relay_tracking.close()
        self.commands.close()
        log.info("libjobs stopped")
        self.access_log.flush()

    def http_app(self, authenticator: Authenticator) -> Litestar:
        services = HttpServices(
            commands=self.commands,
            queries=self.models,
            wait_for=self.follower.wait_for,
            run_sync=self.run_sync,
            create_job=self.create_job,
            authenticator=authenticator,
            idempotency=self.idempotency,
            plugins=self.plugins,
            readiness=self.readiness,
            metrics=self.metrics,
            max_body_bytes=self.settings.max_body_bytes,
            live=self.live,
            dry_run=self.refresher.dry_run,
            audit=StoreAuditLog(self.commands, default_timezone=self.settings.default_timezone),
        )
        app = create_app(services, api="api" in self.settings.roles)
        app.on_startup.append(self.start)
        app.on_shutdown.append(self.stop)
        return app

    def asgi(self, authenticator: Authenticator) -> ASGIApp:
        """What the server runs: the app inside the request-context wrapper."""
        access_log = self.access_log

        def observe(method: str, path: str, route: str, status: int, seconds: float, rid: str) -> None:
            self.metrics.observe_request(method, route, status, seconds)
            access_log(method, path, route, status, seconds, rid)

        return with_request_context(self.http_app(authenticator), observe)


def settle_memory() -> None:
    """After start-up: collect what the load freed, keep the collector off what remains, and ask glibc to
    return freed heap pages to the system (a replay decodes every stored event once)."""
    gc.collect()
    gc.freeze()
    with contextlib.suppress(OSError, AttributeError):  # not glibc: nothing to trim
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def api_keys(settings: Settings, *, announce: Callable[[str], None] = print) -> tuple[ApiKeySpec, ...]:
    """The configured keys, plus `LIBJOBS_API_KEY`; with none at all, an admin key made at first start."""
    keys = list(settings.api_keys)
    if settings.api_key:
        keys.append(
            ApiKeySpec(id="env-admin", sha256=sha256_hex(settings.api_key), scopes=frozenset({"admin"}))
        )
    if keys:
        return tuple(keys)
    key_file = (settings.data_dir / ADMIN_KEY_FILE).resolve()
    hash_file = key_file.with_suffix(".sha256")
    if not hash_file.exists():
        key = "lj_" + secrets.token_urlsafe(32)
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(key + "\n")
        hash_file.write_text(sha256_hex(key) + "\n")
        announce(
            f"libjobs: created an admin API key (send it as X-API-Key): {key}\n"
            f"libjobs: it is saved in {key_file}"
        )
    digest = hash_file.read_text().strip()
    return (ApiKeySpec(id="generated-admin", sha256=digest, scopes=frozenset({"admin"})),)


def stream_settings(settings: Settings) -> StreamSettings:
    """The streams as `serve` and `nats setup` both create them."""
    return StreamSettings(replicas=settings.nats_replicas, run_ack_wait_s=settings.run_ack_wait_s)


def build_http(settings: Settings, *, clock: Clock | None = None) -> tuple[Service, ASGIApp]:
    service = Service(settings, clock=clock)
    authenticator = Authenticator(api_keys(settings), settings.jwt)
    return service, service.asgi(authenticator)


async def nats_setup(settings: Settings, *, out: Callable[[str], None] = print) -> int:
    """`libjobs nats setup`: the streams and consumer on the configured NATS, or on the embedded server
    of this data dir (the running one, else started for the occasion)."""
    embedded = None if settings.nats_urls else DataDirNats(settings.data_dir)
    urls = list(settings.nats_urls) if embedded is None else [await embedded.start()]
    options = NatsOptions(urls, name="libjobs nats setup", creds=settings.nats_creds,
                          tls_ca=settings.nats_tls_ca, tls_cert=settings.nats_tls_cert,
                          tls_key=settings.nats_tls_key)  # fmt: skip
    link = NatsLink(options)
    try:
        link.start()
        try:
            await link.wait_ready(10)
        except TimeoutError:
            return cli.fail(f"cannot reach NATS at {', '.join(urls)}: {link.last_error or 'timed out'}")
        for line in await ensure_streams(
            link.client.jetstream(), Subjects(settings.nats_prefix), stream_settings(settings)
        ):
            out(line)
        return 0
    finally:
        await link.close()
        if embedded is not None:
            await embedded.stop()


def _store_only(settings: Settings) -> LibraryJobs:
    """The store alone, for the commands that only read it (no NATS, scheduler, relay or plugin)."""
    env = store_env(
        data_dir=settings.data_dir,
        database_url=settings.database_url,
        pool_size=1,
        lock_timeout_s=settings.lock_timeout_s,
    )
    return LibraryJobs(env, providers=lambda _: None, library_contents=lambda _: LibraryContents((), (), ()))


def print_store_events(settings: Settings, args: Any) -> int:
    """`libjobs events`: the store alone (no NATS, scheduler, relay or plugin), read as JSON lines."""
    with setup_lock(settings.database_url):
        store = _store_only(settings)
    try:
        types = frozenset().union(*args.events_types) if args.events_types else None
        where = AuditFilter(job_id=args.events_job, library_id=args.events_library, types=types)
        audit = StoreAuditLog(store, default_timezone=settings.default_timezone)
        return print_events(audit, where, after=args.events_after, follow=args.events_follow)
    finally:
        store.close()


def view_store(settings: Settings, name: str) -> SqliteViewStore | PostgresViewStore:
    """A persisted view (`projections.sqlview`) in the configured store."""
    if settings.database_url is None:
        # A file each: SQLite fails a transaction that read before writing when another connection
        # wrote meanwhile (SQLITE_BUSY_SNAPSHOT), and the relay and the projector write independently.
        file = "views.sqlite3" if name == VIEWS_NAME else f"{name.split('_')[0]}.sqlite3"
        return SqliteViewStore(settings.data_dir / file, name)
    target = PostgresTarget.from_url(settings.database_url)
    return PostgresViewStore(target.params(), target.schema, name)


def projections_command(settings: Settings, args: Any) -> int:
    """`libjobs projections`: the store and the persisted views alone (no NATS, scheduler, relay or plugin;
    a rebuild's read models have no listener, so it fires, publishes and calls nothing)."""
    with contextlib.ExitStack() as opened:
        with setup_lock(settings.database_url):
            store = _store_only(settings)
            opened.callback(store.close)
            views = {p.name: opened.enter_context(contextlib.closing(view_store(settings, p.tracking_name)))
                     for p in PROJECTIONS}  # fmt: skip
        reader = StoreReader(store)
        admin = Projections(
            views, reader.read, reader.max_position, default_timezone=settings.default_timezone
        )
        names, check = getattr(args, "names", None) or (), getattr(args, "check", False)
        return projections_cli.run(admin, args.projections_command, names, check_only=check)


def main(argv: Sequence[str] | None = None) -> int:
    """The `libjobs` console script: parse, load settings, wire, run."""
    args = cli.parse_args(argv)
    if args.command == "plugin":
        from service.adapters.plugins.fixture import main as run_fixture

        return run_fixture(args.data)
    try:
        settings = load_settings(env=os.environ, flags=vars(args))
    except SettingsError as e:
        return cli.fail(str(e))
    configure_logging(settings.log_json)
    if args.command == "asyncapi":
        print(asyncapi_yaml(settings.nats_prefix), end="")
        return 0
    if args.command == "nats":
        return asyncio.run(nats_setup(settings))
    if args.command == "projections":
        try:
            return projections_command(settings, args)
        except KeyboardInterrupt:
            return 130
        except (projections_cli.BadName, RebuildBusy) as e:
            return cli.fail(str(e))
        except Exception as e:  # the store cannot be read or written: one line, details in the log
            log.debug("the projections command failed", exc_info=True)
            return cli.fail(f"projections {args.projections_command}: {e}")
    if args.command == "events":
        try:
            return print_store_events(settings, args)
        except KeyboardInterrupt:  # Ctrl-C before the events were being followed: a requested stop
            return 0
        except Exception as e:  # the store cannot be read: one line, details in the log
            log.debug("reading the events failed", exc_info=True)
            return cli.fail(f"cannot read the events: {e}")
    try:
        service, app = build_http(settings)
    except Exception as e:  # the store or a config value cannot be used: one line, details in the log
        log.debug("start-up failed", exc_info=True)
        return cli.fail(f"cannot start: {e}")
    return run_server(app, host=settings.host, port=settings.port, on_exit=service.live.close)


if __name__ == "__main__":
    sys.exit(main())
