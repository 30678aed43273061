"""Job and catalog commands over NATS request/reply (SPEC §5), on ``{prefix}.cmd.<command>``.

`CommandResponder` turns one request (subject, payload, headers) into its encoded reply and does what the
HTTP route of the same command does: the same strict decoding and error details, the same application
call, the same read-your-writes wait, the same result bytes. `serve_commands` feeds it from a queue group.

Headers: `Idempotency-Key` (as on HTTP, scoped by the actor), `Libjobs-Actor` (the caller recorded on the
events as ``nats:<actor>``; default ``nats``) and `Libjobs-Request-Id` (echoed into the events and logs;
made up when absent or not 1-128 of ``[A-Za-z0-9._:-]``, like HTTP's `X-Request-Id`).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import re
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from functools import partial
from typing import Any
from uuid import UUID

import msgspec
import nats.errors
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from contracts.catalog import UpsertBookRequest, UpsertSeriesRequest
from contracts.errors import ErrorResponse
from contracts.jobs import DryRunRequest, DryRunResponse, RunNowResponse
from contracts.nats import (
    ACTOR_HEADER,
    COMMANDS,
    IDEMPOTENCY_KEY_HEADER,
    REQUEST_ID_HEADER,
    CommandError,
    CommandOk,
    CreateJobCommand,
    DeleteBookCommand,
    DeleteJobCommand,
    DeleteLibraryCommand,
    DeleteSeriesCommand,
    DryRunCommand,
    RecordRunCommand,
    RecordRunResult,
    RunNowCommand,
    Subjects,
    UpdateJobCommand,
    UpsertBookCommand,
    UpsertLibraryCommand,
    UpsertSeriesCommand,
)
from service.application import CreateJob, LibraryJobs, Saved
from service.domain.errors import DomainError, NotFound, Unavailable, ValidationFailed
from service.entrypoints.errors import INTERNAL_ERROR_MESSAGE, domain_error, error_body, undecodable
from service.entrypoints.idempotency import Idempotency, Reply, check_key, fingerprint
from service.entrypoints.translate import catalog_text, create_draft, dry_run_input, patch_draft
from service.ports import CommandContext, DryRun, IdempotencyStore, ReadModelQueries, RunSync, WaitForPosition

log = logging.getLogger("libjobs.nats")

DEFAULT_ACTOR = "nats"
ACTOR_MAX = 128

_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
# Request ids need to be unique, not secret: a random prefix per process and a counter, as on HTTP.
_ID_PREFIX = os.urandom(6).hex()
_ids = itertools.count(1)
_encode = msgspec.json.Encoder().encode

Handler = Callable[[Any, CommandContext], Awaitable[msgspec.Raw | msgspec.Struct | None]]


@dataclass
class NatsServices:
    commands: LibraryJobs
    queries: ReadModelQueries
    wait_for: WaitForPosition
    run_sync: RunSync
    create_job: CreateJob
    idempotency: IdempotencyStore
    max_payload_bytes: int = 64 * 1024
    dry_run: DryRun | None = None  # None: `job.dry_run` answers 503


class CommandResponder:
    """One command request in, its encoded `CommandOk` or `CommandError` out. `handle` never raises."""

    def __init__(self, services: NatsServices, subjects: Subjects) -> None:
        self.subject = subjects.all_commands
        self._svc = services
        self._names = {subject: name for name, subject in subjects.command_subjects().items()}
        self._idempotency = Idempotency(services.idempotency, services.run_sync)
        self._handlers: dict[str, Handler] = {
            "job.create": self._create_job,
            "job.update": self._update_job,
            "job.delete": self._delete_job,
            "job.run_now": self._run_now,
            "run.record": self._record_run,
            "catalog.library.upsert": self._upsert_library,
            "catalog.library.delete": self._delete_library,
            "catalog.series.upsert": self._upsert_series,
            "catalog.series.delete": self._delete_series,
            "catalog.book.upsert": self._upsert_book,
            "catalog.book.delete": self._delete_book,
            "job.dry_run": self._dry_run,
        }

    async def handle(self, subject: str, payload: bytes, headers: Mapping[str, str] | None) -> bytes:
        lowered = {name.lower(): value for name, value in (headers or {}).items()}
        request_id = lowered.get(REQUEST_ID_HEADER.lower(), "")
        if not _REQUEST_ID.fullmatch(request_id):
            request_id = f"{_ID_PREFIX}{next(_ids):08x}"
        try:
            return await self._handle(subject, payload, lowered, request_id)
        except Exception:  # the payload stays out of the log: it is the caller's, and can be large
            log.exception("command failed", extra={"subject": subject, "request_id": request_id})
            return _failure(500, error_body(500, INTERNAL_ERROR_MESSAGE))

    async def _handle(self, subject: str, payload: bytes, headers: dict[str, str], request_id: str) -> bytes:
        name = self._names.get(subject)
        if name is None:
            details = {"field": "subject", "code": "unknown_command"}
            return _failure(404, error_body(404, f"Unknown command subject {subject!r}", details))
        if len(payload) > self._svc.max_payload_bytes:
            message = f"The payload is larger than {self._svc.max_payload_bytes} bytes"
            return _failure(413, error_body(413, message))
        try:
            command = msgspec.json.decode(payload, type=COMMANDS[name], strict=True)
        except msgspec.DecodeError as e:
            return _failure(400, undecodable(e, patch=name == "job.update"))
        try:
            ctx = CommandContext(actor=f"nats:{_actor(headers)}", request_id=request_id)
            run = partial(self._run, name, command, ctx)
            key = headers.get(IDEMPOTENCY_KEY_HEADER.lower())
            if key is None:
                return (await run()).body
            check_key(key)
            reply, _ = await self._idempotency.once(
                f"{ctx.actor}\n{key}", fingerprint(name.encode(), payload), run
            )
            return reply.body
        except DomainError as e:  # a bad header, or a key reused for another request
            return _failure(*domain_error(e))

    async def _run(self, name: str, command: Any, ctx: CommandContext) -> Reply:
        try:
            result = await self._handlers[name](command, ctx)
        except DomainError as e:
            status, error = domain_error(e)
            return Reply(status, _failure(status, error))
        return Reply(200, _encode(CommandOk(ok=True, result=result)))

    async def _write(self, command: Callable[..., Saved], /, *args: Any, **kwargs: Any) -> Saved:
        """Runs an application command in the store's pool, then waits until the read models show it."""
        saved = await self._svc.run_sync(partial(command, *args, **kwargs))
        await self._svc.wait_for(saved.position)
        return saved

    # --- jobs (as service/entrypoints/http/jobs.py) -------------------------------------------------

    async def _create_job(self, command: CreateJobCommand, ctx: CommandContext) -> msgspec.Raw:
        saved = await self._svc.create_job(command.library_id, create_draft(command), ctx)
        await self._svc.wait_for(saved.position)
        return self._job(command.library_id, saved.id)

    async def _update_job(self, command: UpdateJobCommand, ctx: CommandContext) -> msgspec.Raw:
        library_id, job_id = command.library_id, command.job_id
        app = self._svc.commands
        await self._write(
            app.update_job, library_id, job_id, patch_draft(command), ctx, if_match=command.if_match
        )
        return self._job(library_id, job_id)

    async def _delete_job(self, command: DeleteJobCommand, ctx: CommandContext) -> None:
        app = self._svc.commands
        await self._write(app.delete_job, command.library_id, command.job_id, ctx, if_match=command.if_match)

    async def _run_now(self, command: RunNowCommand, ctx: CommandContext) -> RunNowResponse:
        run_now = partial(self._svc.commands.run_now, command.library_id, command.job_id, ctx)
        saved, run_id = await self._svc.run_sync(run_now)
        await self._svc.wait_for(saved.position)
        return RunNowResponse(task_id=run_id)

    async def _dry_run(self, command: DryRunCommand, ctx: CommandContext) -> DryRunResponse:
        dry_run = self._svc.dry_run
        if dry_run is None:
            raise Unavailable("Dry runs are not available on this process")
        body = DryRunRequest(config_override=command.config_override, sample_size=command.sample_size)
        override, size = dry_run_input(body)
        return await dry_run(command.library_id, command.job_id, override, size)

    async def _record_run(self, command: RecordRunCommand, ctx: CommandContext) -> RecordRunResult:
        """Not an HTTP route: the outcome of a run, sent by whoever executed it."""
        record = partial(
            self._svc.commands.record_run,
            command.job_id,
            command.run_id,
            command.status,
            command.message,
            command.started_at,
            command.finished_at,
            msgspec.structs.asdict(command.counts),
            ctx,
        )
        saved, status = await self._svc.run_sync(record)
        await self._svc.wait_for(saved.position)
        return RecordRunResult(job_id=command.job_id, run_id=command.run_id, status=status)

    def _job(self, library_id: UUID, job_id: UUID) -> msgspec.Raw:
        found = self._svc.queries.job_json(library_id, job_id)
        if found is None:
            raise NotFound("Job not found")
        return msgspec.Raw(found[0])

    # --- catalog (as service/entrypoints/http/catalog.py) -------------------------------------------

    async def _upsert_library(self, command: UpsertLibraryCommand, ctx: CommandContext) -> msgspec.Raw:
        name = catalog_text(command.name, "name")
        await self._write(self._svc.commands.upsert_library, command.library_id, name, ctx)
        return _found(self._svc.queries.library_json(command.library_id), "Library")

    async def _delete_library(self, command: DeleteLibraryCommand, ctx: CommandContext) -> None:
        await self._write(self._svc.commands.delete_library, command.library_id, ctx)

    async def _upsert_series(self, command: UpsertSeriesCommand, ctx: CommandContext) -> msgspec.Raw:
        library_id, series_id = command.library_id, command.series_id
        state = _http_body(command, UpsertSeriesRequest)
        await self._write(self._svc.commands.upsert_series, library_id, series_id, state, ctx)
        return _found(self._svc.queries.series_json(library_id, series_id), "Series")

    async def _delete_series(self, command: DeleteSeriesCommand, ctx: CommandContext) -> None:
        await self._write(self._svc.commands.delete_series, command.library_id, command.series_id, ctx)

    async def _upsert_book(self, command: UpsertBookCommand, ctx: CommandContext) -> msgspec.Raw:
        library_id, book_id = command.library_id, command.book_id
        state = _http_body(command, UpsertBookRequest)
        await self._write(self._svc.commands.upsert_book, library_id, book_id, state, ctx)
        return _found(self._svc.queries.book_json(library_id, book_id), "Book")

    async def _delete_book(self, command: DeleteBookCommand, ctx: CommandContext) -> None:
        await self._write(self._svc.commands.delete_book, command.library_id, command.book_id, ctx)


def _actor(headers: Mapping[str, str]) -> str:
    actor = headers.get(ACTOR_HEADER.lower(), DEFAULT_ACTOR)
    if not (0 < len(actor) <= ACTOR_MAX and actor.isprintable()):
        message = f"{ACTOR_HEADER} must be 1-{ACTOR_MAX} printable characters"
        raise ValidationFailed(ACTOR_HEADER, "invalid_header", message)
    return actor


def _http_body(
    command: UpsertSeriesCommand | UpsertBookCommand, body: type[msgspec.Struct]
) -> dict[str, Any]:
    """A series or book command as the application gets it from HTTP: the body's keys, title trimmed."""
    state = msgspec.to_builtins(command)
    state = {key: state[key] for key in body.__struct_encode_fields__}
    state["title"] = catalog_text(command.title, "title")
    return state


def _found(body: bytes | None, what: str) -> msgspec.Raw:
    if body is None:
        raise NotFound(f"{what} not found")
    return msgspec.Raw(body)


def _failure(status: int, error: ErrorResponse) -> bytes:
    return _encode(CommandError(ok=False, error=error, status=status))


# --- the subscription --------------------------------------------------------------------------------


@dataclass
class CommandSubscription:
    """The running command subscription. `drain()` before closing the connection at shutdown."""

    subscription: Subscription
    tasks: set[asyncio.Task[None]] = field(default_factory=set)

    async def drain(self) -> None:
        """Takes no more commands and answers the ones received; then drain or close the connection,
        which sends the replies it still buffers."""
        # Already closed or draining (the connection went first): the commands in flight still finish.
        with contextlib.suppress(nats.errors.Error):
            await self.subscription.drain()  # type: ignore[no-untyped-call]
        if self.tasks:
            await asyncio.wait(set(self.tasks))


async def serve_commands(
    nc: Client, responder: CommandResponder, *, queue: str = "libjobs-commands", max_in_flight: int = 256
) -> CommandSubscription:
    """Answers every command subject in a queue group, each message in a task of its own.

    At most `max_in_flight` commands run at once. When that many are running, the next message waits
    for a slot and later ones wait in the subscription's buffer (back-pressure) rather than being
    refused: the caller's request timeout is the bound, and a command that arrived is one it meant.
    """
    slots = asyncio.Semaphore(max_in_flight)
    tasks: set[asyncio.Task[None]] = set()

    async def answer(msg: Msg) -> None:
        try:
            reply = await responder.handle(msg.subject, msg.data, msg.headers)
            # Not `msg.respond`: it would send the request's headers back with the reply.
            await nc.publish(msg.reply, reply)
        except Exception:  # e.g. the connection closed: the caller's request times out
            log.exception("could not reply to a command", extra={"subject": msg.subject})
        finally:
            slots.release()

    async def on_message(msg: Msg) -> None:
        if not msg.reply:
            log.warning("command without a reply subject dropped", extra={"subject": msg.subject})
            return
        await slots.acquire()
        task = asyncio.create_task(answer(msg), name=f"nats-command {msg.subject}")
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    subscription = await nc.subscribe(responder.subject, queue=queue, cb=on_message)
    # Once the server has the subscription, a request sent from now on finds it. Twice: nats-py writes
    # flush()'s PING ahead of the buffered SUB, so only the second round trip follows it.
    await nc.flush()
    await nc.flush()
    return CommandSubscription(subscription, tasks)
