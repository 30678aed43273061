"""The NATS benchmarks: commands over NATS against HTTP, the relay against a plain JetStream publish loop,
and how soon a stored event reaches a NATS subscriber. Each starts its own `nats-server -js` on a free
loopback port (`tests.support.nats.NatsServer`), its data under the run's work dir.

1. **Commands.** One `libjobs serve` (SQLite, `LIBJOBS_NATS_URL` of that server) creates jobs from the
   same body both ways: `wrk` POSTing with CONNECTIONS connections, and CONNECTIONS concurrent
   requesters on ``libjobs.cmd.job.create`` in this process (one connection, as one asyncio client
   would). Only ok replies count; error replies and timeouts are reported. This process uses a small
   fraction of a core (reported), so it is not what limits the rate.
2. **Relay.** A SQLite store filled with N events (a library, then jobs created through `LibraryJobs`);
   `service.adapters.nats.relay.Relay`, as the service builds it, publishes all N to a new
   `LIBJOBS_EVENTS` stream. Baseline: the same N messages (subject, payload, `Nats-Msg-Id`), built
   beforehand, published one by one with `await js.publish(...)`, each waiting for its ack.
3. **Latency.** A `Service` in this process (SQLite, the server's URL) takes `create_job` commands at a
   steady RATE_PER_S; a core NATS subscriber on ``libjobs.evt.>`` notes when each job's event arrives.

The contenders of 1 and 2 alternate round by round (`interleave`).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import sys
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any
from uuid import UUID, uuid4

import msgspec
import nats
import nats.errors
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.errors import NotFoundError

from bench.common import Goal, Options, Result, interleave, median, percentile, process_cpu_seconds, stage
from bench.load import Load, LoadResult, rps_sampler, run_load, summarize
from bench.servers import CREATE_JOB, CREATE_JOB_BODY, PLUGIN, Api, libjobs, new_store
from contracts.jobs import CreateLibraryJobRequest
from contracts.nats import EVENTS_STREAM, MSG_ID_HEADER, Subjects
from projections.envelopes import Outgoing, outgoing
from projections.sqlview import RELAY_NAME, SqliteViewStore
from service.adapters.nats.relay import Origins, Relay
from service.adapters.nats.streams import StreamSettings, ensure_streams
from service.adapters.store import StoreReader
from service.application import LibraryJobs
from service.bootstrap import Service
from service.domain.jobs import CreateDraft, ProviderInfo
from service.entrypoints.translate import create_draft
from service.ports import CommandContext, LibraryContents
from service.settings import PluginSpec, Settings
from tests.support.nats import NatsServer

COMMANDS_TARGET = 0.80
RELAY_TARGET = 0.50
LATENCY_TARGET_MS = 50.0
RATE_PER_S = 200
CONNECTIONS = 16
REQUEST_TIMEOUT_S = 10.0
COMMANDS_ROW = "job.create over NATS"
RELAY_ROW = "relay to JetStream"
LATENCY_ROW = "store -> NATS subscriber, p99"
SUBJECTS = Subjects()
CTX = CommandContext(actor="bench", request_id="bench")
GIVE_UP_S = 120.0  # a relay round or the last event that takes longer than this fails the run
# Declared capabilities: validating a job never starts the plugin.
PLUGINS = (PluginSpec(name=PLUGIN, command=(sys.executable, "-c", "pass"), capabilities=("series", "book")),)


def run(options: Options) -> list[Result]:
    results = []
    for title, measure in ((COMMANDS_ROW, _commands), (RELAY_ROW, _relay), (LATENCY_ROW, _latency)):
        with stage(title):
            results.append(measure(options))
    return results


def _providers(_: str) -> ProviderInfo:
    return ProviderInfo(enabled=True, capabilities=frozenset({"series", "book"}))


def _no_contents(_: UUID) -> LibraryContents:
    return LibraryContents((), (), ())


def _job_draft() -> CreateDraft:
    return create_draft(msgspec.json.decode(CREATE_JOB_BODY, type=CreateLibraryJobRequest))


def _relay_events(options: Options) -> int:
    return 5_000 if options.quick else 20_000


def _latency_seconds(options: Options) -> float:
    return 5.0 if options.quick else 10.0


def _pool_runner(pool: ThreadPoolExecutor) -> Callable[..., Awaitable[Any]]:
    """The relay's `run_sync`, as `Service.run_sync`: a blocking call in the store's thread pool."""

    def run_sync(fn: Callable[..., Any], /, *args: Any) -> Awaitable[Any]:
        return asyncio.get_running_loop().run_in_executor(pool, partial(fn, *args))

    return run_sync


# --- 1. commands over NATS against HTTP --------------------------------------------------------------


class _Reply(msgspec.Struct):
    ok: bool


_decode_reply = msgspec.json.Decoder(_Reply).decode


@dataclass(frozen=True)
class _Requests:
    """One round of the NATS requesters."""

    ok: int
    errors: int  # error replies (`"ok": false`)
    timeouts: int  # no reply within REQUEST_TIMEOUT_S, or no responder
    seconds: float
    latencies_ms: list[float]
    client_cpu: float  # cores used by this process
    server_cpu: float  # cores used by `libjobs serve`
    nats_cpu: float  # cores used by nats-server

    @property
    def rate(self) -> float:
        return self.ok / self.seconds


class _Requesters:
    """CONNECTIONS requesters sharing one connection, each sending its next request on the last reply."""

    def __init__(self, nc: Client, payload: bytes, server_pid: int, nats_pid: int) -> None:
        self.nc = nc
        self.subject = SUBJECTS.command("job.create")
        self.payload = payload
        self.pids = (server_pid, nats_pid)
        self.log: list[_Requests] = []

    async def round(self, seconds: float) -> _Requests:
        ok = errors = timeouts = 0
        latencies: list[float] = []
        deadline = time.perf_counter() + seconds

        async def requester() -> None:
            nonlocal ok, errors, timeouts
            while time.perf_counter() < deadline:
                sent = time.perf_counter()
                try:
                    reply = await self.nc.request(self.subject, self.payload, timeout=REQUEST_TIMEOUT_S)
                except (nats.errors.TimeoutError, nats.errors.NoRespondersError):
                    timeouts += 1
                    continue
                latencies.append((time.perf_counter() - sent) * 1000)
                if _decode_reply(reply.data).ok:
                    ok += 1
                else:
                    errors += 1

        server_pid, nats_pid = self.pids
        cpu = (time.process_time(), process_cpu_seconds(server_pid), process_cpu_seconds(nats_pid))
        started = time.perf_counter()
        await asyncio.gather(*(requester() for _ in range(CONNECTIONS)))
        elapsed = time.perf_counter() - started
        client, server, nats_server = (
            time.process_time() - cpu[0],
            process_cpu_seconds(server_pid) - cpu[1],
            process_cpu_seconds(nats_pid) - cpu[2],
        )
        return _Requests(
            ok=ok,
            errors=errors,
            timeouts=timeouts,
            seconds=elapsed,
            latencies_ms=latencies,
            client_cpu=client / elapsed,
            server_cpu=server / elapsed,
            nats_cpu=nats_server / elapsed,
        )

    async def sample(self, seconds: float) -> float:
        """One round for `interleave`: ok replies/s, the whole round kept in `log`."""
        result = await self.round(seconds)
        self.log.append(result)
        return result.rate


def _commands(options: Options) -> Result:
    work = options.work_dir
    with ExitStack() as stack:
        nats_server = stack.enter_context(NatsServer(work / "nats-commands"))
        assert nats_server.process is not None
        store = stack.enter_context(new_store("sqlite", work))
        server = stack.enter_context(libjobs(store, work, nats_url=nats_server.url))
        api = Api(server.url)
        stack.callback(api.close)
        library_id = api.new_library()
        load = Load(
            url=server.url + api.jobs_path(library_id),
            method="POST",
            headers={**api.headers(), "Content-Type": "application/json"},
            body=CREATE_JOB_BODY,
            connections=CONNECTIONS,
        )
        runner = stack.enter_context(asyncio.Runner())
        nc = runner.run(nats.connect(nats_server.url))
        stack.callback(lambda: runner.run(nc.close()))
        payload = msgspec.json.encode({**CREATE_JOB, "libraryId": str(library_id)})
        requesters = _Requesters(nc, payload, server.pid, nats_server.process.pid)

        run_load(load, options.warmup_seconds, server_pid=server.pid)
        runner.run(requesters.round(options.warmup_seconds))
        http_log: list[LoadResult] = []
        samples = interleave(
            options.rounds,
            {
                "nats": lambda: runner.run(requesters.sample(options.seconds)),
                "http": partial(rps_sampler, load, options.seconds, server.pid, http_log),
            },
        )
    rounds = requesters.log
    latencies = [ms for r in rounds for ms in r.latencies_ms]
    http = summarize(http_log)
    nats_p99, errors = percentile(latencies, 99), sum(r.errors + r.timeouts for r in rounds)
    client_cpu, server_cpu = median([r.client_cpu for r in rounds]), median([r.server_cpu for r in rounds])
    details: dict[str, Any] = {
        "connections": CONNECTIONS,
        "nats_rate_samples": [round(s, 1) for s in samples["nats"]],
        "nats_ok": sum(r.ok for r in rounds),
        "nats_error_replies": sum(r.errors for r in rounds),
        "nats_timeouts": sum(r.timeouts for r in rounds),
        "nats_p50_ms": round(median(latencies), 2),
        "nats_p99_ms": round(nats_p99, 2),
        "nats_client_cpu_cores": round(client_cpu, 2),
        "nats_server_cpu_cores": round(server_cpu, 2),
        "nats_server_process_cpu_cores": round(median([r.nats_cpu for r in rounds]), 2),
        "http": http,
    }
    return Result(
        name=COMMANDS_ROW,
        unit="cmd/s",
        value=median(samples["nats"]),
        target=COMMANDS_TARGET,
        goal=Goal.RATIO_AT_LEAST,
        baseline=median(samples["http"]),
        baseline_name=f"POST …/jobs from wrk ({CONNECTIONS} connections), same body, same serve process",
        details=details,
        note=(
            f"{CONNECTIONS} requesters/conns, p99 {nats_p99:.1f}/{http['p99_ms']:.1f} ms; server CPU "
            f"{server_cpu:.2f}/{http['server_cpu_cores']:.2f}; client {client_cpu:.2f}/"
            f"{http['client_cpu_cores']:.2f} cores; {errors} errors"
        ),
    )


# --- 2. the relay against a plain publish loop --------------------------------------------------------


def _fill(app: LibraryJobs, events: int) -> None:
    """A library, then jobs created as the service creates them: `events` events in all."""
    library_id = uuid4()
    app.upsert_library(library_id, "bench", CTX)
    draft = _job_draft()
    for _ in range(events - 1):
        app.create_job(library_id, draft, CTX)


def _messages(reader: StoreReader, events: int) -> list[Outgoing]:
    """Every stored event as the relay publishes it: subject, `Nats-Msg-Id` and envelope."""
    origins = Origins(reader.first_event)
    messages: list[Outgoing] = []
    while len(messages) < events:
        batch = reader.read(len(messages), 1000)
        messages += [outgoing(SUBJECTS, position, event, origins.of(event)) for position, event in batch]
    return messages


async def _new_stream(js: JetStreamContext) -> None:
    """An empty `LIBJOBS_EVENTS`: deleting the stream also forgets the message ids it de-duplicates."""
    with contextlib.suppress(NotFoundError):
        await js.delete_stream(EVENTS_STREAM)
    await ensure_streams(js, SUBJECTS, StreamSettings())


async def _check_stored(js: JetStreamContext, expected: int) -> None:
    stored = (await js.stream_info(EVENTS_STREAM)).state.messages
    if stored != expected:
        raise RuntimeError(f"{EVENTS_STREAM} holds {stored} messages, {expected} were published")


class _RelayRounds:
    """The two contenders on one connection; each round starts from a new, empty stream."""

    def __init__(self, js: JetStreamContext, reader: StoreReader, messages: list[Outgoing], work: Path):
        self.js = js
        self.reader = reader
        self.messages = messages
        self.work = work
        self.pool = ThreadPoolExecutor(Settings().store_pool_size, thread_name_prefix="store")
        self._rounds = itertools.count()

    async def relay(self) -> float:
        """Events/s of a new relay (no position yet) publishing the whole store."""
        await _new_stream(self.js)
        expected = len(self.messages)
        tracking = SqliteViewStore(self.work / f"relay-{next(self._rounds)}.sqlite3", RELAY_NAME)
        done = asyncio.Event()

        def published(position: int, _: int) -> None:
            if position >= expected:
                done.set()

        relay = Relay(
            read=self.reader.read,
            first_event=self.reader.first_event,
            tracking=tracking,
            subjects=SUBJECTS,
            run_sync=_pool_runner(self.pool),
            on_published=published,
        )
        started = time.perf_counter()
        relay.start(self.js)
        try:
            await asyncio.wait_for(done.wait(), GIVE_UP_S)
            elapsed = time.perf_counter() - started
        finally:
            await relay.stop()
            tracking.close()
        await _check_stored(self.js, expected)
        return expected / elapsed

    async def plain_loop(self) -> float:
        """Messages/s of publishing the relay's messages one at a time, each awaiting its ack."""
        await _new_stream(self.js)
        started = time.perf_counter()
        for message in self.messages:
            await self.js.publish(message.subject, message.payload, headers={MSG_ID_HEADER: message.msg_id})
        elapsed = time.perf_counter() - started
        await _check_stored(self.js, len(self.messages))
        return len(self.messages) / elapsed


def _relay(options: Options) -> Result:
    work = options.work_dir
    events = _relay_events(options)
    with ExitStack() as stack:
        server = stack.enter_context(NatsServer(work / "nats-relay"))
        store = stack.enter_context(new_store("sqlite", work))
        app = LibraryJobs(
            store.eventsourcing_env(),
            providers=_providers,
            library_contents=_no_contents,
            library_known=lambda _: True,  # as the service's read model answers for a registered library
        )
        stack.callback(app.close)
        _fill(app, events)
        reader = StoreReader(app)
        messages = _messages(reader, events)
        runner = stack.enter_context(asyncio.Runner())
        nc = runner.run(nats.connect(server.url))
        stack.callback(lambda: runner.run(nc.close()))
        rounds = _RelayRounds(nc.jetstream(), reader, messages, work)
        stack.callback(rounds.pool.shutdown)
        runner.run(rounds.relay())  # warm-up: the store's pages, the connection, the stream
        runner.run(rounds.plain_loop())
        samples = interleave(
            options.rounds,
            {"relay": lambda: runner.run(rounds.relay()), "plain": lambda: runner.run(rounds.plain_loop())},
        )
    relay, plain = median(samples["relay"]), median(samples["plain"])
    return Result(
        name=RELAY_ROW,
        unit="events/s",
        value=relay,
        target=RELAY_TARGET,
        goal=Goal.RATIO_AT_LEAST,
        baseline=plain,
        baseline_name="the same messages pre-built, `await js.publish(...)` one at a time (each acked)",
        details={
            "events": events,
            "event_mix": "1 LibraryRegistered, then JobCreated (the POST body's job)",
            "relay_samples": [round(s, 1) for s in samples["relay"]],
            "plain_samples": [round(s, 1) for s in samples["plain"]],
            "relay_seconds": round(events / relay, 3),
            "plain_seconds": round(events / plain, 3),
            "payload_bytes_mean": round(sum(len(m.payload) for m in messages) / len(messages)),
        },
        note=f"{events:,} events, {events / relay:.2f} s vs {events / plain:.2f} s; fresh stream per round",
    )


# --- 3. latency from the store to a subscriber --------------------------------------------------------


class _Arrivals:
    """A core NATS subscriber's view: when the first event of each job arrived, and how many came again
    (JetStream drops a re-sent message from the stream, but core subscribers still see it)."""

    def __init__(self) -> None:
        self.at: dict[str, float] = {}
        self.repeated = 0
        self.changed = asyncio.Event()

    async def on_message(self, msg: Msg) -> None:
        received = time.perf_counter()
        key = msg.subject.rsplit(".", 1)[1]
        if key in self.at:
            self.repeated += 1
            return
        self.at[key] = received
        self.changed.set()

    async def wait_for(self, job_ids: set[str], timeout_s: float) -> set[str]:
        """Waits until every job's event arrived; returns the ones still missing after `timeout_s`."""
        deadline = time.perf_counter() + timeout_s
        while missing := job_ids - self.at.keys():
            self.changed.clear()
            left = deadline - time.perf_counter()
            if left <= 0:
                return missing
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.changed.wait(), left)
        return set()


async def _steady_writes(
    service: Service, library_id: UUID, seconds: float
) -> dict[str, tuple[float, float]]:
    """Creates jobs at RATE_PER_S (open loop: a slow command does not delay the next one) for `seconds`;
    returns job id -> (sent, stored), `stored` taken in the store's thread as the command returned."""
    draft = _job_draft()
    writes: dict[str, tuple[float, float]] = {}

    def create() -> tuple[UUID, float]:
        saved = service.commands.create_job(library_id, draft, CTX)
        return saved.id, time.perf_counter()

    async def write() -> None:
        sent = time.perf_counter()
        job_id, stored = await service.run_sync(create)
        writes[str(job_id)] = (sent, stored)

    tasks = []
    started = time.perf_counter()
    for i in range(round(seconds * RATE_PER_S)):
        await asyncio.sleep(max(0.0, started + i / RATE_PER_S - time.perf_counter()))
        tasks.append(asyncio.create_task(write()))
    await asyncio.gather(*tasks)
    return writes


@dataclass(frozen=True)
class _Latencies:
    from_stored_ms: list[float]
    from_sent_ms: list[float]
    repeated: int


async def _measure_latency(options: Options, nats_url: str) -> _Latencies:
    settings = Settings(data_dir=options.work_dir / "latency-data", nats_urls=(nats_url,), plugins=PLUGINS)
    service = Service(settings)
    await service.start()
    subscriber = await nats.connect(nats_url)
    try:
        assert service.nats is not None
        await service.nats.wait_ready(GIVE_UP_S)
        arrivals = _Arrivals()
        await subscriber.subscribe(SUBJECTS.all_events, cb=arrivals.on_message)
        await subscriber.flush()
        library_id = uuid4()
        await service.run_sync(service.commands.upsert_library, library_id, "bench", CTX)
        await _steady_writes(service, library_id, options.warmup_seconds)
        writes = await _steady_writes(service, library_id, _latency_seconds(options))
        missing = await arrivals.wait_for(set(writes), GIVE_UP_S)
        if missing:
            raise RuntimeError(f"{len(missing)} of {len(writes)} stored events never reached the subscriber")
        return _Latencies(
            from_stored_ms=[(arrivals.at[job] - stored) * 1000 for job, (_, stored) in writes.items()],
            from_sent_ms=[(arrivals.at[job] - sent) * 1000 for job, (sent, _) in writes.items()],
            repeated=arrivals.repeated,
        )
    finally:
        await subscriber.close()
        await service.stop()


def _latency(options: Options) -> Result:
    with NatsServer(options.work_dir / "nats-latency") as server:
        measured = asyncio.run(_measure_latency(options, server.url))
    stored, sent = measured.from_stored_ms, measured.from_sent_ms
    p50, p99, sent_p99 = median(stored), percentile(stored, 99), percentile(sent, 99)
    return Result(
        name=LATENCY_ROW,
        unit="ms",
        value=p99,
        target=LATENCY_TARGET_MS,
        goal=Goal.AT_MOST,
        details={
            "events": len(stored),
            "rate_per_s": RATE_PER_S,
            "seconds": _latency_seconds(options),
            "from_stored_p50_ms": round(p50, 2),
            "from_stored_p99_ms": round(p99, 2),
            "from_stored_max_ms": round(max(stored), 2),
            "from_sent_p50_ms": round(median(sent), 2),
            "from_sent_p99_ms": round(sent_p99, 2),
            "from_sent_max_ms": round(max(sent), 2),
            "repeated_messages": measured.repeated,
        },
        note=(
            f"p50 {p50:.1f}, max {max(stored):.1f} ms, {len(stored):,} events at {RATE_PER_S}/s, all "
            f"received; from send: p99 {sent_p99:.1f} ms"
        ),
    )
