"""``LocalCluster``: an embedded multi-node Ray cluster on 127.0.0.1 (a server node and
a node per edge class, labelled), started and stopped by its own process ids."""
from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Iterable, Mapping

from slicer.orchestrator.cluster import _ray
from slicer.orchestrator.cluster.auth import (
    _restore_env,
    _set_auth,
    enable_loopback,
    restore_loopback,
)
from slicer.orchestrator.cluster.placement import (
    CLASS_LABEL,
    DEFAULT_EDGE_CLASSES,
    EDGE_ROLE,
    SERVER_ROLE,
    ClusterError,
    NodeInfo,
    NodeSpec,
    check_placement,
    list_nodes,
    validate_selector,
    wait_for_nodes,
)
from slicer.orchestrator.cluster.processes import descendants, kill_pids, pid_alive


class LocalCluster:
    """An embedded multi-node Ray cluster on 127.0.0.1: the head is the server node, plus
    ``nodes_per_class`` edge nodes per device class, each a raylet of its own with its
    labels and slots. A context manager: on exit it disconnects the driver, stops every
    process it started (by their pids, never ``ray stop``, which would kill other users'
    clusters) and removes its temp dir. On the shared 2-core test machine a 3-node cluster
    (server + 2 edge classes) started in 12.6-23 s and stopped in 1.2-2.9 s (load average
    12-33 from other jobs; ``start_s``/``stop_s`` hold each run's figures)."""

    def __init__(self, edge_classes: Iterable[str] = DEFAULT_EDGE_CLASSES, *, nodes_per_class: int = 1,
                 edge_slots: int = 16, server_slots: int = 1, num_cpus_per_node: int = 1,
                 auth: str = "token", include_dashboard: bool = False, object_store_bytes: int = 128 << 20,
                 connect: bool = True, namespace: str = "slicer", start_timeout_s: float = 60.0,
                 keep_temp_dir: bool = False):
        classes = list(dict.fromkeys(edge_classes))
        if not classes:
            raise ValueError("edge_classes: give at least one device class")
        for c in classes:
            validate_selector({CLASS_LABEL: c})  # label values follow Kubernetes syntax
        if nodes_per_class < 1:
            raise ValueError(f"nodes_per_class={nodes_per_class}: must be >= 1")
        if auth not in ("token", "disabled", "inherit"):
            raise ValueError(f"auth={auth!r}: allowed token, disabled, inherit")
        self.server_spec = NodeSpec(SERVER_ROLE, None, num_cpus_per_node, server_slots)
        self.edge_specs = [NodeSpec(EDGE_ROLE, c, num_cpus_per_node, edge_slots)
                           for c in classes for _ in range(nodes_per_class)]
        self.auth = auth
        self.include_dashboard = include_dashboard
        self.object_store_bytes = int(object_store_bytes)
        self.connect_driver = connect
        self.namespace = namespace
        self.start_timeout_s = start_timeout_s
        self.keep_temp_dir = keep_temp_dir
        self.temp_dir: str | None = None
        self.dashboard_port: int | None = None
        self.start_s: float | None = None
        """Seconds from start() to every node alive and the driver connected."""
        self.stop_s: float | None = None
        self._cluster = None
        self._loopback_prev: dict | None = None
        self._auth_prev: dict | None = None
        self._connected = False
        self._pids: dict[int, int] = {}
        self._leftover: dict[int, int] = {}
        self._node_of_spec: list[tuple[NodeSpec, object]] = []

    # -- lifecycle
    def __enter__(self) -> "LocalCluster":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self) -> "LocalCluster":
        if self._cluster is not None:
            raise ClusterError("this LocalCluster is already started")
        t0 = time.perf_counter()
        self._loopback_prev = enable_loopback()
        import ray
        from ray.cluster_utils import Cluster

        if ray.is_initialized():
            restore_loopback(self._loopback_prev)
            raise ClusterError("this process is already connected to a Ray cluster; ray.shutdown() it first")
        self._auth_prev = _set_auth(self.auth)
        # Our own temp root (short: socket paths must stay under 107 bytes) so stop() can
        # remove everything; Cluster still writes /tmp/ray/ray_current_cluster, whose
        # folder must exist (FileNotFoundError otherwise).
        self.temp_dir = tempfile.mkdtemp(prefix="slicer-ray-", dir="/tmp" if os.path.isdir("/tmp") else None)
        os.makedirs(_ray.default_temp_dir(), exist_ok=True)
        try:
            self._cluster = Cluster(initialize_head=True, shutdown_at_exit=True,
                                    head_node_args=self._node_args(self.server_spec, head=True))
            self._node_of_spec.append((self.server_spec, self._cluster.head_node))
            for i, spec in enumerate(self.edge_specs):
                self._node_of_spec.append((spec, self._cluster.add_node(**self._node_args(spec, index=i + 1))))
            # Ray Jobs find the cluster of a job's driver by "auto" in the node's temp dir
            # (job_supervisor: canonicalize_bootstrap_address_or_die("auto", temp_dir)); with
            # no address file there they take ANY GCS running on the machine, i.e. another
            # user's cluster. Write ours where they look.
            for i in range(len(self._node_of_spec)):
                _ray.write_ray_address(self._cluster.address, self._node_temp_dir(i))
            self._cluster.wait_for_nodes(timeout=self.start_timeout_s)
            if self.connect_driver:
                ray.init(address=self._cluster.address, namespace=self.namespace, logging_level="WARNING",
                         log_to_driver=True)
                self._connected = True
                wait_for_nodes(1 + len(self.edge_specs), timeout_s=self.start_timeout_s)
        except BaseException:
            self.stop()
            raise
        self.start_s = time.perf_counter() - t0
        return self

    def _node_temp_dir(self, index: int) -> str:
        # One temp dir per node: each node's runtime-env agent owns <temp>/<session>/
        # runtime_resources, and agents sharing one delete each other's working_dir
        # copies (a job's cwd vanished mid-run when all nodes shared it).
        d = os.path.join(self.temp_dir, f"n{index}")
        os.makedirs(d, exist_ok=True)
        return d

    def _node_args(self, spec: NodeSpec, head: bool = False, index: int = 0) -> dict:
        # The server node gets this machine's GPUs (a CUDA server is placed with num_gpus=1).
        args = dict(num_cpus=spec.num_cpus, num_gpus=_local_gpus() if spec.role == SERVER_ROLE else 0,
                    labels=spec.labels(), resources=spec.resources(),
                    node_ip_address="127.0.0.1", temp_dir=self._node_temp_dir(index),
                    object_store_memory=self.object_store_bytes)
        if head:
            # Ray's defaults (dashboard 8265, agent 52365) collide with any other head on
            # this machine (other users, other tests): take free loopback ports instead.
            self.dashboard_port = _free_port()
            args.update(include_dashboard=self.include_dashboard, dashboard_host="127.0.0.1",
                        dashboard_port=self.dashboard_port, dashboard_agent_listen_port=_free_port())
        return args

    def _own_pids(self) -> dict[int, int]:
        roots = []
        for _, node in self._node_of_spec:
            for infos in getattr(node, "all_processes", {}).values():
                roots.extend(i.process.pid for i in infos if getattr(i, "process", None) is not None)
        return descendants(roots) if roots else {}

    def stop(self) -> None:
        """Disconnect, stop every node and every process they started, clean up. Idempotent."""
        t0 = time.perf_counter()
        import ray

        if self._connected:
            ray.shutdown()
            self._connected = False
        if self._cluster is not None:
            self._pids |= self._own_pids()
            address = self._cluster.address
            try:
                self._cluster.shutdown()
            finally:
                self._leftover = kill_pids(self._pids, grace_s=2.0)
                self._cluster = None
                self._node_of_spec = []
                _forget_address(address)
        if self.temp_dir and not self.keep_temp_dir:
            shutil.rmtree(self.temp_dir, ignore_errors=True)
        if self._auth_prev is not None:
            _restore_env(self._auth_prev)
            self._auth_prev = None
        if self._loopback_prev is not None:
            restore_loopback(self._loopback_prev)
            self._loopback_prev = None
        self.stop_s = time.perf_counter() - t0

    # -- state
    @property
    def address(self) -> str:
        if self._cluster is None:
            raise ClusterError("LocalCluster is not started")
        return self._cluster.address

    @property
    def dashboard_url(self) -> str:
        """The Jobs/dashboard URL (``include_dashboard=True``), e.g. for ``slicer submit``."""
        if not self.include_dashboard or self.dashboard_port is None:
            raise ClusterError("this LocalCluster runs without a dashboard (include_dashboard=False)")
        return f"http://127.0.0.1:{self.dashboard_port}"

    @property
    def started_pids(self) -> dict[int, int]:
        """``{pid: start_time}`` of every process this cluster started that is known now
        (after stop(), those that were): what 'nothing left behind' is checked against."""
        return {**self._pids, **(self._own_pids() if self._cluster is not None else {})}

    @property
    def leftover_pids(self) -> list[int]:
        """Processes started by this cluster still alive after stop() (should be empty)."""
        return [p for p, st in self._leftover.items() if pid_alive(p, st)]

    def nodes(self) -> list[NodeInfo]:
        return list_nodes()

    def node_ids_by_class(self) -> dict[str, list[str]]:
        """``{device_class: [node_id, ...]}`` for the alive edge nodes; the server's under ``server``."""
        out: dict[str, list[str]] = {}
        for n in self.nodes():
            key = n.device_class if n.role == EDGE_ROLE else (n.role or "?")
            out.setdefault(key, []).append(n.node_id)
        return out

    def check_placement(self, label_selector: Mapping[str, str], **kw) -> list[NodeInfo]:
        return check_placement(label_selector, **kw)

    def add_edge_node(self, device_class: str, slots: int | None = None) -> str:
        """Add one more edge node of ``device_class``; returns its node id."""
        spec = NodeSpec(EDGE_ROLE, device_class, self.server_spec.num_cpus,
                        slots if slots is not None else (self.edge_specs[0].slots if self.edge_specs else 16))
        validate_selector({CLASS_LABEL: device_class})
        index = len(self._node_of_spec)
        node = self._cluster.add_node(**self._node_args(spec, index=index))
        self._node_of_spec.append((spec, node))
        _ray.write_ray_address(self._cluster.address, self._node_temp_dir(index))
        self._pids |= self._own_pids()
        return node.node_id

    def remove_node(self, node_id: str) -> None:
        """Kill one edge node's processes (fault injection); the head cannot be removed."""
        for i, (spec, node) in enumerate(self._node_of_spec):
            if node.node_id == node_id:
                if node is self._cluster.head_node:
                    raise ClusterError("the head (server) node cannot be removed: it holds the GCS")
                self._pids |= self._own_pids()
                self._cluster.remove_node(node, allow_graceful=False)
                del self._node_of_spec[i]
                return
        raise ClusterError(f"node {node_id} is not a node of this LocalCluster")


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _forget_address(address: str) -> None:
    """Remove /tmp/ray/ray_current_cluster if it still names our (stopped) cluster, so a
    later ``ray.init("auto")`` does not try to reach it."""
    try:
        f = _ray.ray_address_file()
        if os.path.isfile(f) and Path(f).read_text().strip() == address:
            os.remove(f)
    except (OSError, ImportError):
        pass


def _local_gpus() -> int:
    """CUDA devices of this machine (0 without torch or CUDA)."""
    try:
        import torch

        return int(torch.cuda.device_count()) if torch.cuda.is_available() else 0
    except Exception:
        return 0
