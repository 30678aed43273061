"""A real `nats-server -js` for tests, on a free loopback port (never 4222: a developer NATS runs there).

`NatsServer` is synchronous so any test can use it: `start()` again after `stop()` or `kill()` reuses the
port and the store directory, so clients reconnect and JetStream data survives. The server's log is
`<store_dir>.log`. `nats_server` is the function-scoped fixture (registered by a conftest).
"""

from __future__ import annotations

import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

import pytest

from service.adapters.nats.embedded import free_port, nats_server_binary, parent_death_signal, server_command

DEVELOPER_PORT = 4222


@dataclass
class NatsServer:
    store_dir: Path
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None

    def __post_init__(self) -> None:
        assert self.port != DEVELOPER_PORT, "tests must never touch the developer's NATS on port 4222"

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.store_dir.with_name(self.store_dir.name + ".log")

    def start(self, timeout_s: float = 10) -> NatsServer:
        assert self.process is None or self.process.poll() is not None, "already running"
        self.store_dir.mkdir(parents=True, exist_ok=True)
        command = server_command(nats_server_binary(), "127.0.0.1", self.port, self.store_dir)
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                command, stdout=log, stderr=subprocess.STDOUT, preexec_fn=parent_death_signal()
            )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"nats-server exited with {self.process.returncode}:\n{self.output()}")
            # and still ours after the greeting: another process might hold the port
            if _greets(self.port) and self.process.poll() is None:
                return self
            time.sleep(0.02)
        self.kill()
        raise RuntimeError(f"nats-server did not become ready on port {self.port}:\n{self.output()}")

    def stop(self, timeout_s: float = 5) -> None:
        """SIGTERM (JetStream flushes), SIGKILL after `timeout_s`."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.kill()

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def output(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def __enter__(self) -> NatsServer:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def _greets(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as sock, sock.makefile("rb") as f:
            return f.readline().startswith(b"INFO {")
    except OSError:
        return False


@pytest.fixture
def nats_server(tmp_path: Path) -> Iterator[NatsServer]:
    """A running nats-server with JetStream, its store under the test's tmp_path; stopped afterwards."""
    with NatsServer(tmp_path / "nats") as server:
        yield server
