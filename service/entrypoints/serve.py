"""`libjobs serve`: the HTTP server around a wired app, with a graceful stop on SIGTERM/SIGINT."""

from __future__ import annotations

import uvicorn
from litestar import Litestar


def run_server(app: Litestar, *, host: str, port: int, drain_s: float = 30) -> int:
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        log_config=None,
        access_log=False,
        lifespan="on",
        timeout_graceful_shutdown=int(drain_s),
    )
    server = uvicorn.Server(config)
    server.run()  # SIGTERM/SIGINT: stop accepting, finish in-flight requests, run shutdown, return
    return 0 if server.started else 1
