"""Cluster bootstrap: an embedded local multi-node Ray cluster on 127.0.0.1, a persistent
one (`slicer cluster up`), a connection to an existing cluster, and placement checks that
fail fast. One room each:

- ``placement``: the labels and slots every node carries (``role``, ``device-class``,
  ``server_slot``/``edge_slot``), selectors and the fail-fast placement check;
- ``auth``: loopback binding and token authentication of this process's Ray;
- ``processes``: process trees by their own ids (start time checked), killed exactly;
- ``local``: ``LocalCluster``, the embedded cluster of ``slicer run``;
- ``persistent``: `slicer cluster up` / `down`;
- ``connect``: joining an existing cluster (``--address``);
- ``_ray``: every use of Ray's private APIs, quarantined in one file.
"""
from __future__ import annotations

from slicer.orchestrator.cluster.auth import (
    LOOPBACK_ENV,
    _match_auth,
    cluster_requires_token,
    enable_loopback,
    find_token,
    restore_loopback,
)
from slicer.orchestrator.cluster.connect import Connection, _job_env, connect
from slicer.orchestrator.cluster.local import LocalCluster
from slicer.orchestrator.cluster.persistent import (
    CLUSTER_ID_ENV,
    cluster_down,
    cluster_up,
    ensure_token,
    marked_pids,
    read_state,
    state_path,
)
from slicer.orchestrator.cluster.placement import (
    CLASS_LABEL,
    DEFAULT_EDGE_CLASSES,
    EDGE_ROLE,
    EDGE_SLOT,
    ROLE_LABEL,
    SERVER_ROLE,
    SERVER_SLOT,
    ClusterError,
    NodeInfo,
    NodeSpec,
    PlacementError,
    check_placement,
    edge_selector,
    list_nodes,
    selector_matches,
    server_selector,
    validate_selector,
    wait_for_nodes,
)
from slicer.orchestrator.cluster.processes import descendants, kill_pids, pid_alive

__all__ = [
    "CLASS_LABEL", "CLUSTER_ID_ENV", "DEFAULT_EDGE_CLASSES", "EDGE_ROLE", "EDGE_SLOT", "LOOPBACK_ENV", "ROLE_LABEL",
    "SERVER_ROLE", "SERVER_SLOT", "ClusterError", "Connection", "LocalCluster", "NodeInfo", "NodeSpec",
    "PlacementError", "_job_env", "_match_auth", "check_placement", "cluster_down", "cluster_requires_token",
    "cluster_up", "connect", "descendants", "edge_selector", "enable_loopback", "ensure_token", "find_token",
    "kill_pids", "list_nodes", "marked_pids", "pid_alive", "read_state", "restore_loopback", "selector_matches",
    "server_selector", "state_path", "validate_selector", "wait_for_nodes",
]
