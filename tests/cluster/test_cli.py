"""`deploy/local-cluster up|status|down` as a person runs it: started in the background and stopped with
`down`, or in the foreground and stopped with Ctrl-C; either way nothing is left running (every process
whose command line names the work dir: NATS servers, libjobs processes, their plugins, HAProxy)."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from deploy.local_cluster import processes_under
from tests.cluster.helpers import require_haproxy
from tests.e2e.helpers import REPO
from tests.support.postgres import fresh_schema

pytestmark = [pytest.mark.cluster, pytest.mark.postgres]

SCRIPT = REPO / "deploy" / "local-cluster"
SMALL = ("--api", "2", "--scheduler", "1", "--executor", "1", "--projector", "1", "--port", "0")


def run(*args: str, timeout_s: float = 180) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(SCRIPT), *args], capture_output=True, text=True, timeout=timeout_s, check=False
    )


def front_answers(work_dir: Path) -> None:
    state = json.loads((work_dir / "cluster.json").read_text())
    key = Path(state["api_key_file"]).read_text().strip()
    with httpx.Client(base_url=state["front_url"], headers={"X-API-Key": key}, timeout=10) as front:
        for _ in range(4):
            response = front.get("/api/v1/library-jobs/metadata-refresh/field-groups")
            assert response.status_code == 200, response.text


def test_up_detached_then_down_leaves_nothing_running(tmp_path: Path) -> None:
    require_haproxy()
    work_dir = tmp_path / "cluster"
    with fresh_schema() as database_url:
        try:
            up = run("up", "--detach", "--work-dir", str(work_dir), "--database-url", database_url, *SMALL)
            assert up.returncode == 0, up.stdout + up.stderr
            assert "front (HAProxy, round-robin): http://127.0.0.1:" in up.stdout
            assert len(processes_under(work_dir)) >= 3 + 5 + 1  # NATS, libjobs, HAProxy (+ plugins)
            status = run("status", "--work-dir", str(work_dir))
            assert status.returncode == 0, status.stderr
            assert status.stdout.count(" running ") == 3 + 5 + 1, status.stdout
            front_answers(work_dir)
            again = run("up", "--detach", "--work-dir", str(work_dir), "--database-url", database_url, *SMALL)
            assert again.returncode == 1
            assert "already runs" in again.stderr
        finally:
            down = run("down", "--work-dir", str(work_dir))
        assert down.returncode == 0, down.stdout + down.stderr
        assert processes_under(work_dir) == []
        assert not (work_dir / "cluster.json").exists()


def test_up_in_the_foreground_stops_everything_on_ctrl_c(tmp_path: Path) -> None:
    require_haproxy()
    work_dir = tmp_path / "cluster"
    with fresh_schema() as database_url:
        command = [str(SCRIPT), "up", "--work-dir", str(work_dir), "--database-url", database_url, *SMALL]
        with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) as up:
            try:
                assert up.stdout is not None
                lines = []
                for line in up.stdout:
                    lines.append(line)
                    if "Ctrl-C stops everything" in line:
                        break
                else:
                    raise AssertionError("".join(lines))
                front_answers(work_dir)
                up.send_signal(signal.SIGINT)
                assert up.wait(60) == 0
                assert "stopped" in up.stdout.read()
            finally:
                if up.poll() is None:
                    up.kill()
        deadline = time.monotonic() + 5
        while processes_under(work_dir) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert processes_under(work_dir) == []
