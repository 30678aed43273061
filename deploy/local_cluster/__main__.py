"""`python -m deploy.local_cluster up|down|status` (or `deploy/local-cluster …`): the local cluster.

    deploy/local-cluster up                 # in the foreground; Ctrl-C (or SIGTERM) stops everything
    deploy/local-cluster up --detach        # start, print where things are, return
    deploy/local-cluster status             # what runs, ready or not
    deploy/local-cluster down               # SIGTERM everything (SIGKILL after --timeout), nothing left

Every `LIBJOBS_*` variable of the caller's environment is passed to the libjobs processes (e.g.
`LIBJOBS_MIN_INTERVAL_S=0`), except the database and NATS URLs, which the cluster sets.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx

from deploy.local_cluster.cluster import (
    DEFAULT_REPLICAS,
    STATE_FILE,
    ClusterError,
    ClusterSpec,
    LocalCluster,
    processes_under,
)

DEFAULT_WORK_DIR = Path(tempfile.gettempdir()) / "libjobs-local-cluster"
DEFAULT_DATABASE_URL = "postgresql://postgres@127.0.0.1:5432/test?schema=libjobs_local_cluster"
PASSED_THROUGH_EXCEPT = ("LIBJOBS_DATABASE_URL", "LIBJOBS_NATS_URL", "LIBJOBS_API_KEY")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="deploy/local-cluster", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    up = commands.add_parser("up", help="start the cluster")
    down = commands.add_parser("down", help="stop the cluster started with up --detach")
    status = commands.add_parser("status", help="what runs")
    for command in (up, down, status):
        command.add_argument(
            "--work-dir", type=Path, default=DEFAULT_WORK_DIR, help=f"default {DEFAULT_WORK_DIR}"
        )
    up.add_argument(
        "--database-url",
        default=os.environ.get("LIBJOBS_DATABASE_URL", DEFAULT_DATABASE_URL),
        help=f"PostgreSQL (default LIBJOBS_DATABASE_URL, else {DEFAULT_DATABASE_URL})",
    )
    up.add_argument("--port", type=int, default=8080, help="the front's port (default 8080; 0: a free one)")
    up.add_argument("--detach", action="store_true", help="return once started; stop with `down`")
    up.add_argument(
        "--api-key", default=os.environ.get("LIBJOBS_API_KEY", ""), help="admin key (default: new)"
    )
    for role, count in DEFAULT_REPLICAS.items():
        up.add_argument(f"--{role}", type=int, default=count, help=f"{role} replicas (default {count})")
    down.add_argument("--timeout", type=float, default=30, help="seconds before SIGKILL (default 30)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    work_dir: Path = args.work_dir.resolve()
    if args.command == "up":
        return _up(args, work_dir)
    if args.command == "down":
        return _down(work_dir, args.timeout)
    return _status(work_dir)


def _up(args: argparse.Namespace, work_dir: Path) -> int:
    if (work_dir / STATE_FILE).exists() and processes_under(work_dir):
        print(f"a cluster already runs in {work_dir}: deploy/local-cluster down first", file=sys.stderr)
        return 1
    env = {k: v for k, v in os.environ.items() if k.startswith("LIBJOBS_") and k not in PASSED_THROUGH_EXCEPT}
    spec = ClusterSpec(
        work_dir=work_dir,
        database_url=args.database_url,
        replicas={role: getattr(args, role) for role in DEFAULT_REPLICAS},
        front_port=args.port,
        api_key=args.api_key,
        env=env,
        supervised=not args.detach,
    )
    cluster = LocalCluster(spec)
    print(f"starting the local cluster in {work_dir} ...", flush=True)
    try:
        cluster.start()
    except ClusterError as e:
        print(f"local cluster: {e}", file=sys.stderr)
        return 1
    _print_state(cluster.state())
    if args.detach:
        print("\nstop it with: deploy/local-cluster down" + _work_dir_flag(work_dir))
        return 0
    print("\nCtrl-C stops everything.", flush=True)
    stopping = False

    def request_stop(signum: int, frame: Any) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGTERM, request_stop)
    while not stopping:
        time.sleep(0.2)
    print("stopping ...", flush=True)
    cluster.stop()
    left = processes_under(work_dir)
    print("stopped" if not left else f"still running: {left}")
    return 0 if not left else 1


def _work_dir_flag(work_dir: Path) -> str:
    return "" if work_dir == DEFAULT_WORK_DIR.resolve() else f" --work-dir {work_dir}"


def _print_state(state: dict[str, Any]) -> None:
    print(f"front (HAProxy, round-robin): {state['front_url']}")
    print(f"api replicas: {', '.join(state['api_urls'])}")
    print(f"NATS: {','.join(state['nats_urls'])}")
    print(f"admin API key (X-API-Key): in {state['api_key_file']}")
    print(f"logs: {Path(state['work_dir']) / 'logs'}")


def _read_state(work_dir: Path) -> dict[str, Any] | None:
    try:
        state: dict[str, Any] = json.loads((work_dir / STATE_FILE).read_text())
    except (OSError, ValueError):
        return None
    return state


def _ours(pid: int, work_dir: Path) -> bool:
    """Still the process the cluster started (a pid can be reused): its command line names the work dir."""
    return pid in processes_under(work_dir)


def _down(work_dir: Path, timeout_s: float) -> int:
    state = _read_state(work_dir)
    if state is None:
        print(f"no cluster state in {work_dir}", file=sys.stderr)
    else:
        groups: dict[str, list[int]] = {"front": [], "libjobs": [], "nats": []}
        for process in state["processes"]:
            group = (
                "front"
                if process["name"] == "front"
                else "nats"
                if process["name"].startswith("nats-")
                else "libjobs"
            )
            if process["pid"] is not None and _ours(process["pid"], work_dir):
                groups[group].append(process["pid"])
        for pids in groups.values():
            _terminate(pids, timeout_s)
        (work_dir / STATE_FILE).unlink(missing_ok=True)
    _terminate(processes_under(work_dir), 5)  # children left behind (plugins exit when libjobs does)
    left = processes_under(work_dir)
    if left:
        print(f"still running: {left}", file=sys.stderr)
        return 1
    print("stopped")
    return 0


def _terminate(pids: Sequence[int], timeout_s: float) -> None:
    for pid in pids:
        _signal(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and any(_alive(pid) for pid in pids):
        time.sleep(0.05)
    for pid in pids:
        if _alive(pid):
            _signal(pid, signal.SIGKILL)


def _signal(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _status(work_dir: Path) -> int:
    state = _read_state(work_dir)
    if state is None:
        print(f"no cluster in {work_dir}")
        return 1
    _print_state(state)
    for process in state["processes"]:
        running = process["pid"] is not None and _ours(process["pid"], work_dir)
        ready = ""
        if running and process["url"]:
            try:
                ready = "ready" if httpx.get(process["url"], timeout=1).status_code == 200 else "not ready"
            except httpx.HTTPError:
                ready = "not answering"
        line = f"  {process['name']:<12} pid {process['pid']:<8} {'running' if running else 'STOPPED':<8}"
        print(f"{line} {ready}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
