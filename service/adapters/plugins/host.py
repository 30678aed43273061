"""Runs provider plugins as child processes and calls them over JSON-RPC on stdio (SPEC §7).

`PluginProcess` is one running plugin: a reader task demultiplexes replies by id to the waiting calls,
another forwards stderr (the plugin's log) to the `libjobs.plugin.<name>` logger. `PluginHost` owns one
process per configured plugin: it starts a plugin on first use, reuses it, restarts it when it died or
stopped answering, stops it when idle and at shutdown. Whatever a plugin does (hang, crash, flood stdout,
answer garbage) fails the calls it affects, never the host.

Credentials are sent in `initialize` only; they are never logged, and their values are masked in
everything the host logs or raises (stderr lines, error messages, garbage excerpts).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import itertools
import logging
import os
import signal
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from msgspec import UNSET

from service.adapters.plugins.protocol import (
    MAX_LINE_BYTES,
    METHOD_NOT_FOUND,
    ErrorObject,
    Manifest,
    PluginCallError,
    PluginError,
    PluginProtocolError,
    PluginTimeout,
    PluginUnavailable,
    Request,
    Response,
    call_error,
    decode,
    encode,
    to_error_object,
)
from service.settings import PluginSpec

__all__ = ["Manifest", "PluginHost", "PluginProcess"]

log = logging.getLogger(__name__)

_MASK = "***"
_EXCERPT_CHARS = 200
_LOG_LINE_CHARS = 8000
_ERROR_MESSAGE_CHARS = 1000


def _child_env(spec: PluginSpec) -> dict[str, str]:
    # The service's own LIBJOBS_* settings (API keys, database URL) are not the plugin's business;
    # LIBJOBS_FIXTURE_* are the reference plugin's knobs and pass through.
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("LIBJOBS_") or k.startswith("LIBJOBS_FIXTURE_")
    }
    env.update(spec.env)
    return env


def _truncate(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[:limit] + "…"


class PluginProcess:
    """One running plugin process. Use `start()` once, then `call()` concurrently, then `stop()`."""

    def __init__(
        self,
        spec: PluginSpec,
        *,
        start_timeout_s: float = 10.0,
        shutdown_grace_s: float = 2.0,
        max_line_bytes: int = MAX_LINE_BYTES,
    ) -> None:
        self.spec = spec
        self._start_timeout_s = start_timeout_s
        self._grace_s = shutdown_grace_s
        self._max_line = max_line_bytes
        self._plugin_log = logging.getLogger(f"libjobs.plugin.{spec.name}")
        # longest first, so a secret containing another is masked whole
        self._secrets = sorted({v for v in spec.credentials.values() if v}, key=len, reverse=True)
        self._proc: asyncio.subprocess.Process | None = None
        self._pending: dict[int, tuple[str, asyncio.Future[Any]]] = {}  # id → (method, reply)
        self._ids = itertools.count(1)
        self._tasks: list[asyncio.Task[None]] = []
        self._stderr_tail: collections.deque[str] = collections.deque(maxlen=1)
        self._down: PluginUnavailable | None = None  # set once the process can no longer be used
        self._stopping = False
        self.manifest: Manifest | None = None
        self.suspect = False  # a call timed out: health-check with ping before the next use

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def returncode(self) -> int | None:
        return self._proc.returncode if self._proc is not None else None

    @property
    def usable(self) -> bool:
        proc = self._proc
        return proc is not None and self._down is None and not self._stopping and proc.returncode is None

    def redact(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, _MASK)
        return text

    # -- lifecycle -----------------------------------------------------------------------------------

    async def start(self) -> Manifest:
        """Spawn the process and `initialize` it. Failures raise `PluginUnavailable` (`start_failed`)."""
        if self._proc is not None:
            raise RuntimeError(f"plugin {self.name!r} was already started")
        spec = self.spec
        if not spec.command:
            raise self._start_failed("has no command configured")
        log.info("starting plugin %s: %s", spec.name, self.redact(" ".join(spec.command)))
        try:
            self._proc = await asyncio.create_subprocess_exec(
                *spec.command,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                env=_child_env(spec),
                cwd=spec.cwd,
                limit=self._max_line,
                # own process group: killing it also kills wrappers' children (npx → node)
                start_new_session=True,
            )
        except FileNotFoundError as exc:
            if spec.cwd and exc.filename == spec.cwd:
                raise self._start_failed(f"cannot start: working directory {spec.cwd!r} not found") from None
            raise self._start_failed(f"cannot start: command {spec.command[0]!r} not found") from None
        except OSError as exc:
            raise self._start_failed(f"cannot start {spec.command[0]!r}: {exc.strerror or exc}") from None
        assert self._proc.stdout is not None
        assert self._proc.stderr is not None
        self._tasks = [
            asyncio.create_task(self._read_stdout(self._proc.stdout), name=f"plugin-{spec.name}-stdout"),
            asyncio.create_task(self._read_stderr(self._proc.stderr), name=f"plugin-{spec.name}-stderr"),
        ]
        params = {
            "adminConfig": spec.admin_config,
            "userConfig": spec.user_config,
            "credentials": spec.credentials,
        }
        try:
            result = await self._request("initialize", params, self._start_timeout_s)
            self.manifest = Manifest.from_result(result)
        except PluginError as exc:
            await self.stop(graceful=False)
            if isinstance(exc, PluginUnavailable) and exc.reason == "exited" and self._down is not None:
                # it exited before answering; its exit code (and last stderr line) is known once reaped,
                # which a call made after the exit was noticed did not wait for
                exc = self._down
            if isinstance(exc, PluginCallError):
                detail = f"refused to initialize: {exc.message} (code {exc.code})"
            else:
                detail = "failed to initialize: " + str(exc).removeprefix(f"plugin {self.name!r} ")
            raise self._start_failed(detail) from None
        except BaseException:  # cancelled while starting: never leak the process
            await self.stop(graceful=False)
            raise
        log.info(
            "plugin %s started (pid %s, %s %s, protocol %s, provides %s)",
            spec.name,
            self.pid,
            self.manifest.name,
            self.manifest.version,
            self.manifest.protocol_version,
            ",".join(sorted(self.manifest.capabilities)) or "nothing",
        )
        return self.manifest

    async def stop(self, *, graceful: bool = True) -> None:
        """`shutdown`, close stdin, wait for exit; kill the process group after the grace period."""
        proc = self._proc
        if proc is None:
            return
        was_usable = self.usable
        self._stopping = True  # refuse new calls; an exit from now on is expected
        if graceful and was_usable:
            with contextlib.suppress(PluginError):
                await self._request("shutdown", None, self._grace_s)
        self._mark_down(self._unavailable("was stopped", "stopped"))
        if proc.stdin is not None:
            with contextlib.suppress(OSError):
                proc.stdin.close()
        if not graceful:
            self._kill()
        try:
            await asyncio.wait_for(proc.wait(), self._grace_s)
        except TimeoutError:
            log.warning("plugin %s did not exit within %gs; killing it", self.name, self._grace_s)
            self._kill()
            with contextlib.suppress(TimeoutError):
                # proc.wait() also waits for the pipes; a child that left our group may hold them
                await asyncio.wait_for(proc.wait(), 5.0)
        await self._join_tasks()

    async def ping(self, timeout_s: float) -> Any:
        return await self.call("ping", None, timeout_s)

    # -- calls -----------------------------------------------------------------------------------------

    async def call(self, method: str, params: Any, timeout_s: float) -> Any:
        """Send one request and wait for its reply. Raises a `PluginError` subclass on any failure."""
        if self._proc is None:
            raise self._unavailable("is not running", "stopped")
        if self._down is not None:
            raise self._down
        if self._stopping:
            raise self._unavailable("is stopping", "stopped")
        return await self._request(method, params, timeout_s)

    async def _request(self, method: str, params: Any, timeout_s: float) -> Any:
        proc = self._proc
        assert proc is not None
        assert proc.stdin is not None
        if self._down is not None:
            raise self._down
        req_id = next(self._ids)
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending[req_id] = (method, future)
        try:
            async with asyncio.timeout(timeout_s):
                # JSON-RPC: params, when present, must be structured; omit rather than send null
                request = Request(id=req_id, method=method, params=UNSET if params is None else params)
                proc.stdin.write(encode(request))
                await proc.stdin.drain()
                return await future
        except TimeoutError:
            self.suspect = True
            raise PluginTimeout(
                f"plugin {self.name!r} did not answer {method} within {timeout_s:g}s", plugin=self.name
            ) from None
        except (BrokenPipeError, ConnectionResetError):
            # stdin is gone: the process is dying; its exit is reported by the stdout reader
            raise self._down or self._unavailable(f"closed its input during {method}", "exited") from None
        finally:
            self._pending.pop(req_id, None)

    # -- reading ---------------------------------------------------------------------------------------

    async def _read_stdout(self, stdout: asyncio.StreamReader) -> None:
        try:
            while True:
                try:
                    line = await stdout.readline()
                except ValueError:  # LimitOverrunError: no newline within max_line_bytes
                    self._flooded()
                    break
                if not line:
                    break
                try:
                    self._dispatch(line)
                except Exception:  # a bug here must not kill the reader: the calls would hang
                    log.exception("plugin %s: failed to handle a line from stdout", self.name)
        except asyncio.CancelledError:
            self._mark_down(self._unavailable("was stopped", "stopped"))
            self._fail_pending(self._unavailable("was stopped", "stopped"))
            raise
        await self._on_stdout_closed(stdout)

    def _flooded(self) -> None:
        error = PluginProtocolError(
            f"plugin {self.name!r} wrote a line longer than {self._max_line} bytes", plugin=self.name
        )
        log.warning("%s; killing it", error)
        self._fail_pending(error)
        self._mark_down(self._unavailable("was killed after an over-long line", "exited"))
        self._kill()

    async def _on_stdout_closed(self, stdout: asyncio.StreamReader) -> None:
        proc = self._proc
        assert proc is not None
        # stdout closed: the process is exiting. Refuse new calls now; wait for its exit code (and its
        # last stderr line) to tell the pending calls why.
        provisional = self._down is None
        self._mark_down(self._unavailable("exited", "exited"))
        with contextlib.suppress(Exception):
            while await stdout.read(65536):  # drain whatever a killed flooder left behind
                pass
        try:
            code: int | None = await asyncio.wait_for(proc.wait(), self._grace_s)
        except TimeoutError:
            log.warning("plugin %s closed stdout but did not exit; killing it", self.name)
            self._kill()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(proc.wait(), 5.0)
            code = proc.returncode
        stderr_task = self._tasks[1] if len(self._tasks) > 1 else None
        if stderr_task is not None:
            await asyncio.wait({stderr_task}, timeout=0.5)
        tail = f" (last stderr: {self._stderr_tail[-1]})" if self._stderr_tail else ""
        if provisional:
            self._down = self._unavailable(f"exited with code {code}{tail}", "exited")
            if not self._stopping:
                log.warning("%s", self._down)
        self._fail_pending(self._down or self._unavailable("exited", "exited"))

    async def _read_stderr(self, stderr: asyncio.StreamReader) -> None:
        while True:
            try:
                raw = await stderr.readline()
            except ValueError:
                self._plugin_log.warning("(a stderr line longer than %d bytes was dropped)", self._max_line)
                continue
            except Exception:
                log.exception("plugin %s: reading stderr failed", self.name)
                return
            if not raw:
                return
            text = self.redact(raw.decode("utf-8", "replace").rstrip())
            if text:
                text = _truncate(text, _LOG_LINE_CHARS)
                self._stderr_tail.append(_truncate(text, _EXCERPT_CHARS))
                self._plugin_log.info("%s", text)

    def _dispatch(self, line: bytes) -> None:
        if not line.strip():
            return
        try:
            message = decode(line)
        except PluginProtocolError:
            self._ignore("a line that is not JSON-RPC", line)
            return
        if message.is_request:
            # plugin → host requests (e.g. storage/*): answer, so the plugin does not wait forever
            self._reply_error(message.id, METHOD_NOT_FOUND, f"host does not serve {message.method}")
            return
        if message.is_notification:
            log.debug("plugin %s: ignored notification %s", self.name, message.method)
            return
        if message.method is not UNSET or not message.valid_id:
            self._ignore("a message that is neither a request nor a response", line)
            return
        pending = self._pending.get(message.id) if isinstance(message.id, int) else None
        if pending is None or pending[1].done():
            log.debug("plugin %s: ignored a reply to unknown or finished call %r", self.name, message.id)
            return
        method, future = pending
        if message.error is not UNSET:
            future.set_exception(self._error_for(message.error, method))
        elif message.result is UNSET:
            future.set_exception(self._bad_reply(method, "it has neither result nor error"))
        else:
            future.set_result(message.result)

    def _bad_reply(self, method: str, why: str) -> PluginProtocolError:
        return PluginProtocolError(
            f"plugin {self.name!r} sent a bad reply to {method}: {why}", plugin=self.name
        )

    def _error_for(self, value: Any, method: str) -> PluginError:
        try:
            error = to_error_object(value)
        except PluginProtocolError as exc:
            return self._bad_reply(method, str(exc))
        message = _truncate(self.redact(error.message), _ERROR_MESSAGE_CHARS)
        return call_error(ErrorObject(error.code, message, error.data), plugin=self.name, method=method)

    def _reply_error(self, req_id: Any, code: int, message: str) -> None:
        proc = self._proc
        if proc is None or proc.stdin is None or proc.stdin.is_closing():
            return
        # a small write without drain: flow control would only matter for a plugin flooding requests
        proc.stdin.write(encode(Response(id=req_id, error=ErrorObject(code, message))))

    def _ignore(self, what: str, line: bytes) -> None:
        excerpt = _truncate(self.redact(line.decode("utf-8", "replace").rstrip()), _EXCERPT_CHARS)
        log.warning("plugin %s wrote %s on stdout (ignored): %r", self.name, what, excerpt)

    # -- helpers ---------------------------------------------------------------------------------------

    def _unavailable(self, what: str, reason: str) -> PluginUnavailable:
        return PluginUnavailable(f"plugin {self.name!r} {what}", plugin=self.name, reason=reason)

    def _start_failed(self, what: str) -> PluginUnavailable:
        error = self._unavailable(what, "start_failed")
        log.warning("%s", error)
        return error

    def _mark_down(self, error: PluginUnavailable) -> None:
        if self._down is None:
            self._down = error

    def _fail_pending(self, error: PluginError) -> None:
        pending, self._pending = self._pending, {}
        for _, future in pending.values():
            if not future.done():
                future.set_exception(error)

    def _kill(self) -> None:
        proc = self._proc
        if proc is None or proc.returncode is not None:
            return
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # start_new_session: the group id is the pid
        except ProcessLookupError:
            pass
        except PermissionError:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()

    async def _join_tasks(self) -> None:
        tasks = [t for t in self._tasks if not t.done()]
        if tasks:
            _, still = await asyncio.wait(tasks, timeout=self._grace_s)
            for task in still:
                task.cancel()
            await asyncio.gather(*still, return_exceptions=True)


@dataclass
class _Slot:
    spec: PluginSpec
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    process: PluginProcess | None = None
    manifest: Manifest | None = None
    in_use: int = 0
    last_used: float = 0.0


class PluginHost:
    """All configured plugins: start on first use, reuse, restart when dead, stop when idle or closed."""

    def __init__(
        self,
        specs: Iterable[PluginSpec],
        *,
        call_timeout_s: float = 60.0,
        start_timeout_s: float = 10.0,
        idle_timeout_s: float = 300.0,
        ping_timeout_s: float = 5.0,
        shutdown_grace_s: float = 2.0,
        max_line_bytes: int = MAX_LINE_BYTES,
    ) -> None:
        self._slots: dict[str, _Slot] = {}
        for spec in specs:
            if spec.name in self._slots:
                raise ValueError(f"plugin {spec.name!r} is configured twice")
            self._slots[spec.name] = _Slot(spec)
        self.call_timeout_s = call_timeout_s
        self.start_timeout_s = start_timeout_s
        self.idle_timeout_s = idle_timeout_s
        self.ping_timeout_s = ping_timeout_s
        self.shutdown_grace_s = shutdown_grace_s
        self.max_line_bytes = max_line_bytes
        self._reaper: asyncio.Task[None] | None = None
        self._closed = False

    async def __aenter__(self) -> PluginHost:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def spec(self, name: str) -> PluginSpec | None:
        slot = self._slots.get(name)
        return slot.spec if slot is not None else None

    def specs(self) -> tuple[PluginSpec, ...]:
        return tuple(slot.spec for slot in self._slots.values())

    def pid(self, name: str) -> int | None:
        """The running process of a plugin, if any (for diagnostics)."""
        slot = self._slots.get(name)
        process = slot.process if slot is not None else None
        return process.pid if process is not None and process.usable else None

    async def manifest(self, name: str) -> Manifest:
        """The plugin's manifest: from the last `initialize`, starting the plugin only if never started."""
        slot = self._slot(name)
        if slot.manifest is not None:
            return slot.manifest
        await self._lease(slot)
        self._release(slot)
        assert slot.manifest is not None
        return slot.manifest

    async def call(
        self, name: str, method: str, params: Any = None, *, timeout_s: float | None = None
    ) -> Any:
        """Call `method` on plugin `name`; raises a `PluginError` subclass when the call fails."""
        slot = self._slot(name)
        process = await self._lease(slot)
        try:
            return await process.call(method, params, self.call_timeout_s if timeout_s is None else timeout_s)
        finally:
            self._release(slot)

    async def ping(self, name: str) -> Any:
        return await self.call(name, "ping", None, timeout_s=self.ping_timeout_s)

    async def stop(self, name: str) -> None:
        """Stop one plugin now; the next call starts it again."""
        slot = self._slot(name)
        async with slot.lock:
            await self._stop_slot(slot)

    async def stop_idle(self) -> list[str]:
        """One sweep: stop plugins unused for `idle_timeout_s`, and reap dead ones. Returns their names."""
        stopped = []
        for slot in self._slots.values():
            if slot.process is None or slot.in_use or not self._idle(slot):
                continue
            async with slot.lock:
                if slot.process is not None and not slot.in_use and self._idle(slot):
                    if slot.process.usable:
                        log.info("stopping idle plugin %s", slot.spec.name)
                    await self._stop_slot(slot)
                    stopped.append(slot.spec.name)
        return stopped

    def start_idle_reaper(self, interval_s: float | None = None) -> None:
        """Run `stop_idle` periodically in the background until `stop_idle_reaper` or `aclose`."""
        if self._reaper is None or self._reaper.done():
            interval = interval_s if interval_s is not None else min(max(self.idle_timeout_s / 4, 0.05), 30.0)
            self._reaper = asyncio.create_task(self._reap_forever(interval), name="plugin-idle-reaper")

    async def stop_idle_reaper(self) -> None:
        reaper, self._reaper = self._reaper, None
        if reaper is not None:
            reaper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reaper

    async def aclose(self) -> None:
        """Stop every plugin (gracefully, then killed after the grace period); later calls fail."""
        self._closed = True
        await self.stop_idle_reaper()

        async def close(slot: _Slot) -> None:
            async with slot.lock:
                await self._stop_slot(slot)

        await asyncio.gather(*(close(slot) for slot in self._slots.values()))

    # -- internals -------------------------------------------------------------------------------------

    def _slot(self, name: str) -> _Slot:
        slot = self._slots.get(name)
        if slot is None:
            raise PluginUnavailable(
                f"plugin {name!r} is not configured", plugin=name, reason="not_configured"
            )
        if not slot.spec.enabled:
            raise PluginUnavailable(f"plugin {name!r} is disabled", plugin=name, reason="disabled")
        return slot

    async def _lease(self, slot: _Slot) -> PluginProcess:
        """A usable process for one call, counted as in use so the idle reaper leaves it alone."""
        async with slot.lock:
            if self._closed:
                raise PluginUnavailable(
                    f"plugin {slot.spec.name!r} is unavailable: the host is closed",
                    plugin=slot.spec.name,
                    reason="closed",
                )
            process = slot.process
            if process is not None and process.usable and process.suspect:
                await self._health_check(process)
            if process is None or not process.usable:
                if process is not None:
                    await process.stop(graceful=False)  # reap the dead one
                process = PluginProcess(
                    slot.spec,
                    start_timeout_s=self.start_timeout_s,
                    shutdown_grace_s=self.shutdown_grace_s,
                    max_line_bytes=self.max_line_bytes,
                )
                slot.process = process
                slot.manifest = await process.start()
            slot.in_use += 1
            slot.last_used = time.monotonic()
            return process

    async def _health_check(self, process: PluginProcess) -> None:
        # A call timed out: a plugin that cannot even answer ping is hung, so restart it.
        try:
            await process.ping(self.ping_timeout_s)
            process.suspect = False
        except PluginError as exc:
            log.warning("plugin %s failed its health check (%s); restarting it", process.name, exc)
            await process.stop(graceful=False)

    def _release(self, slot: _Slot) -> None:
        slot.in_use -= 1
        slot.last_used = time.monotonic()

    def _idle(self, slot: _Slot) -> bool:
        process = slot.process
        if process is not None and not process.usable:
            return True  # dead: reap it regardless of age
        return time.monotonic() - slot.last_used >= self.idle_timeout_s

    async def _stop_slot(self, slot: _Slot) -> None:
        process, slot.process = slot.process, None
        if process is not None:
            await process.stop()

    async def _reap_forever(self, interval_s: float) -> None:
        while True:
            await asyncio.sleep(interval_s)
            try:
                await self.stop_idle()
            except Exception:  # keep reaping: one bad stop must not end idle management
                log.exception("stopping idle plugins failed")
