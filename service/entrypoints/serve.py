"""`libjobs serve`: the HTTP server around a wired app, with a graceful stop on SIGTERM/SIGINT."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Iterator
from types import FrameType

import uvicorn
from litestar.types import ASGIApp


class _Server(uvicorn.Server):
    on_exit: Callable[[], None] | None = None

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        # uvicorn drains open connections before the app's shutdown runs: event streams never end by
        # themselves, so end them first or the drain waits for its whole timeout
        if self.on_exit is not None and self.started:
            asyncio.get_running_loop().call_soon_threadsafe(self.on_exit)
        super().handle_exit(sig, frame)

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        # uvicorn re-raises a captured SIGTERM/SIGINT after its graceful shutdown, so the process would
        # die of the signal; a requested stop that drained cleanly is a normal exit (code 0).
        with super().capture_signals():
            yield
            self._captured_signals.clear()


def run_server(
    app: ASGIApp, *, host: str, port: int, drain_s: float = 30, on_exit: Callable[[], None] | None = None
) -> int:
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        log_config=None,
        access_log=False,
        lifespan="on",
        # Explicit, so the server does not change with what else is installed. httptools and uvloop
        # serve more requests but speed a bare app far more than libjobs, whose time is its own, so the
        # ratios the read targets set fall below them (docs/benchmarks.md compares the stacks).
        loop="asyncio",
        http="h11",
        timeout_graceful_shutdown=int(drain_s),
    )
    server = _Server(config)
    server.on_exit = on_exit
    server.run()  # SIGTERM/SIGINT: stop accepting, finish in-flight requests, run shutdown, return
    return 0 if server.started else 1
