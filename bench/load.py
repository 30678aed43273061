"""HTTP load from `wrk` (C, epoll, keep-alive) on loopback, so the client is never the bottleneck.

Both sides of every comparison are driven by the same `wrk` invocation with the same connections,
duration, headers and body. A small Lua script sets method, headers and body and prints wrk's summary
as one JSON line; the CPU seconds of wrk and of the server are measured around the run so the table can
show that the server, not the client, was saturated.
"""

from __future__ import annotations

import json
import resource
import shutil
import subprocess
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from bench.common import median, process_cpu_seconds

MARKER = "WRK-JSON "
_DONE = """
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "%s{\\"requests\\":%d,\\"duration_us\\":%d,\\"connect\\":%d,\\"read\\":%d,\\"write\\":%d,"
    .. "\\"status\\":%d,\\"timeout\\":%d,\\"p50_us\\":%d,\\"p99_us\\":%d}\\n",
    "MARKER", summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(99)))
end
""".replace("MARKER", MARKER)


class LoadGeneratorMissing(RuntimeError):
    pass


def wrk_path() -> str:
    found = shutil.which("wrk")
    if found is None:
        raise LoadGeneratorMissing("wrk is not installed: apt-get install -y wrk (see bench/README.md)")
    return found


def _lua_string(text: str) -> str:
    return f"[==[{text}]==]"


@dataclass(frozen=True)
class Load:
    """One kind of request, sent by `connections` keep-alive connections as fast as the server answers."""

    url: str
    method: str = "GET"
    headers: Mapping[str, str] = field(default_factory=dict)
    body: bytes = b""
    connections: int = 16

    def script(self) -> str:
        lines = [f"wrk.method = {_lua_string(self.method)}"]
        if self.body:
            lines.append(f"wrk.body = {_lua_string(self.body.decode())}")
        lines += [f"wrk.headers[ {_lua_string(k)} ] = {_lua_string(v)}" for k, v in self.headers.items()]
        return "\n".join(lines) + _DONE


@dataclass(frozen=True)
class LoadResult:
    requests: int
    seconds: float
    errors: int  # socket errors and timeouts
    bad_status: int  # responses with status >= 400
    p50_ms: float
    p99_ms: float
    client_cpu: float  # cores used by wrk
    server_cpu: float | None  # cores used by the server process, when its pid was given

    @property
    def rps(self) -> float:
        return self.requests / self.seconds


def run_load(load: Load, seconds: float, *, server_pid: int | None = None) -> LoadResult:
    """Runs wrk for `seconds`; fails loudly if any request failed (a fast error is not a fast server)."""
    result = _run_wrk(load, seconds, server_pid)
    if result.errors or result.bad_status:
        raise RuntimeError(
            f"{load.method} {load.url}: {result.errors} socket errors, {result.bad_status} error statuses "
            f"of {result.requests} requests"
        )
    return result


def _run_wrk(load: Load, seconds: float, server_pid: int | None) -> LoadResult:
    with tempfile.NamedTemporaryFile("w", suffix=".lua") as script:
        script.write(load.script())
        script.flush()
        command = [
            wrk_path(), "-t1", f"-c{load.connections}", f"-d{seconds:g}s", "--timeout", "10s",
            "-s", script.name, load.url,
        ]  # fmt: skip
        before_client = resource.getrusage(resource.RUSAGE_CHILDREN)
        before_server = process_cpu_seconds(server_pid) if server_pid else 0.0
        done = subprocess.run(command, capture_output=True, text=True, timeout=seconds + 30, check=False)
        server_cpu = process_cpu_seconds(server_pid) - before_server if server_pid else None
        after_client = resource.getrusage(resource.RUSAGE_CHILDREN)
    summary = next((ln for ln in done.stdout.splitlines() if ln.startswith(MARKER)), None)
    if done.returncode != 0 or summary is None:
        raise RuntimeError(f"wrk failed ({done.returncode}): {done.stdout}\n{done.stderr}")
    data = json.loads(summary.removeprefix(MARKER))
    elapsed = data["duration_us"] / 1e6
    client_cpu = (after_client.ru_utime + after_client.ru_stime) - (
        before_client.ru_utime + before_client.ru_stime
    )
    return LoadResult(
        requests=data["requests"],
        seconds=elapsed,
        errors=data["connect"] + data["read"] + data["write"] + data["timeout"],
        bad_status=data["status"],
        p50_ms=data["p50_us"] / 1000,
        p99_ms=data["p99_us"] / 1000,
        client_cpu=client_cpu / elapsed,
        server_cpu=server_cpu / elapsed if server_cpu is not None else None,
    )


def rps_sampler(load: Load, seconds: float, server_pid: int, log: list[LoadResult]) -> float:
    """One round for `interleave`: requests/s, with the full result kept in `log`."""
    result = run_load(load, seconds, server_pid=server_pid)
    log.append(result)
    return result.rps


def summarize(results: list[LoadResult]) -> dict[str, Any]:
    """The medians worth keeping in the JSON next to the requests/s."""
    return {
        "rounds": len(results),
        "rps_samples": [round(r.rps, 1) for r in results],
        "p50_ms": round(median([r.p50_ms for r in results]), 2),
        "p99_ms": round(median([r.p99_ms for r in results]), 2),
        "server_cpu_cores": round(median([r.server_cpu or 0.0 for r in results]), 2),
        "client_cpu_cores": round(median([r.client_cpu for r in results]), 2),
        "requests": sum(r.requests for r in results),
    }
