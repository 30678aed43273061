"""The Litestar app: routes, auth, JSON errors for everything, request ids, metrics, OpenAPI."""

from __future__ import annotations

import logging
import re
import time
import uuid
from typing import Any

import msgspec
from litestar import Litestar, Request, Response, Router
from litestar.exceptions import HTTPException, ValidationException
from litestar.openapi import OpenAPIConfig
from litestar.openapi.plugins import ScalarRenderPlugin
from litestar.openapi.spec import Components, SecurityScheme
from litestar.types import ASGIApp, Message, Receive, Send

from service.domain.errors import DomainError
from service.entrypoints.errors import decode_error_details, domain_error, error_body, status_phrase
from service.entrypoints.http import catalog, jobs, meta, ops
from service.entrypoints.http.auth import AuthError
from service.entrypoints.http.common import JSON, HttpServices, Metrics

log = logging.getLogger("libjobs.http")
BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})
_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
_JSON_TYPE = re.compile(r"application/(?:[\w.+-]+\+)?json")


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
        details = decode_error_details(message, extra.get("key"))
        if request.method == "PATCH" and details == {"field": "config.type", "code": "invalid_value"}:
            # Only metadata_refresh exists, so any other type on a PATCH differs from the job's.
            details["code"] = "type_mismatch"
            message = "config.type must equal the job's type (metadata_refresh)"
        text = f"Invalid request: {details['field']}: {message}"
        return _json_error(400, error_body(400, text, details))
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


def with_request_context(app: ASGIApp, metrics: Metrics) -> ASGIApp:
    """Wraps the whole app, so that every response, unmatched routes included, carries `X-Request-Id`
    (echoed when valid, else made), is logged in one line and counted in the metrics."""

    async def middleware(scope: Any, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await app(scope, receive, send)
            return
        incoming = dict(scope["headers"]).get(b"x-request-id", b"").decode("latin-1")
        rid = incoming if _REQUEST_ID.fullmatch(incoming) else uuid.uuid4().hex
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
            elapsed = time.perf_counter() - started
            route = scope.get("path_template") or "unmatched"
            metrics.observe_request(scope["method"], route, status, elapsed)
            log.info(
                "%s %s %d %.1fms",
                scope["method"],
                scope["path"],
                status,
                elapsed * 1000,
                extra={
                    "request_id": rid,
                    "route": route,
                    "status": status,
                    "duration_ms": round(elapsed * 1000, 2),
                },
            )

    return middleware


def create_app(services: HttpServices, *, api: bool = True, debug: bool = False) -> Litestar:
    """The app; `api=False` serves only the operational routes (a process without the api role)."""
    router = Router(
        path="/api/v1",
        route_handlers=[*jobs.ROUTES, *catalog.ROUTES, *meta.ROUTES],
        middleware=[authenticating],
        before_request=check_body,
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
