"""Unauthenticated operational routes: liveness, readiness and Prometheus metrics."""

from __future__ import annotations

from typing import Any

from litestar import Request, Response, get
from litestar.status_codes import HTTP_200_OK, HTTP_503_SERVICE_UNAVAILABLE

from service.entrypoints.http.common import services


@get("/healthz", operation_id="healthz", summary="Liveness: the process answers", tags=["operations"])
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@get(
    "/readyz",
    operation_id="readyz",
    summary="Readiness: store reachable, read models caught up (503 when not ready)",
    tags=["operations"],
)
async def readyz(request: Request[Any, Any, Any]) -> Response[dict[str, Any]]:
    ready, checks = await services(request).readiness()
    status = HTTP_200_OK if ready else HTTP_503_SERVICE_UNAVAILABLE
    return Response({"status": "ok" if ready else "unavailable", "checks": checks}, status_code=status)


@get(
    "/metrics",
    operation_id="metrics",
    summary="Prometheus metrics",
    tags=["operations"],
    include_in_schema=True,
)
async def metrics(request: Request[Any, Any, Any]) -> Response[bytes]:
    svc = services(request)
    body, content_type = await svc.run_sync(svc.metrics.render)  # a gauge asks the store: not on the loop
    return Response(body, media_type=content_type)


ROUTES = [healthz, readyz, metrics]
