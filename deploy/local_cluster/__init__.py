"""The local cluster: `LocalCluster` (tests, benchmarks) and `python -m deploy.local_cluster` (people)."""

from deploy.local_cluster.cluster import ClusterError, ClusterSpec, LocalCluster, Process, processes_under

__all__ = ["ClusterError", "ClusterSpec", "LocalCluster", "Process", "processes_under"]
