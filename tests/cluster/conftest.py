"""The local cluster of deploy/local_cluster for this tier: started once per module, on a PostgreSQL schema of
its own, with `LIBJOBS_MIN_INTERVAL_S=0` (jobs may fire every second) and a short run ack wait (a run whose
executor was killed is delivered again after 2 s). Its logs are under the module's tmp dir."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from deploy.local_cluster import ClusterSpec, LocalCluster, processes_under
from tests.cluster.helpers import require_haproxy
from tests.support.postgres import fresh_schema

PLUGIN_DATA = {
    "series": {f"s-{i}": {"title": f"T{i}", "metadata": {"rating": i + 0.5}} for i in range(3)},
    "delayMs": 100,
    "delayByIdMs": {"s-2": 600},  # the last item of every run: a run is under way for most of a second
}
CLUSTER_ENV = {
    "LIBJOBS_MIN_INTERVAL_S": "0",
    "LIBJOBS_RUN_ACK_WAIT_S": "2",
    "LIBJOBS_DRAIN_GRACE_S": "2",
}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    require_haproxy()
    work_dir = tmp_path_factory.mktemp("cluster")
    with fresh_schema() as database_url:
        spec = ClusterSpec(
            work_dir=work_dir, database_url=database_url, env=CLUSTER_ENV, plugin_data=PLUGIN_DATA
        )
        with LocalCluster(spec) as running:
            yield running
        left = processes_under(work_dir)
        assert left == [], f"processes left after the cluster stopped: {left}"
