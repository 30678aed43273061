"""The embedded nats-server against the real binary: start, JetStream, crash and restart, stop, errors."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import sys
import textwrap
from collections.abc import AsyncIterator
from pathlib import Path

import nats
import pytest
from nats.aio.client import Client
from nats.js.api import StorageType

from service.adapters.nats.embedded import (
    DataDirNats,
    EmbeddedNats,
    EmbeddedNatsError,
    free_port,
    greets,
    running_url,
)
from tests.integration.harness import eventually
from tests.support.nats import NatsServer

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
LOGGER = "libjobs.test.nats"


def bound(sock: socket.socket, port: int) -> bool:
    try:
        sock.bind(("127.0.0.1", port))
    except OSError:
        return False
    return True


@pytest.fixture
async def embedded(tmp_path: Path) -> AsyncIterator[EmbeddedNats]:
    server = EmbeddedNats(tmp_path / "nats", log=logging.getLogger(LOGGER))
    await server.start()
    yield server
    await server.stop()


async def connect(url: str, reconnected: asyncio.Event | None = None) -> Client:
    async def on_reconnect() -> None:
        if reconnected is not None:
            reconnected.set()

    return await nats.connect(
        url, reconnect_time_wait=0.05, max_reconnect_attempts=-1, reconnected_cb=on_reconnect
    )


def alive(pid: int) -> bool:
    """Running, and not a zombie (an orphan's may linger where pid 1 does not reap)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    return not stat.exists() or stat.read_text().rsplit(")", 1)[1].split()[0] != "Z"


async def test_jetstream_data_survives_a_crash_and_clients_reconnect(embedded: EmbeddedNats) -> None:
    assert embedded.url.startswith("nats://127.0.0.1:")
    assert not embedded.url.endswith(":4222")
    reconnected = asyncio.Event()
    nc = await connect(embedded.url, reconnected)
    try:
        js = nc.jetstream()
        await js.add_stream(name="T", subjects=["t.>"], storage=StorageType.FILE)
        first = await js.publish("t.a", b"before the crash")
        crashed = embedded.pid
        assert crashed is not None

        os.kill(crashed, signal.SIGKILL)
        await asyncio.wait_for(reconnected.wait(), 10)
        # the client may get in before the supervisor's own readiness probe does
        await eventually(lambda: embedded.pid not in (None, crashed))
        assert (await js.get_msg("T", first.seq)).data == b"before the crash"
        second = await js.publish("t.b", b"after the restart")
        assert second.seq == first.seq + 1
    finally:
        await nc.close()


async def test_stop_leaves_no_process_and_can_be_repeated(tmp_path: Path) -> None:
    server = EmbeddedNats(tmp_path / "nats")
    url = await server.start()
    pid = server.pid
    assert pid is not None
    assert alive(pid)

    await server.stop()
    await server.stop()

    assert server.pid is None
    assert not alive(pid)
    with pytest.raises(ConnectionRefusedError):  # nobody listens there any more
        socket.create_connection(("127.0.0.1", int(url.rsplit(":", 1)[1])), timeout=1).close()


async def test_a_file_in_place_of_the_store_dir_is_a_clear_error(tmp_path: Path) -> None:
    store = tmp_path / "nats"
    store.write_text("not a directory")
    with pytest.raises(EmbeddedNatsError, match="cannot create the NATS store directory"):
        await EmbeddedNats(store).start()


async def test_an_unusable_jetstream_store_fails_fast_with_the_server_log(tmp_path: Path) -> None:
    store = tmp_path / "nats"
    store.mkdir()
    (store / "jetstream").write_text("in the way of JetStream's own directory")
    server = EmbeddedNats(store)
    async with asyncio.timeout(5):  # an error, not a wait for the ready timeout
        with pytest.raises(EmbeddedNatsError, match="exited with code") as caught:
            await server.start()
    assert "JetStream" in str(caught.value)  # the server's own explanation is quoted
    assert server.pid is None


async def test_a_port_taken_by_something_else_is_an_error_not_a_false_start(tmp_path: Path) -> None:
    with socket.create_server(("127.0.0.1", 0)) as blocker:  # accepts, but never greets like NATS
        port = blocker.getsockname()[1]
        with pytest.raises(EmbeddedNatsError, match="already in use"):
            await EmbeddedNats(tmp_path / "nats", port=port).start()


async def test_restarts_keep_trying_until_the_port_is_free_again(
    embedded: EmbeddedNats, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger=LOGGER)
    port = int(embedded.url.rsplit(":", 1)[1])
    crashed = embedded.pid
    assert crashed is not None
    blocker = socket.socket()
    blocker.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    with blocker:
        os.kill(crashed, signal.SIGKILL)
        # The dead server's sockets take a moment to go; the first restart comes after 0.2 s.
        await eventually(lambda: bound(blocker, port), timeout_s=0.15)
        blocker.listen()
        await eventually(lambda: any("could not restart" in r.getMessage() for r in caplog.records))
    await eventually(lambda: embedded.pid is not None)
    nc = await connect(embedded.url)
    await nc.close()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the parent-death signal is Linux only")
async def test_the_server_dies_with_its_parent_even_on_sigkill(tmp_path: Path) -> None:
    script = textwrap.dedent(
        f"""
        import asyncio, pathlib
        from service.adapters.nats.embedded import EmbeddedNats

        async def main():
            server = EmbeddedNats(pathlib.Path({str(tmp_path / "nats")!r}))
            await server.start()
            print(server.pid, flush=True)
            await asyncio.sleep(60)

        asyncio.run(main())
        """
    )
    parent = await asyncio.create_subprocess_exec(
        sys.executable, "-c", script, stdout=asyncio.subprocess.PIPE, cwd=REPO
    )
    try:
        assert parent.stdout is not None
        pid = int(await asyncio.wait_for(parent.stdout.readline(), 10))
        assert alive(pid)
    finally:
        parent.kill()
        await parent.wait()
    await eventually(lambda: not alive(pid))


async def test_the_test_server_keeps_stream_data_across_stop_start_and_kill(tmp_path: Path) -> None:
    with NatsServer(tmp_path / "nats") as server:
        assert server.port != 4222
        nc = await connect(server.url)
        js = nc.jetstream()
        await js.add_stream(name="T", subjects=["t.>"], storage=StorageType.FILE)
        first = await js.publish("t.a", b"one")
        await nc.close()

        server.stop()
        server.start()
        nc = await connect(server.url)
        js = nc.jetstream()
        second = await js.publish("t.b", b"two")
        await nc.close()

        server.kill()
        server.start()
        nc = await connect(server.url)
        js = nc.jetstream()
        try:
            assert (await js.get_msg("T", first.seq)).data == b"one"
            assert (await js.get_msg("T", second.seq)).data == b"two"
        finally:
            await nc.close()


async def test_processes_on_one_data_dir_share_one_server(tmp_path: Path) -> None:
    # Two nats-servers on one JetStream store would corrupt it: the second user joins the first's server.
    first, second = DataDirNats(tmp_path), DataDirNats(tmp_path)
    url = await first.start()
    try:
        assert await second.start() == url
        assert (first.owner, second.owner) == (True, False)
        assert running_url(tmp_path) == url
    finally:
        await second.stop()  # a joiner stops nothing
        assert await greets(url)
        await first.stop()
    assert running_url(tmp_path) is None
    third = DataDirNats(tmp_path)  # the lock is free again: the next process runs the server
    await third.start()
    assert third.owner
    await third.stop()


def test_free_ports_are_outside_the_range_outgoing_connections_take_their_ports_from() -> None:
    """A port picked by bind(0) can be taken by any client socket before the server binds it (the
    local cluster's HAProxy once lost its port that way); free_port picks below the ephemeral range."""
    low, _high = (int(n) for n in Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
    ports = {free_port() for _ in range(20)}
    assert all(port < low for port in ports), (low, sorted(ports))
    assert len(ports) > 1  # random, not one fixed port every caller would share
    for port in ports:
        with socket.socket() as sock:
            assert bound(sock, port)
