"""The Litestar app: routes, auth, JSON errors for everything, request ids, metrics, OpenAPI."""

from __future__ import annotations

import itertools
import logging
import os
import re
import time
from typing import Any

import msgspec
from litestar import Litestar, Request, Response, Router
from litestar.exceptions import HTTPException, ValidationException
from litestar.openapi import OpenAPIConfig
from litestar.openapi.plugins import ScalarRenderPlugin
from litestar.openapi.spec import Components, SecurityScheme
from litestar.types import ASGIApp, Message, Receive, Send

from service.domain.errors import DomainError
from service.entrypoints.errors import domain_error, error_body, shape_error, status_phrase
from service.entrypoints.http import audit, catalog, events, jobs, meta, ops, runs
from service.entrypoints.http.auth import AuthError
from service.entrypoints.http.common import JSON, HttpServices
from service.ports import RequestObserver

log = logging.getLogger("libjobs.http")
_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
# Request ids need to be unique, not secret: a random prefix per process and a counter (uuid4 costs a
# system call per request).
_ID_PREFIX = os.urandom(6).hex()
_ids = itertools.count(1)


def authenticating(app: ASGIApp) -> ASGIApp:
    """Middleware of every /api/v1 route: credentials (401), then the route's scope (403).

    A middleware rather than a guard: Litestar copies the handler for each guard call, and runs a sync
    guard in a thread; this costs neither.
    """

    async def middleware(scope: Any, receive: Receive, send: Send) -> None:
        svc: HttpServices = scope["litestar_app"].state["services"]
        headers = dict(scope["headers"])
        api_key, authorization = headers.get(b"x-api-key"), headers.get(b"authorization")
        found = svc.authenticator.authenticate(
            api_key.decode("latin-1") if api_key else None,
            authorization.decode("latin-1") if authorization else None,
        )
        scope["state"]["principal"] = found
        needed = scope["route_handler"].opt["scope"]
        if not found.may(needed):
            raise PermissionError(f"This route needs the '{needed}' scope")
        await app(scope, receive, send)

    return middleware


def _json_error(status: int, body: Any, headers: dict[str, str] | None = None) -> Response[bytes]:
    return Response(msgspec.json.encode(body), status_code=status, media_type=JSON, headers=headers)


def handle_error(request: Request[Any, Any, Any], exc: Exception) -> Response[bytes]:
    """The one mapper from any exception to an `ErrorResponse`."""
    if isinstance(exc, DomainError):
        status, body = domain_error(exc)
        return _json_error(status, body)
    if isinstance(exc, AuthError):
        return _json_error(
            401, error_body(401, str(exc)), {"WWW-Authenticate": 'Bearer, ApiKey realm="libjobs"'}
        )
    if isinstance(exc, PermissionError):
        return _json_error(403, error_body(403, str(exc)))
    if isinstance(exc, ValidationException):
        extra = exc.extra[0] if isinstance(exc.extra, list) and exc.extra else {}
        message = str(extra.get("message") or exc.detail)
        return _json_error(400, shape_error(message, extra.get("key"), patch=request.method == "PATCH"))
    if isinstance(exc, HTTPException):
        return _http_error(request, exc)
    rid = request.scope.get("state", {}).get("request_id")
    log.exception("unhandled error", extra={"request_id": rid, "path": request.url.path})
    return _json_error(500, error_body(500, "An internal error occurred"))


def _http_error(request: Request[Any, Any, Any], exc: HTTPException) -> Response[bytes]:
    """Litestar's own errors (routing, body size, JSON syntax) in our shape, with clearer words."""
    status = exc.status_code
    message = exc.detail or status_phrase(status)
    details: dict[str, str] | None = None
    if status == 400:  # the body is not JSON at all
        details = {"field": "body", "code": "malformed_json"}
        message = f"Malformed JSON body: {message}"
    elif status == 404 and message == "Not Found":
        message = f"No route matches {request.method} {request.url.path} (ids in paths are UUIDs)"
    elif status == 405:
        message = f"Method {request.method} is not allowed on {request.url.path}"
    elif status == 413:
        message = "The request body is larger than 64 KiB"
    return _json_error(status, error_body(status, message, details), exc.headers)


def with_request_context(app: ASGIApp, observe: RequestObserver) -> ASGIApp:
    """Wraps the whole app, so that every response, unmatched routes included, carries `X-Request-Id`
    (echoed when valid, else made) and is observed once: one log line and the metrics."""

    async def middleware(scope: Any, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await app(scope, receive, send)
            return
        incoming = dict(scope["headers"]).get(b"x-request-id", b"").decode("latin-1")
        rid = incoming if _REQUEST_ID.fullmatch(incoming) else f"{_ID_PREFIX}{next(_ids):08x}"
        scope.setdefault("state", {})["request_id"] = rid
        started = time.perf_counter()
        status = 500

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", []), (b"x-request-id", rid.encode())]
            await send(message)

        try:
            await app(scope, receive, send_with_id)
        finally:
            route = scope.get("path_template") or "unmatched"
            observe(scope["method"], scope["path"], route, status, time.perf_counter() - started, rid)

    return middleware


def create_app(services: HttpServices, *, api: bool = True, debug: bool = False) -> Litestar:
    """The app; `api=False` serves only the operational routes (a process without the api role)."""
    router = Router(
        path="/api/v1",
        route_handlers=[
            *jobs.ROUTES,
            *runs.ROUTES,
            *catalog.ROUTES,
            *meta.ROUTES,
            *events.ROUTES,
            *audit.ROUTES,
        ],
        middleware=[authenticating],
        security=[{"ApiKey": []}, {"Bearer": []}],
    )
    openapi = OpenAPIConfig(
        title="libjobs",
        version="1.0.0",
        description="Per-library cron jobs that keep a library's metadata fresh through provider plugins.",
        path="/schema",
        render_plugins=[ScalarRenderPlugin()],
        components=Components(
            security_schemes={
                "ApiKey": SecurityScheme(type="apiKey", name="X-API-Key", security_scheme_in="header"),
                "Bearer": SecurityScheme(type="http", scheme="bearer", bearer_format="JWT"),
            }
        ),
    )
    app = Litestar(
        route_handlers=[router, *ops.ROUTES] if api else ops.ROUTES,
        exception_handlers={Exception: handle_error},
        openapi_config=openapi,
        request_max_body_size=services.max_body_bytes,
        debug=debug,
        logging_config=None,
    )
    app.state["services"] = services
    return app
