"""The service's one NATS connection: connect (and keep trying), reconnect forever, report health.

nats-py reconnects by itself once connected, but gives up when the *first* connection fails; a service
that starts while NATS is down must still start (HTTP keeps serving, `/readyz` says NATS is down) and
connect when NATS comes. So the first connection is retried here with backoff, and whatever needs NATS
(streams, the relay, the command subscriber) runs from `on_connect` callbacks, in order, after it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import nats
from nats.aio.client import Client
from nats.js import JetStreamContext

log = logging.getLogger("libjobs.nats")
OnConnect = Callable[[Client, JetStreamContext], Awaitable[None]]
_FIRST_BACKOFF_S = 0.2
_MAX_BACKOFF_S = 5.0


@dataclass(frozen=True)
class NatsOptions:
    urls: Sequence[str]
    name: str = "libjobs"
    creds: Path | None = None
    tls_ca: Path | None = None
    tls_cert: Path | None = None
    tls_key: Path | None = None

    def tls(self) -> ssl.SSLContext | None:
        """A TLS context when a CA or a client certificate is configured (a `tls://` URL alone uses the
        system's CAs, which nats-py sets up itself)."""
        if self.tls_ca is None and self.tls_cert is None:
            return None
        context = ssl.create_default_context(cafile=str(self.tls_ca) if self.tls_ca else None)
        if self.tls_cert is not None and self.tls_key is not None:
            context.load_cert_chain(str(self.tls_cert), str(self.tls_key))
        return context


class NatsLink:
    def __init__(self, options: NatsOptions, on_connect: Sequence[OnConnect] = ()) -> None:
        self._options = options
        self._on_connect = list(on_connect)
        self._client: Client | None = None
        self._task: asyncio.Task[None] | None = None
        self._ready = asyncio.Event()  # connected once and every on_connect callback ran
        self._closing = False
        self.last_error: str | None = None

    @property
    def client(self) -> Client:
        if self._client is None:
            raise RuntimeError("NATS is not connected yet")
        return self._client

    @property
    def connected(self) -> bool:
        return self._ready.is_set() and self._client is not None and self._client.is_connected

    def start(self) -> None:
        """Connects in the background; `wait_ready` waits for it."""
        self._task = asyncio.create_task(self._connect_until_done(), name="nats-connect")

    async def wait_ready(self, timeout_s: float | None = None) -> None:
        await asyncio.wait_for(self._ready.wait(), timeout_s)

    async def _connect_until_done(self) -> None:
        backoff = _FIRST_BACKOFF_S
        while True:
            try:
                client = await self._connect()
                break
            except Exception as e:  # NATS down, bad credentials, TLS: retry, and say why
                self.last_error = f"{type(e).__name__}: {e}"
                log.warning("cannot connect to NATS; retrying", extra={"error": self.last_error})
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, _MAX_BACKOFF_S)
        self._client = client
        js = client.jetstream()
        backoff = _FIRST_BACKOFF_S
        for callback in self._on_connect:
            while True:
                try:
                    await callback(client, js)
                    break
                except Exception as e:  # e.g. JetStream not ready yet after a restart
                    self.last_error = f"{type(e).__name__}: {e}"
                    log.warning("NATS set-up step failed; retrying", extra={"error": self.last_error})
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, _MAX_BACKOFF_S)
        self.last_error = None
        self._ready.set()
        log.info(
            "connected to NATS",
            extra={"url": client.connected_url.geturl() if client.connected_url else None},
        )

    async def _connect(self) -> Client:
        options = self._options

        async def on_error(e: Exception) -> None:
            self.last_error = f"{type(e).__name__}: {e}"
            log.warning("NATS connection error", extra={"error": self.last_error})

        async def on_disconnected() -> None:
            if not self._closing:
                log.warning("disconnected from NATS; reconnecting")

        async def on_reconnected() -> None:
            self.last_error = None
            log.info("reconnected to NATS")

        return await nats.connect(
            servers=list(options.urls),
            name=options.name,
            user_credentials=str(options.creds) if options.creds else None,
            tls=options.tls(),
            allow_reconnect=True,
            max_reconnect_attempts=-1,  # an outage of any length ends in a reconnect
            reconnect_time_wait=0.5,
            connect_timeout=2,
            error_cb=on_error,
            disconnected_cb=on_disconnected,
            reconnected_cb=on_reconnected,
        )

    async def close(self) -> None:
        self._closing = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._client is not None and not self._client.is_closed:
            # The command subscriber has drained and the relay has stopped by now: only buffered replies
            # are left to send, so a flush does (a drain would wait on every internal subscription).
            with contextlib.suppress(Exception):  # already gone: nothing left to flush
                await asyncio.wait_for(self._client.flush(), 2)
            with contextlib.suppress(Exception):
                await self._client.close()
