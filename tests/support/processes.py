"""Real processes for tests: `libjobs serve` on a free loopback port, stopped afterwards."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from service.adapters.nats.embedded import free_port


def libjobs_command() -> list[str]:
    """The installed `libjobs` console script (as README installs it), else the same entry point."""
    script = Path(sys.executable).parent / "libjobs"
    return [str(script)] if script.exists() else [sys.executable, "-m", "service.bootstrap"]


@dataclass
class ServeProcess:
    """`libjobs serve` started as a user would, with its own data dir and environment."""

    data_dir: Path
    env: dict[str, str] = field(default_factory=dict)
    args: tuple[str, ...] = ()
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None
    log_path: Path | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout_s: float = 20) -> ServeProcess:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.log_path = self.data_dir.parent / f"serve-{self.port}.log"
        env = {k: v for k, v in os.environ.items() if not k.startswith("LIBJOBS_")} | self.env
        flags = ["--port", str(self.port), "--data-dir", str(self.data_dir), *self.args]
        command = [*libjobs_command(), "serve", *flags]
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"libjobs serve exited with {self.process.returncode}:\n{self.output()}")
            try:
                if httpx.get(f"{self.url}/readyz", timeout=1).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"libjobs serve did not become ready:\n{self.output()}")

    def output(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path and self.log_path.exists() else ""

    def stop(self, sig: int = signal.SIGTERM, timeout_s: float = 20) -> int | None:
        if self.process is None or self.process.poll() is not None:
            return self.process.returncode if self.process else None
        self.process.send_signal(sig)
        try:
            return self.process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait()


def admin_key(data_dir: Path) -> str:
    return (data_dir / "admin-api-key").read_text().strip()


def environment(**values: str) -> Mapping[str, str]:
    return {f"LIBJOBS_{k.upper()}": v for k, v in values.items()}
