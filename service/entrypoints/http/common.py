"""What every HTTP handler shares: the services, ETags, JSON responses and `Idempotency-Key`."""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import msgspec
from litestar import Request
from litestar.exceptions import HTTPException, ValidationException
from litestar.openapi.datastructures import ResponseSpec

from contracts.errors import ErrorResponse
from contracts.jobs import PluginDto
from service.application import CreateJob, LibraryJobs
from service.domain.errors import DomainError
from service.entrypoints.errors import domain_error
from service.entrypoints.http.auth import Authenticator, Principal
from service.entrypoints.idempotency import Idempotency, check_key, fingerprint
from service.entrypoints.idempotency import Reply as Reply  # the handlers build replies from here
from service.ports import (
    AuditLog,
    CommandContext,
    DryRun,
    IdempotencyStore,
    LiveFeed,
    ReadModelQueries,
    RunSync,
    WaitForPosition,
)

JSON = "application/json"
BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})
_JSON_TYPE = re.compile(r"application/(?:[\w.+-]+\+)?json")


class PluginDirectory(Protocol):
    async def list_plugins(self) -> list[PluginDto]: ...


class Metrics(Protocol):
    def observe_request(self, method: str, route: str, status: int, seconds: float) -> None: ...
    def render(self) -> tuple[bytes, str]: ...


@dataclass
class HttpServices:
    commands: LibraryJobs
    queries: ReadModelQueries
    wait_for: WaitForPosition
    run_sync: RunSync
    create_job: CreateJob
    authenticator: Authenticator
    idempotency: IdempotencyStore
    plugins: PluginDirectory
    readiness: Callable[[], Awaitable[tuple[bool, dict[str, Any]]]]
    metrics: Metrics
    max_body_bytes: int = 64 * 1024
    live: LiveFeed | None = None  # None: `GET /events` answers 503
    dry_run: DryRun | None = None  # None: `POST …/dry-run` answers 503
    audit: AuditLog | None = None  # None: the audit routes answer 503
    _idempotent: Idempotency = field(init=False)

    def __post_init__(self) -> None:
        self._idempotent = Idempotency(self.idempotency, self.run_sync)


async def check_body(request: Request[Any, Any, Any]) -> None:
    """Before Litestar decodes `data`: the body must be JSON (415) of exactly the declared shape (400).

    Litestar converts bodies in msgspec's lax mode ("4" would pass for 4); this strict decode first makes
    a wrong JSON type a 400 `wrong_type`, as clients of SPEC §2.1 expect.
    """
    if request.method not in BODY_METHODS:
        return
    body = await request.body()
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if not (content_type and _JSON_TYPE.fullmatch(content_type)):
        if not content_type and not body:
            return
        raise HTTPException(
            status_code=415, detail=f"Content-Type must be application/json, not {content_type!r}"
        )
    declared = request.route_handler.parsed_fn_signature.parameters.get("data")
    if declared is None:
        return
    try:
        msgspec.json.decode(body, type=declared.annotation, strict=True)
    except msgspec.ValidationError as e:
        message, _, path = str(e).partition(" - at `$")
        key = path.rstrip("`").lstrip(".") or None
        raise ValidationException(extra=[{"message": message, "key": key, "source": "body"}]) from None
    except msgspec.DecodeError as e:
        raise HTTPException(status_code=400, detail=f"JSON is malformed: {e}") from None


def services(request: Request[Any, Any, Any]) -> HttpServices:
    return request.app.state["services"]  # type: ignore[no-any-return]


def principal(request: Request[Any, Any, Any]) -> Principal:
    return request.scope["state"]["principal"]  # type: ignore[no-any-return]


def request_id(request: Request[Any, Any, Any]) -> str | None:
    return request.scope["state"].get("request_id")


def context(request: Request[Any, Any, Any]) -> CommandContext:
    return CommandContext(actor=principal(request).id, request_id=request_id(request))


def etag(version: int) -> str:
    return f'"{version}"'


_ETAG_ITEM = re.compile(r'\s*(?:W/)?"([^"]*)"\s*')


def if_match_version(request: Request[Any, Any, Any]) -> int | None:
    """The version named by `If-Match`; None when absent or `*`. A tag no version has never matches."""
    header = request.headers.get("if-match")
    if header is None or header.strip() == "*":
        return None
    match = _ETAG_ITEM.fullmatch(header.split(",")[0])
    if match is None or not match.group(1).isdigit():
        return -1
    return int(match.group(1))


def raw_header(request: Request[Any, Any, Any], name: bytes) -> str | None:
    """One request header, read from the ASGI scope (on a GET, `request.headers` would build a
    Headers object only for this)."""
    for key, value in request.scope["headers"]:
        if key == name:
            return str(value.decode("latin-1"))
    return None


def none_match(request: Request[Any, Any, Any], version: int) -> bool:
    """True when `If-None-Match` names the current version (or `*`): answer 304."""
    header = raw_header(request, b"if-none-match")
    if header is None:
        return False
    if header.strip() == "*":
        return True
    tags = {m.group(1) for part in header.split(",") if (m := _ETAG_ITEM.fullmatch(part))}
    return str(version) in tags


def error_responses(*statuses: int) -> dict[int, ResponseSpec]:
    """OpenAPI entries for the error statuses a route can answer (every route under /api/v1: 401, 403)."""
    descriptions = {
        400: "Invalid request (body, query or validation rule); `details` names the field and reason",
        401: "Missing or invalid credentials",
        403: "The credentials lack the scope this route needs",
        404: "Not found",
        409: "Conflict (e.g. `Idempotency-Key` reused with a different body)",
        412: "`If-Match` names a version that is no longer current",
        413: "Body larger than 64 KiB",
        415: "Body is not `application/json`",
        503: "A dependency (store, plugin) is unavailable",
    }
    return {
        s: ResponseSpec(data_container=ErrorResponse, description=descriptions[s], generate_examples=False)
        for s in sorted({401, 403, *statuses})
    }


async def idempotent(request: Request[Any, Any, Any], handle: Callable[[], Awaitable[Reply]]) -> Reply:
    """Runs a POST once per `Idempotency-Key`: a retry with the same body gets the first reply."""
    key = request.headers.get("idempotency-key")
    if key is None:
        return await handle()
    check_key(key)
    scoped = f"{principal(request).id}\n{key}"
    request_print = fingerprint(request.method.encode(), request.url.path.encode(), await request.body())

    async def replied() -> Reply:
        try:
            return await handle()
        except DomainError as e:  # a refusal is an answer too, replayed like a success
            status, error = domain_error(e)
            if status >= 500:
                raise
            return Reply(status, msgspec.json.encode(error))

    reply, replayed = await services(request)._idempotent.once(scoped, request_print, replied)
    if replayed:
        return Reply(reply.status, reply.body, {**reply.headers, "Idempotent-Replayed": "true"})
    return reply
