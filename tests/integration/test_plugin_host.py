"""The plugin host against real processes: the fixture plugin and small misbehaving plugins."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sys
import textwrap
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from service.adapters.plugins.host import PluginHost, PluginProcess
from service.adapters.plugins.protocol import (
    API_ERROR,
    AUTH_FAILED,
    METHOD_NOT_FOUND,
    NOT_FOUND,
    PluginCallError,
    PluginProtocolError,
    PluginRateLimited,
    PluginTimeout,
    PluginUnavailable,
)
from service.settings import PluginSpec

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
ENV = {"PYTHONPATH": str(REPO)}  # the fixture runs as `python -m service...` from any cwd
SECRET = "s3cr3t-t0ken-value"

DATA: dict[str, Any] = {
    "series": {
        "s-1": {
            "title": "One Piece",
            "externalUrl": "https://example.org/s-1",
            "metadata": {"summary": "Pirates.", "year": 1997, "genres": ["Action"]},
        },
        "s-2": {"title": "Naruto", "metadata": {"year": 1999}},
    },
    "books": {"b-1": {"title": "Romance Dawn", "metadata": {"isbn": "978-1-56931-901-7", "number": 1}}},
    "matches": {"one piece (2023)": "s-1"},
    "failIds": ["s-9"],
    "rateLimitIds": {"s-2": {"times": 1, "retryAfterSeconds": 0.25}},
}

# One small plugin that misbehaves on request: the method name (or argv[1] for start/stop) says how.
BAD_PLUGIN = textwrap.dedent(
    """
    import json, os, signal, sys, time

    MODE = sys.argv[1] if len(sys.argv) > 1 else ""
    token = ""

    def send(obj):
        sys.stdout.write(json.dumps(obj) + "\\n")
        sys.stdout.flush()

    def garbage():
        sys.stdout.write("this is not json\\n")
        send([1, 2, 3])
        send({"jsonrpc": "2.0", "method": "log", "params": {"msg": "a notification"}})
        send({"jsonrpc": "2.0", "id": 98765, "result": "reply to a call nobody made"})
        send({"jsonrpc": "2.0", "id": None, "error": {"code": -32700, "message": "parse error"}})

    if MODE == "stubborn":
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    while True:
        line = sys.stdin.readline()
        if not line:
            if MODE == "stubborn":
                time.sleep(3600)
            break
        msg = json.loads(line)
        i, method, params = msg.get("id"), msg.get("method"), msg.get("params") or {}
        if method == "initialize":
            token = params["credentials"].get("token", "")
            if MODE == "hang-init":
                time.sleep(3600)
            if token:
                print(f"starting with token {token}", file=sys.stderr, flush=True)
            send({"jsonrpc": "2.0", "id": i, "result": {
                "name": "bad", "version": "0.1", "protocolVersion": "1.0",
                "capabilities": {"metadataProvider": ["series", "comics"]}}})
        elif method == "ping":
            send({"jsonrpc": "2.0", "id": i, "result": "pong"})
        elif method == "shutdown":
            if MODE == "stubborn":
                continue
            send({"jsonrpc": "2.0", "id": i, "result": None})
            sys.exit(0)
        elif method == "echo":
            send({"jsonrpc": "2.0", "id": i, "result": {"params": params, "pid": os.getpid()}})
        elif method == "hang":
            time.sleep(3600)
        elif method == "crash":
            print("about to crash", file=sys.stderr, flush=True)
            os._exit(3)
        elif method == "garbage":
            garbage()
        elif method == "garbage-then-answer":
            garbage()
            send({"jsonrpc": "2.0", "id": i, "result": "ok"})
        elif method == "no-result":
            send({"jsonrpc": "2.0", "id": i})
        elif method == "bad-error":
            send({"jsonrpc": "2.0", "id": i, "error": "boom"})
        elif method == "flood":
            sys.stdout.write("x" * (2 * 1024 * 1024) + "\\n")
            sys.stdout.flush()
        elif method == "ask":
            send({"jsonrpc": "2.0", "id": "s1", "method": "storage/get", "params": {"key": "k"}})
            send({"jsonrpc": "2.0", "id": i, "result": json.loads(sys.stdin.readline())})
        elif method == "leak":
            print(f"calling the API with {token}", file=sys.stderr, flush=True)
            send({"jsonrpc": "2.0", "id": i, "error": {"code": -32003, "message": f"token {token} refused"}})
        else:
            send({"jsonrpc": "2.0", "id": i, "error": {"code": -32601, "message": "no such method"}})
    """
)

MakeHost = Callable[..., PluginHost]


def _gone(pid: int | None) -> bool:
    assert pid is not None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


@pytest.fixture
def data_file(tmp_path: Path) -> Path:
    path = tmp_path / "fixture.json"
    path.write_text(json.dumps(DATA))
    return path


@pytest.fixture
def bad_script(tmp_path: Path) -> Path:
    path = tmp_path / "bad_plugin.py"
    path.write_text(BAD_PLUGIN)
    return path


def fixture_spec(data: Path, name: str = "fixture", **kw: Any) -> PluginSpec:
    env = {**ENV, **kw.pop("env", {})}
    command = (sys.executable, "-m", "service.adapters.plugins.fixture", "--data", str(data))
    return PluginSpec(name=name, command=command, env=env, **kw)


def bad_spec(script: Path, mode: str = "", name: str = "bad", **kw: Any) -> PluginSpec:
    return PluginSpec(name=name, command=(sys.executable, str(script), mode), **kw)


@pytest.fixture
async def make_host() -> AsyncIterator[MakeHost]:
    hosts: list[PluginHost] = []

    def make(*specs: PluginSpec, **kw: Any) -> PluginHost:
        kw.setdefault("call_timeout_s", 10.0)
        kw.setdefault("start_timeout_s", 10.0)
        kw.setdefault("shutdown_grace_s", 1.0)
        host = PluginHost(specs, **kw)
        hosts.append(host)
        return host

    yield make
    for host in hosts:
        await host.aclose()


async def test_fixture_serves_series_and_books(make_host: MakeHost, data_file: Path) -> None:
    host = make_host(fixture_spec(data_file))

    manifest = await host.manifest("fixture")
    assert (manifest.name, manifest.protocol_version) == ("fixture", "1.0")
    assert manifest.capabilities == {"series", "book"}

    series = await host.call("fixture", "metadata/series/get", {"externalId": "s-1"})
    assert series == {
        "externalId": "s-1",
        "externalUrl": "https://example.org/s-1",
        "title": "One Piece",
        "summary": "Pirates.",
        "year": 1997,
        "genres": ["Action"],
    }
    by_title = await host.call("fixture", "metadata/series/match", {"title": "ONE piece", "year": 1997})
    assert by_title["match"]["externalId"] == "s-1"
    by_table = await host.call("fixture", "metadata/series/match", {"title": "One Piece (2023)"})
    assert by_table["match"]["externalId"] == "s-1"
    wrong_year = await host.call("fixture", "metadata/series/match", {"title": "One Piece", "year": 2001})
    assert wrong_year["match"] is None
    search = await host.call("fixture", "metadata/series/search", {"query": "o"})
    assert [r["externalId"] for r in search["results"]] == ["s-2", "s-1"]  # by title

    book = await host.call("fixture", "metadata/book/get", {"externalId": "b-1"})
    assert book["title"] == "Romance Dawn"
    assert book["number"] == 1
    by_isbn = await host.call("fixture", "metadata/book/match", {"isbn": "9781569319017"})
    assert by_isbn["match"]["externalId"] == "b-1"

    with pytest.raises(PluginCallError) as missing:
        await host.call("fixture", "metadata/series/get", {"externalId": "nope"})
    assert missing.value.code == NOT_FOUND
    with pytest.raises(PluginCallError) as failing:
        await host.call("fixture", "metadata/series/get", {"externalId": "s-9"})
    assert failing.value.code == API_ERROR
    with pytest.raises(PluginCallError) as unknown:
        await host.call("fixture", "metadata/comics/get", {})
    assert unknown.value.code == METHOD_NOT_FOUND

    with pytest.raises(PluginRateLimited) as limited:
        await host.call("fixture", "metadata/series/get", {"externalId": "s-2"})
    assert limited.value.retry_after_s == 0.25
    assert (await host.call("fixture", "metadata/series/get", {"externalId": "s-2"}))["title"] == "Naruto"


async def test_manifest_is_cached_and_the_process_reused(
    make_host: MakeHost, data_file: Path, tmp_path: Path
) -> None:
    stats = tmp_path / "stats.json"
    host = make_host(fixture_spec(data_file, env={"LIBJOBS_FIXTURE_STATS": str(stats)}))

    first = await host.manifest("fixture")
    pid = host.pid("fixture")
    for method, external_id in [("series", "s-1"), ("book", "b-1"), ("series", "s-1")]:
        await host.call("fixture", f"metadata/{method}/get", {"externalId": external_id})
    assert await host.manifest("fixture") is first
    assert host.pid("fixture") == pid

    written = json.loads(await asyncio.to_thread(stats.read_text))
    assert written["methods"]["initialize"] == 1
    assert written["calls"] == 3


async def test_concurrent_calls_overlap_in_one_process(
    make_host: MakeHost, data_file: Path, tmp_path: Path
) -> None:
    await asyncio.to_thread(data_file.write_text, json.dumps({**DATA, "delayMs": 300, "rateLimitIds": {}}))
    stats = tmp_path / "stats.json"
    host = make_host(fixture_spec(data_file, env={"LIBJOBS_FIXTURE_STATS": str(stats)}))
    await host.manifest("fixture")

    started = time.monotonic()
    results = await asyncio.gather(
        *(host.call("fixture", "metadata/series/get", {"externalId": i}) for i in ["s-1", "s-2"] * 3)
    )
    assert time.monotonic() - started < 1.5  # six 300 ms calls, served together
    assert [r["externalId"] for r in results] == ["s-1", "s-2"] * 3  # each reply reached its caller
    assert (await host.ping("fixture"))["maxInFlight"] == 6
    assert json.loads(await asyncio.to_thread(stats.read_text))["maxInFlight"] == 6


async def _write_data(path: Path, **changes: Any) -> None:
    await asyncio.to_thread(path.write_text, json.dumps({**DATA, **changes}))


async def _stats(path: Path) -> dict[str, Any]:
    stats: dict[str, Any] = json.loads(await asyncio.to_thread(path.read_text))
    return stats


async def test_a_hung_fixture_call_times_out_and_the_next_call_is_served(
    make_host: MakeHost, data_file: Path, tmp_path: Path
) -> None:
    await _write_data(data_file, hangIds=["s-h"])
    stats = tmp_path / "stats.json"
    host = make_host(
        fixture_spec(data_file, env={"LIBJOBS_FIXTURE_STATS": str(stats)}),
        call_timeout_s=0.5,
        ping_timeout_s=1.0,
    )
    await host.manifest("fixture")
    pid = host.pid("fixture")

    started = time.monotonic()
    with pytest.raises(PluginTimeout, match=r"did not answer metadata/series/get within 0\.5s"):
        await host.call("fixture", "metadata/series/get", {"externalId": "s-h"})
    assert time.monotonic() - started < 2

    # only that call hangs: the fixture answers the health-check ping, so the process is kept
    assert (await host.call("fixture", "metadata/series/get", {"externalId": "s-1"}))["title"] == "One Piece"
    assert host.pid("fixture") == pid
    written = await _stats(stats)
    assert written["calls"] == 2
    assert written["maxInFlight"] == 2  # the hung call is still in flight
    assert written["methods"]["ping"] == 1


async def test_a_crashing_fixture_call_fails_and_the_next_call_restarts_it(
    make_host: MakeHost, data_file: Path, tmp_path: Path
) -> None:
    await _write_data(data_file, crashIds=["s-c"])
    stats = tmp_path / "stats.json"
    host = make_host(fixture_spec(data_file, env={"LIBJOBS_FIXTURE_STATS": str(stats)}))
    await host.manifest("fixture")
    pid = host.pid("fixture")

    with pytest.raises(PluginUnavailable, match=r"exited with code 3.*crashing on purpose on s-c") as err:
        await host.call("fixture", "metadata/series/get", {"externalId": "s-c"})
    assert err.value.reason == "exited"
    assert _gone(pid)
    written = await _stats(stats)  # counted before the process exited
    assert (written["calls"], written["methods"]["metadata/series/get"]) == (1, 1)

    assert (await host.call("fixture", "metadata/series/get", {"externalId": "s-1"}))["title"] == "One Piece"
    assert host.pid("fixture") not in (None, pid)
    written = await _stats(stats)  # the new process's own count
    assert (written["calls"], written["methods"]["initialize"]) == (1, 1)


async def test_fixture_garbage_is_logged_and_ignored_and_the_call_times_out(
    make_host: MakeHost, data_file: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="service.adapters.plugins.host")
    await _write_data(data_file, garbageIds=["b-g"])
    stats = tmp_path / "stats.json"
    host = make_host(
        fixture_spec(data_file, env={"LIBJOBS_FIXTURE_STATS": str(stats)}),
        call_timeout_s=0.5,
        ping_timeout_s=1.0,
    )
    await host.manifest("fixture")
    pid = host.pid("fixture")

    with pytest.raises(PluginTimeout, match="metadata/book/get"):
        await host.call("fixture", "metadata/book/get", {"externalId": "b-g"})

    assert "a line that is not JSON-RPC on stdout (ignored): 'this is not json'" in caplog.text
    assert """neither a request nor a response on stdout (ignored): '{"garbage": true}'""" in caplog.text
    assert (await host.call("fixture", "metadata/book/get", {"externalId": "b-1"}))["title"] == "Romance Dawn"
    assert host.pid("fixture") == pid
    written = await _stats(stats)
    assert (written["calls"], written["maxInFlight"]) == (2, 1)


async def test_fixture_per_id_delays(
    make_host: MakeHost, data_file: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="service.adapters.plugins.host")
    await _write_data(data_file, delayByIdMs={"s-1": 600}, rateLimitIds={})
    stats = tmp_path / "stats.json"
    host = make_host(fixture_spec(data_file, env={"LIBJOBS_FIXTURE_STATS": str(stats)}), ping_timeout_s=1.0)
    await host.manifest("fixture")
    pid = host.pid("fixture")
    finished: list[str] = []

    async def get(external_id: str, timeout_s: float | None = None) -> Any:
        result = await host.call(
            "fixture", "metadata/series/get", {"externalId": external_id}, timeout_s=timeout_s
        )
        finished.append(external_id)
        return result

    await asyncio.gather(get("s-1"), get("s-2"))
    assert finished == ["s-2", "s-1"]  # only s-1 is slow, and it did not hold s-2 up
    assert (await _stats(stats))["maxInFlight"] == 2

    with pytest.raises(PluginTimeout, match=r"within 0\.2s"):
        await get("s-1", timeout_s=0.2)
    assert (await get("s-2"))["title"] == "Naruto"  # served while the timed-out call is still running
    for _ in range(100):  # the late reply to the timed-out call arrives (~0.6 s) and is dropped
        if "ignored a reply to unknown or finished call" in caplog.text:
            break
        await asyncio.sleep(0.05)
    assert "ignored a reply to unknown or finished call" in caplog.text
    assert (await get("s-1"))["title"] == "One Piece"
    assert host.pid("fixture") == pid


async def test_a_hanging_call_times_out_and_the_hung_plugin_is_restarted(
    make_host: MakeHost, bad_script: Path
) -> None:
    host = make_host(bad_spec(bad_script), call_timeout_s=0.5, ping_timeout_s=0.5)
    await host.manifest("bad")
    pid = host.pid("bad")

    started = time.monotonic()
    with pytest.raises(PluginTimeout, match=r"did not answer hang within 0\.5s"):
        await host.call("bad", "hang")
    assert time.monotonic() - started < 2

    # it cannot answer ping either (single-threaded, still asleep), so the next call gets a new process
    answer = await host.call("bad", "echo", {"n": 1})
    assert answer["params"] == {"n": 1}
    assert answer["pid"] != pid
    assert _gone(pid)


async def test_a_plugin_that_never_initializes_is_unavailable(bad_script: Path) -> None:
    process = PluginProcess(bad_spec(bad_script, "hang-init"), start_timeout_s=0.5, shutdown_grace_s=0.5)
    with pytest.raises(PluginUnavailable, match="initialize") as err:
        await process.start()
    assert err.value.reason == "start_failed"
    assert _gone(process.pid)


async def test_a_crash_fails_the_call_and_the_next_call_restarts(
    make_host: MakeHost, bad_script: Path
) -> None:
    host = make_host(bad_spec(bad_script))
    pid = (await host.call("bad", "echo"))["pid"]

    with pytest.raises(PluginUnavailable, match="exited with code 3") as err:
        await host.call("bad", "crash")
    assert err.value.reason == "exited"
    assert "about to crash" in str(err.value)  # the last stderr line says why

    new_pid = (await host.call("bad", "echo"))["pid"]
    assert new_pid != pid
    assert _gone(pid)


async def test_garbage_fails_only_the_call_without_a_valid_answer(
    make_host: MakeHost, bad_script: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="service.adapters.plugins.host")
    host = make_host(bad_spec(bad_script), call_timeout_s=0.5)
    pid = (await host.call("bad", "echo"))["pid"]

    assert await host.call("bad", "garbage-then-answer") == "ok"
    with pytest.raises(PluginTimeout):
        await host.call("bad", "garbage")
    with pytest.raises(PluginProtocolError, match="neither result nor error"):
        await host.call("bad", "no-result")
    with pytest.raises(PluginProtocolError, match="bad reply"):
        await host.call("bad", "bad-error")
    # a request from the plugin (e.g. storage/get) is answered, so the plugin does not wait forever
    asked = await host.call("bad", "ask")
    assert asked["id"] == "s1"
    assert asked["error"]["code"] == METHOD_NOT_FOUND

    assert "this is not json" in caplog.text
    # the timed-out plugin still answered ping, so it was kept
    assert (await host.call("bad", "echo"))["pid"] == pid


async def test_an_over_long_line_is_a_protocol_error_and_the_host_survives(
    make_host: MakeHost, bad_script: Path
) -> None:
    host = make_host(bad_spec(bad_script), max_line_bytes=1 << 20)
    pid = (await host.call("bad", "echo"))["pid"]

    with pytest.raises(PluginProtocolError, match="longer than 1048576 bytes"):
        await host.call("bad", "flood")

    assert (await host.call("bad", "echo"))["pid"] != pid
    assert _gone(pid)


async def test_missing_unconfigured_and_disabled_plugins_are_unavailable(
    make_host: MakeHost, data_file: Path
) -> None:
    host = make_host(
        PluginSpec(name="ghost", command=("/nonexistent/libjobs-plugin", "--serve")),
        fixture_spec(data_file, name="off", enabled=False),
        fixture_spec(tmp := data_file.with_name("missing.json"), name="nodata"),
    )
    with pytest.raises(PluginUnavailable, match="command '/nonexistent/libjobs-plugin' not found") as err:
        await host.call("ghost", "ping")
    assert err.value.reason == "start_failed"
    with pytest.raises(PluginUnavailable, match="not configured") as err:
        await host.call("nobody", "ping")
    assert err.value.reason == "not_configured"
    with pytest.raises(PluginUnavailable, match="disabled") as err:
        await host.manifest("off")
    assert err.value.reason == "disabled"
    with pytest.raises(PluginUnavailable, match=r"exited with code 2.*cannot load data file") as err:
        await host.call("nodata", "ping")
    assert str(tmp) in str(err.value)


async def test_a_plugin_that_exits_at_start_is_reported_with_its_exit_code_every_time(
    make_host: MakeHost,
) -> None:
    """`false` exits at once: the `initialize` request may go out before the exit or into a closed pipe.
    Either way the error names the exit code (a dry run over HTTP and one over NATS once differed)."""
    host = make_host(PluginSpec(name="quitter", command=("false",)))
    for _ in range(20):
        with pytest.raises(PluginUnavailable, match=r"failed to initialize: exited with code 1$") as err:
            await host.call("quitter", "ping")
        assert err.value.reason == "start_failed"


async def test_credentials_never_appear_in_logs_or_errors(
    make_host: MakeHost, bad_script: Path, data_file: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    await asyncio.to_thread(
        data_file.write_text, json.dumps({**DATA, "requireCredentials": {"token": SECRET}})
    )
    host = make_host(
        bad_spec(bad_script, credentials={"token": SECRET}),
        fixture_spec(data_file, credentials={"token": SECRET}),
        fixture_spec(data_file, name="wrong", credentials={"token": "not-" + SECRET}),
    )

    with pytest.raises(PluginCallError) as err:
        await host.call("bad", "leak")
    assert err.value.code == AUTH_FAILED
    assert SECRET not in str(err.value)
    assert "***" in err.value.message
    # the credentials reached the fixture (it checks them) ...
    assert (await host.call("fixture", "metadata/series/get", {"externalId": "s-1"}))["title"] == "One Piece"
    with pytest.raises(PluginUnavailable, match="credentials do not match"):
        await host.manifest("wrong")
    await host.aclose()

    # ... and the plugin's stderr was forwarded, masked, to its own logger
    plugin_lines = [r.getMessage() for r in caplog.records if r.name == "libjobs.plugin.bad"]
    assert "starting with token ***" in plugin_lines
    assert all(r.levelno == logging.INFO for r in caplog.records if r.name.startswith("libjobs.plugin."))
    assert SECRET not in caplog.text


async def test_idle_plugins_are_stopped_and_restarted_on_next_use(
    make_host: MakeHost, data_file: Path
) -> None:
    host = make_host(fixture_spec(data_file), idle_timeout_s=0.3)
    host.start_idle_reaper(interval_s=0.1)
    manifest = await host.manifest("fixture")
    pid = host.pid("fixture")

    for _ in range(100):  # the reaper runs every 0.1 s: give it up to 5 s
        if _gone(pid):
            break
        await asyncio.sleep(0.05)
    assert _gone(pid)
    assert host.pid("fixture") is None

    assert await host.manifest("fixture") is manifest  # cached: no restart just to read it
    assert host.pid("fixture") is None
    await host.call("fixture", "ping")
    assert host.pid("fixture") not in (None, pid)
    await host.stop_idle_reaper()


async def test_aclose_stops_every_plugin(make_host: MakeHost, data_file: Path, bad_script: Path) -> None:
    host = make_host(fixture_spec(data_file), bad_spec(bad_script, "stubborn"), shutdown_grace_s=0.5)
    await host.manifest("fixture")
    await host.manifest("bad")
    pids = [host.pid("fixture"), host.pid("bad")]

    await host.aclose()  # the stubborn one ignores shutdown, EOF and SIGTERM: it is killed

    assert all(_gone(pid) for pid in pids)
    with pytest.raises(PluginUnavailable) as err:
        await host.call("fixture", "ping")
    assert err.value.reason == "closed"


async def test_process_stop_is_graceful_when_the_plugin_cooperates(data_file: Path, bad_script: Path) -> None:
    polite = PluginProcess(fixture_spec(data_file), shutdown_grace_s=0.5)
    stubborn = PluginProcess(bad_spec(bad_script, "stubborn"), shutdown_grace_s=0.5)
    await polite.start()
    await stubborn.start()

    await asyncio.gather(polite.stop(), stubborn.stop())

    assert polite.returncode == 0  # answered shutdown and exited on its own
    assert stubborn.returncode == -9
    with pytest.raises(PluginUnavailable, match="was stopped"):
        await polite.call("ping", None, 1.0)
