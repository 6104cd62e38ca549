"""Cluster bootstrap: an embedded local multi-node Ray cluster on 127.0.0.1, a connection
to an existing cluster, and placement checks that fail fast.

Placement vocabulary (shared with ``clusters/*.yaml`` and the actors):

- node label ``role``: ``server`` (the shared server) or ``edge``;
- node label ``device-class``: the edge device class (a name from ``policies/devices.yaml``);
- custom resources for counted slots: ``server_slot`` on server nodes, ``edge_slot`` on
  edge nodes. Ray's docs (scheduling/labels) recommend labels for identity and custom
  resources for capacity, which is the split used here.

Loopback: ``ray.init(address="127.0.0.1:port")`` rewrites the address to the machine's
outward IP unless ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` (``services.resolve_ip_for_localhost``),
so ``LocalCluster`` turns that on for its lifetime (:func:`enable_loopback`) and every
process it starts inherits it. Never for :func:`connect`: a driver that reports 127.0.0.1
to a remote cluster cannot be called back.

Token authentication: a ``LocalCluster`` uses a random token held in this process's
environment only (never written to disk, so the user's ``~/.ray/auth_token`` is neither
read nor created). :func:`connect` asks the cluster what it requires (one GCS call without
a token: refused with ``AuthenticationError`` means token mode) and sets this driver's mode
to match. The driver's mode must match the cluster's, not merely carry a token: a driver in
token mode on a cluster without it starts actors whose calls back to the driver lack the
token ("Missing authorization header", ``ActorDiedError``), which is what a stray
``~/.ray/auth_token`` used to cause. When the user's ``RAY_AUTH_MODE`` disagrees with the
cluster, one line says so and what to do.
"""
from __future__ import annotations

import os
import secrets
import shutil
import signal
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Mapping

ROLE_LABEL = "role"
CLASS_LABEL = "device-class"
SERVER_ROLE = "server"
EDGE_ROLE = "edge"
EDGE_SLOT = "edge_slot"
SERVER_SLOT = "server_slot"
DEFAULT_EDGE_CLASSES = ("laptop-cpu", "jetson-orin-nano")
LOOPBACK_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"
_AUTH_VARS = ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN")
_PROCESS_TOKEN: str | None = None  # one per process: the token loader caches what it read


class ClusterError(RuntimeError):
    """The cluster could not be started, reached or used."""


class PlacementError(ClusterError):
    """No alive node can host an actor (a Ray selector matching no node pends forever)."""


@dataclass(frozen=True)
class NodeSpec:
    """One node of the embedded cluster."""

    role: str
    """``server`` or ``edge`` (node label ``role``)."""
    device_class: str | None = None
    """Edge device class (node label ``device-class``); None for the server."""
    num_cpus: int = 1
    """Logical CPUs; actors ask for fractions (the test machine has 2 cores for 3+ nodes)."""
    slots: int = 16
    """Counted slots: ``edge_slot`` or ``server_slot`` units this node offers."""

    def labels(self) -> dict[str, str]:
        out = {ROLE_LABEL: self.role}
        if self.device_class is not None:
            out[CLASS_LABEL] = self.device_class
        return out

    def resources(self) -> dict[str, float]:
        return {SERVER_SLOT if self.role == SERVER_ROLE else EDGE_SLOT: float(self.slots)}


@dataclass(frozen=True)
class NodeInfo:
    """One node as the cluster reports it (``ray.nodes()``)."""

    node_id: str
    """Hex node id."""
    alive: bool
    """False for nodes that left or died."""
    address: str
    """``NodeManagerAddress``: 127.0.0.1 for every node of a ``LocalCluster``."""
    labels: dict[str, str] = field(default_factory=dict)
    """Node labels, Ray's own ``ray.io/...`` ones included."""
    resources: dict[str, float] = field(default_factory=dict)
    """Total resources (CPU, memory, ``edge_slot``...)."""

    @property
    def role(self) -> str | None:
        return self.labels.get(ROLE_LABEL)

    @property
    def device_class(self) -> str | None:
        return self.labels.get(CLASS_LABEL)


def edge_selector(device_class: str) -> dict[str, str]:
    """Label selector of the edge nodes of one device class."""
    return {ROLE_LABEL: EDGE_ROLE, CLASS_LABEL: device_class}


def server_selector() -> dict[str, str]:
    """Label selector of the server node(s)."""
    return {ROLE_LABEL: SERVER_ROLE}


# ----------------------------------------------------------------------------- selectors


def _selector_values(expr: str) -> tuple[bool, set[str]]:
    """``"a"`` / ``"!a"`` / ``"in(a,b)"`` / ``"!in(a,b)"`` -> (negated, values), Ray's syntax."""
    neg = expr.startswith("!")
    body = expr[1:] if neg else expr
    if body.startswith("in(") and body.endswith(")"):
        vals = {v.strip() for v in body[3:-1].split(",") if v.strip()}
    elif body.startswith("(") and body.endswith(")"):
        vals = {v.strip() for v in body[1:-1].split(",") if v.strip()}
    else:
        vals = {body}
    return neg, vals


def selector_matches(selector: Mapping[str, str], labels: Mapping[str, str]) -> bool:
    """Whether a node with ``labels`` satisfies a Ray label selector (all keys must hold).
    ``!v`` and ``!in(...)`` also match nodes without the key, as in Kubernetes."""
    for key, expr in selector.items():
        neg, vals = _selector_values(str(expr))
        have = labels.get(key)
        if neg:
            if have is not None and have in vals:
                return False
        elif have is None or have not in vals:
            return False
    return True


def validate_selector(selector: Mapping[str, str]) -> None:
    """Raise ValueError naming the bad key/value (Ray's own syntax check)."""
    from ray._private.label_utils import validate_label_selector

    msg = validate_label_selector(dict(selector))
    if msg:
        raise ValueError(f"label_selector {dict(selector)!r}: {msg}")


# ----------------------------------------------------------------------------- nodes


def list_nodes(alive_only: bool = True) -> list[NodeInfo]:
    """Nodes of the cluster this process is connected to."""
    import ray

    if not ray.is_initialized():
        raise ClusterError("not connected to a Ray cluster (start a LocalCluster or call connect())")
    out = []
    for n in ray.nodes():
        info = NodeInfo(node_id=n["NodeID"], alive=bool(n["Alive"]), address=n.get("NodeManagerAddress", ""),
                        labels=dict(n.get("Labels") or {}), resources=dict(n.get("Resources") or {}))
        if info.alive or not alive_only:
            out.append(info)
    return out


def check_placement(label_selector: Mapping[str, str], *, resources: Mapping[str, float] | None = None,
                    count: int = 1, nodes: Iterable[NodeInfo] | None = None) -> list[NodeInfo]:
    """The alive nodes matching ``label_selector`` that can host ``count`` actors each
    asking ``resources`` (summed over the matching nodes' totals). Raises PlacementError,
    naming the missing device class or role and what the cluster has, instead of letting
    Ray pend forever. Takes milliseconds: one ``ray.nodes()`` call."""
    validate_selector(label_selector)
    all_nodes = list(nodes) if nodes is not None else list_nodes()
    alive = [n for n in all_nodes if n.alive]
    match = [n for n in alive if selector_matches(label_selector, n.labels)]
    have_classes = sorted({n.device_class for n in alive if n.device_class})
    have_roles = sorted({n.role for n in alive if n.role})
    if not match:
        # Name the keys no alive node satisfies on its own: usually the missing class.
        what = []
        for key, expr in label_selector.items():
            if any(selector_matches({key: expr}, n.labels) for n in alive):
                continue
            if key == CLASS_LABEL:
                what.append(f"device class {expr!r} has no alive node (classes present: {have_classes})")
            elif key == ROLE_LABEL:
                what.append(f"role {expr!r} has no alive node (roles present: {have_roles})")
            else:
                what.append(f"label {key}={expr!r} matches no alive node")
        detail = "; ".join(what) or ("each label matches some node but no node has them all: "
                                     f"{[{k: v for k, v in n.labels.items() if not k.startswith('ray.io/')} for n in alive]}")
        raise PlacementError(f"no alive node matches label_selector {dict(label_selector)!r}: {detail}; "
                             f"{len(alive)} alive node(s). Add a node with these labels "
                             f"(clusters/*.yaml) or change the workload's device classes.")
    for res, need in (resources or {}).items():
        total = sum(n.resources.get(res, 0.0) for n in match)
        if total + 1e-9 < need * count:
            raise PlacementError(f"nodes matching {dict(label_selector)!r} offer {total:g} {res!r} in total, "
                                 f"{count} actor(s) x {need:g} need {need * count:g}: raise the nodes' {res} "
                                 f"or lower the device count")
    return match


def wait_for_nodes(n: int, timeout_s: float = 30.0) -> list[NodeInfo]:
    """Wait until at least ``n`` nodes are alive; ClusterError after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        alive = list_nodes()
        if len(alive) >= n:
            return alive
        if time.monotonic() > deadline:
            raise ClusterError(f"only {len(alive)} of {n} node(s) alive after {timeout_s:.0f} s")
        time.sleep(0.2)


# ----------------------------------------------------------------------------- environment


def enable_loopback() -> dict:
    """Make Ray in this process (and the processes it starts) use 127.0.0.1 for every node.
    Call before ``import ray`` when possible; when Ray is already imported the constant it
    read at import is patched too. Returns the previous state for :func:`restore_loopback`."""
    prev = {"env": os.environ.get(LOOPBACK_ENV), "const": None}
    os.environ[LOOPBACK_ENV] = "0"
    rc = sys.modules.get("ray._private.ray_constants")
    if rc is not None:
        prev["const"] = rc.ENABLE_RAY_CLUSTER
        rc.ENABLE_RAY_CLUSTER = False
    return prev


def restore_loopback(prev: dict) -> None:
    if prev.get("env") is None:
        os.environ.pop(LOOPBACK_ENV, None)
    else:
        os.environ[LOOPBACK_ENV] = prev["env"]
    rc = sys.modules.get("ray._private.ray_constants")
    if rc is not None and prev.get("const") is not None:
        rc.ENABLE_RAY_CLUSTER = prev["const"]


def find_token() -> str | None:
    """The auth token in Ray's order: ``RAY_AUTH_TOKEN``, ``RAY_AUTH_TOKEN_PATH``, ``~/.ray/auth_token``."""
    tok = os.environ.get("RAY_AUTH_TOKEN", "").strip()
    if tok:
        return tok
    for p in (os.environ.get("RAY_AUTH_TOKEN_PATH"), str(Path.home() / ".ray" / "auth_token")):
        if p and os.path.isfile(p):
            tok = Path(p).read_text(encoding="utf-8").strip()
            if tok:
                return tok
    return None


def _reload_auth_config() -> None:
    # Ray caches the auth mode in RayConfig and the token in a C++ loader; both must see
    # the environment we just set (this is what Ray's own _enable_token_auth does).
    from ray._raylet import AuthenticationTokenLoader, Config

    Config.initialize("")
    AuthenticationTokenLoader.instance().reset_cache()


def _set_auth(mode: str) -> dict:
    """Apply an auth mode to this process's environment; returns what to restore."""
    global _PROCESS_TOKEN
    prev = {k: os.environ.get(k) for k in _AUTH_VARS}
    if mode == "inherit":
        return prev
    if mode == "disabled":
        os.environ["RAY_AUTH_MODE"] = "disabled"
    elif mode == "token":
        if not (os.environ.get("RAY_AUTH_MODE") == "token" and os.environ.get("RAY_AUTH_TOKEN")):
            _PROCESS_TOKEN = _PROCESS_TOKEN or secrets.token_hex(32)
            os.environ["RAY_AUTH_MODE"] = "token"
            os.environ["RAY_AUTH_TOKEN"] = _PROCESS_TOKEN
    else:
        raise ValueError(f"auth={mode!r}: allowed token, disabled, inherit")
    _reload_auth_config()
    return prev


def _restore_env(prev: Mapping[str, str | None]) -> None:
    for k, v in prev.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
    _reload_auth_config()


# ----------------------------------------------------------------------------- processes


def _children_map() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat", encoding="utf-8", errors="replace") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        kids.setdefault(ppid, []).append(int(d))
    return kids


def _start_time(pid: int) -> int | None:
    """Start time of ``pid`` in clock ticks since boot (field 22 of /proc/PID/stat); with
    the pid it names one process, so a recycled pid is never mistaken for ours."""
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8", errors="replace") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return None if fields[0] == "Z" else int(fields[19])
    except (OSError, IndexError, ValueError):
        return None


def descendants(roots: Iterable[int]) -> dict[int, int]:
    """``roots`` and every live process below them (Linux /proc), as ``{pid: start_time}``."""
    kids = _children_map()
    out: dict[int, int] = {}
    stack = list(roots)
    while stack:
        p = stack.pop()
        if p in out:
            continue
        st = _start_time(p)
        if st is not None:
            out[p] = st
        stack.extend(kids.get(p, []))
    return out


def pid_alive(pid: int, start_time: int | None = None) -> bool:
    """Alive, not a zombie and (when given) still the process that started at ``start_time``."""
    st = _start_time(pid)
    return st is not None and (start_time is None or st == start_time)


def kill_pids(pids: Mapping[int, int], grace_s: float = 3.0) -> dict[int, int]:
    """SIGTERM the processes ``{pid: start_time}``, SIGKILL those alive after ``grace_s``;
    returns those still alive. Processes whose pid now names another process are skipped."""
    left = {p: st for p, st in pids.items() if p != os.getpid() and pid_alive(p, st)}
    for sig, wait_s in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 5.0)):
        for p, st in left.items():
            if pid_alive(p, st):
                try:
                    os.kill(p, sig)
                except (ProcessLookupError, PermissionError):
                    pass
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            left = {p: st for p, st in left.items() if pid_alive(p, st)}
            if not left:
                return {}
            time.sleep(0.05)
    return {p: st for p, st in left.items() if pid_alive(p, st)}


# ----------------------------------------------------------------------------- local cluster


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
        from ray._common.utils import get_default_ray_temp_dir
        from ray.cluster_utils import Cluster

        if ray.is_initialized():
            restore_loopback(self._loopback_prev)
            raise ClusterError("this process is already connected to a Ray cluster; ray.shutdown() it first")
        self._auth_prev = _set_auth(self.auth)
        # Our own temp root (short: socket paths must stay under 107 bytes) so stop() can
        # remove everything; Cluster still writes /tmp/ray/ray_current_cluster, whose
        # folder must exist (FileNotFoundError otherwise).
        self.temp_dir = tempfile.mkdtemp(prefix="slicer-ray-", dir="/tmp" if os.path.isdir("/tmp") else None)
        os.makedirs(get_default_ray_temp_dir(), exist_ok=True)
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
            from ray._private.utils import write_ray_address

            for i in range(len(self._node_of_spec)):
                write_ray_address(self._cluster.address, self._node_temp_dir(i))
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
        from ray._private.utils import write_ray_address

        write_ray_address(self._cluster.address, self._node_temp_dir(index))
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
        from ray._common.utils import get_ray_address_file

        f = get_ray_address_file(None)
        if os.path.isfile(f) and Path(f).read_text().strip() == address:
            os.remove(f)
    except (OSError, ImportError):
        pass


# ----------------------------------------------------------------------------- persistent local cluster
#
# `slicer cluster up` / `down`: the same node layout as LocalCluster, but started with
# Ray's own `ray start` so it outlives the command, for `slicer run --address` and
# `slicer submit` on a laptop. Ray rewrites 127.0.0.1 to the outward IP in `ray start`
# (head and workers; NOTES.md "Loopback workers"), and RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0,
# which keeps every other Ray process on 127.0.0.1, makes worker starts refuse: each `ray
# start` runs in a child Python with that variable set for the daemons it starts, and
# patches, for itself only, the check and the two functions doing the rewrite
# (`_ray_start_main`, the one place here that touches them).
# Every process of the cluster carries SLICER_CLUSTER_ID=<id> in its environment: `down`
# stops exactly those (checked by start time), never `ray stop`, which would stop every
# Ray cluster of the user on the machine.

CLUSTER_ID_ENV = "SLICER_CLUSTER_ID"


def state_path() -> Path:
    """Where `slicer cluster up` records its cluster: ``$SLICER_HOME`` or ``~/.slicer``."""
    return Path(os.environ.get("SLICER_HOME") or Path.home() / ".slicer") / "cluster.json"


def read_state() -> dict | None:
    """The running `slicer cluster up` cluster's record, or None."""
    import json

    p = state_path()
    try:
        st = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    ok = isinstance(st, dict) and all(isinstance(st.get(k), str) and st.get(k) for k in ("address", "id"))
    return st if ok else None


def marked_pids(cluster_id: str) -> dict[int, int]:
    """``{pid: start_time}`` of this user's processes whose environment carries the
    cluster's id (Ray's daemons, the workers they start, and their children)."""
    needle = f"{CLUSTER_ID_ENV}={cluster_id}".encode()
    out = {}
    for d in os.listdir("/proc"):
        if not d.isdigit() or int(d) == os.getpid():
            continue
        try:
            with open(f"/proc/{d}/environ", "rb") as f:
                env = f.read().split(b"\0")
        except OSError:
            continue
        if needle in env:
            st = _start_time(int(d))
            if st is not None:
                out[int(d)] = st
    return out


def _ray_start_main(argv: list[str]) -> int:
    """``ray start ARGS`` with every node address on 127.0.0.1 (run in a child process)."""
    import ray._private.services as services

    def keep_host(host: str) -> str:
        if not host:
            raise ValueError(f"Malformed host: {host}")
        return host

    services.resolve_ip_for_localhost = keep_host
    services.get_node_ip_address = lambda address=None: "127.0.0.1"
    # The daemons inherit RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0, so each of their own
    # ray.init calls (the dashboard agent's job supervisor, job drivers) stays on
    # 127.0.0.1; only this CLI process ignores it, or `ray start --address` refuses.
    import ray._private.ray_constants as ray_constants

    ray_constants.ENABLE_RAY_CLUSTER = True
    from ray.scripts.scripts import main as ray_main

    sys.argv = ["ray", "start", *argv]
    try:
        ray_main()
    except SystemExit as e:
        return int(e.code or 0)
    return 0


def _ray_start(args: list[str], env: dict, timeout_s: float) -> None:
    import subprocess

    p = subprocess.run([sys.executable, "-m", "slicer.orchestrator.cluster", "ray-start", *args], env=env,
                       stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout_s)
    if p.returncode != 0:
        tail = "\n".join((p.stderr or p.stdout).strip().splitlines()[-8:])
        raise ClusterError(f"`ray start {' '.join(args[:2])} ...` failed (exit {p.returncode}):\n{tail}")


def ensure_token(progress=None) -> str:
    """The token the cluster will require: the user's (``RAY_AUTH_TOKEN``,
    ``RAY_AUTH_TOKEN_PATH``, ``~/.ray/auth_token``), else a new one written to
    ``~/.ray/auth_token`` (mode 600), where Ray and every slicer command look."""
    tok = find_token()
    if tok:
        return tok
    path = Path.home() / ".ray" / "auth_token"
    path.parent.mkdir(parents=True, exist_ok=True)
    tok = secrets.token_hex(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(tok)
    if progress is not None:
        progress.write(f"slicer: wrote a new Ray auth token to {path} (mode 600)\n")
    return tok


def cluster_up(edge_classes: Iterable[str] = DEFAULT_EDGE_CLASSES, *, nodes_per_class: int = 1,
               edge_slots: int = 16, server_slots: int = 1, num_cpus_per_node: int = 1,
               timeout_s: float = 180.0, progress=None) -> dict:
    """Start a persistent local cluster (server head + edge nodes, labels, token auth,
    everything on 127.0.0.1) and record it in :func:`state_path`; returns the record."""
    import json
    import uuid

    classes = list(dict.fromkeys(edge_classes))
    if not classes:
        raise ValueError("--classes: give at least one device class")
    for c in classes:
        validate_selector({CLASS_LABEL: c})
    if nodes_per_class < 1 or edge_slots < 1 or server_slots < 1 or num_cpus_per_node < 0:
        raise ValueError("nodes per class, slots >= 1 and CPUs per node >= 0 are required")
    old = read_state()
    if old is not None and marked_pids(old["id"]):
        raise ClusterError(f"a slicer cluster is already up at {old['address']} (`slicer cluster down` first)")
    ensure_token(progress)
    cid = uuid.uuid4().hex[:12]
    root = tempfile.mkdtemp(prefix=f"slicer-rc-{cid[:6]}-", dir="/tmp" if os.path.isdir("/tmp") else None)
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update({CLUSTER_ID_ENV: cid, "RAY_AUTH_MODE": "token", "RAY_USAGE_STATS_ENABLED": "0", LOOPBACK_ENV: "0",
                # metrics exported every 2 s (Ray's default 10 s): `slicer top` sees a run as it goes
                "RAY_metrics_report_interval_ms": env.get("RAY_metrics_report_interval_ms", "2000")})
    port, dash = _free_port(), _free_port()
    state = {"id": cid, "address": f"127.0.0.1:{port}", "dashboard_url": f"http://127.0.0.1:{dash}",
             "temp_dir": root, "classes": classes, "nodes": 1 + len(classes) * nodes_per_class,
             "started_at": time.time()}
    t0 = time.perf_counter()

    def node_args(index: int, labels: dict[str, str], resources: dict[str, int]) -> list[str]:
        d = os.path.join(root, f"n{index}")
        os.makedirs(d, exist_ok=True)
        return [f"--num-cpus={num_cpus_per_node}", "--num-gpus=0", "--node-ip-address=127.0.0.1",
                f"--labels={','.join(f'{k}={v}' for k, v in labels.items())}",
                f"--resources={json.dumps(resources)}", f"--temp-dir={d}",
                f"--dashboard-agent-listen-port={_free_port()}", "--disable-usage-stats"]

    try:
        if progress is not None:
            progress.write(f"slicer: starting the head (server node) on 127.0.0.1:{port}...\n")
            progress.flush()
        _ray_start(["--head", f"--port={port}", "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}",
                    "--include-dashboard=true",
                    *node_args(0, {ROLE_LABEL: SERVER_ROLE}, {SERVER_SLOT: server_slots})], env, timeout_s)
        state_path().parent.mkdir(parents=True, exist_ok=True)
        state_path().write_text(json.dumps(state, indent=1) + "\n", encoding="utf-8")  # `down` works from here on
        i = 1
        for c in classes:
            for _ in range(nodes_per_class):
                if progress is not None:
                    progress.write(f"slicer: starting edge node {i}/{state['nodes'] - 1} ({c})...\n")
                    progress.flush()
                _ray_start([f"--address=127.0.0.1:{port}",
                            *node_args(i, {ROLE_LABEL: EDGE_ROLE, CLASS_LABEL: c}, {EDGE_SLOT: edge_slots})],
                           env, timeout_s)
                i += 1
    except BaseException:
        cluster_down(state, quiet=True)
        raise
    state["start_s"] = round(time.perf_counter() - t0, 1)
    state_path().write_text(json.dumps(state, indent=1) + "\n", encoding="utf-8")
    return state


def cluster_down(state: dict | None = None, *, quiet: bool = False, grace_s: float = 5.0) -> dict:
    """Stop the recorded cluster's processes (and only those), remove its temp dir and
    record. Returns ``{"stopped": n, "left": [pids]}``."""
    st = state or read_state()
    if st is None:
        if quiet:
            return {"stopped": 0, "left": []}
        raise ClusterError(f"no slicer cluster is recorded in {state_path()} (nothing to stop)")
    pids = marked_pids(st["id"])
    left = kill_pids(pids, grace_s=grace_s)
    # Workers forked while we were stopping carry the id too: a second pass.
    again = marked_pids(st["id"])
    left = {**left, **kill_pids(again, grace_s=grace_s)} if again else left
    # The record is a file in the user's home: remove only a folder `up` could have made.
    root = os.path.realpath(str(st.get("temp_dir") or "/nonexistent"))
    if (os.path.dirname(root) == os.path.realpath(tempfile.gettempdir())
            and os.path.basename(root).startswith("slicer-rc-") and os.path.isdir(root)):
        shutil.rmtree(root, ignore_errors=True)
    cur = read_state()
    if cur is not None and cur.get("id") == st["id"]:
        state_path().unlink(missing_ok=True)
    return {"stopped": len(pids | again), "left": sorted(p for p, t in left.items() if pid_alive(p, t))}


# ----------------------------------------------------------------------------- existing cluster


@dataclass
class Connection:
    """A driver connection to an existing cluster (``--address``). A context manager."""

    address: str
    """What the user gave (``auto``, ``HOST:PORT`` or ``ray://HOST:PORT``)."""
    token_auth: bool
    """Whether this driver sends a token."""
    loopback_prev: dict | None = None
    """State to restore on close when the address was on loopback (see enable_loopback)."""
    auth_prev: dict | None = None
    """``RAY_AUTH_MODE`` as it was before connect() matched it to the cluster."""

    def nodes(self) -> list[NodeInfo]:
        return list_nodes()

    def check_placement(self, label_selector: Mapping[str, str], **kw) -> list[NodeInfo]:
        return check_placement(label_selector, **kw)

    def close(self) -> None:
        import ray

        ray.shutdown()
        if self.loopback_prev is not None:
            restore_loopback(self.loopback_prev)
            self.loopback_prev = None
        if self.auth_prev is not None:
            _restore_env(self.auth_prev)
            self.auth_prev = None

    def __enter__(self) -> "Connection":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _probe_gcs(address: str, timeout_s: float) -> None:
    """Fail within ``timeout_s`` with a clear error when the GCS at HOST:PORT refuses this
    process's auth mode and token (``ray.init`` alone retries for about 20 s first).
    Called after :func:`cluster_requires_token`, which checked that it is reachable."""
    from ray._raylet import GcsClient

    try:
        GcsClient(address=address).internal_kv_keys(b"", None, timeout=timeout_s)
    except Exception as e:  # noqa: BLE001 - re-raised with the address and the cause
        hint = (" (the token was refused: use the cluster's own token, `ray get-auth-token` on the head)"
                if _is_auth_error(e) else "")
        raise ClusterError(f"cannot use the Ray cluster at {address}: {type(e).__name__}: "
                           f"{str(e).splitlines()[0] if str(e) else ''}{hint}") from e


def _is_auth_error(e: BaseException) -> bool:
    from ray.exceptions import AuthenticationError

    return isinstance(e, AuthenticationError) or "InvalidAuthToken" in str(e) or "authorization" in str(e).lower()


def cluster_requires_token(address: str, timeout_s: float = 10.0) -> bool:
    """Whether the GCS at HOST:PORT requires token authentication: one call made without
    a token. ClusterError when the cluster cannot be reached at all."""
    import socket

    host, _, port = address.rpartition(":")
    try:  # a plain TCP connect first: Ray's client waits ~40 s on a dead address
        socket.create_connection((host.strip("[]"), int(port)), timeout=min(timeout_s, 5.0)).close()
    except (OSError, ValueError) as e:
        raise ClusterError(f"cannot reach the Ray cluster at {address}: {type(e).__name__}: {e} "
                           f"(is it up? the address is the GCS HOST:PORT, default port 6379)") from e
    # A bare gRPC call (Ray's generated stub, no metadata) rather than Ray's GcsClient,
    # whose refusal also prints a C++ warning line on every connect.
    import grpc
    from ray.core.generated import gcs_service_pb2, gcs_service_pb2_grpc

    with grpc.insecure_channel(address) as ch:
        try:
            gcs_service_pb2_grpc.NodeInfoGcsServiceStub(ch).GetClusterId(
                gcs_service_pb2.GetClusterIdRequest(), timeout=timeout_s)
            return False
        except grpc.RpcError as e:
            if e.code() == grpc.StatusCode.UNAUTHENTICATED:
                return True
            raise ClusterError(f"cannot use the Ray cluster at {address}: {e.code().name}: {e.details()}") from e


def _match_auth(target: str, timeout_s: float, notice) -> None:
    """Set this process's auth mode to what the cluster at ``target`` requires; one line
    to ``notice`` when the user's ``RAY_AUTH_MODE`` said otherwise."""
    user = (os.environ.get("RAY_AUTH_MODE") or "").lower() or None
    needs = cluster_requires_token(target, timeout_s)
    if needs:
        if user == "disabled":
            raise ClusterError(f"the Ray cluster at {target} requires token authentication but RAY_AUTH_MODE="
                               f"disabled: unset RAY_AUTH_MODE and put the cluster's token in ~/.ray/auth_token, "
                               f"RAY_AUTH_TOKEN_PATH or RAY_AUTH_TOKEN")
        if find_token() is None:
            raise ClusterError(f"the Ray cluster at {target} requires token authentication and no token was "
                               f"found: put the cluster's token (`ray get-auth-token` on the head) in "
                               f"~/.ray/auth_token, RAY_AUTH_TOKEN_PATH or RAY_AUTH_TOKEN")
        os.environ["RAY_AUTH_MODE"] = "token"
    else:
        if user == "token" and notice is not None:
            print(f"slicer: the Ray cluster at {target} runs without token authentication, so this driver "
                  f"connects without it (RAY_AUTH_MODE=token ignored; unset it to silence this line)",
                  file=notice)
        # A token file alone must not switch token mode on here (see the module docstring).
        os.environ["RAY_AUTH_MODE"] = "disabled"
    _reload_auth_config()


def _job_env() -> dict | None:
    """This driver's job-level runtime_env: the ``OTEL_*`` tracing variables, so every actor
    exports where the driver was told to (actors do not inherit the driver's environment).
    Inside a Ray job those the job was submitted with reach the actors already, and Ray
    refuses a driver runtime_env that repeats a job's variable: they are left out."""
    import json

    from slicer.actors.telemetry import otlp_env

    env = otlp_env()
    job = os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR")
    if job:
        try:
            have = (json.loads(job).get("runtime_env") or {}).get("env_vars") or {}
        except (ValueError, AttributeError):
            have = {}
        env = {k: v for k, v in env.items() if k not in have}
    return {"env_vars": env} if env else None


def connect(address: str | None = "auto", *, namespace: str = "slicer", timeout_s: float = 15.0,
            probe: bool = True, notice=sys.stderr) -> Connection:
    """Connect this process's driver to an existing cluster. ``auto`` finds a local one
    (or uses ``RAY_ADDRESS``, as inside a Ray job). The driver's auth mode follows what
    the cluster requires (``probe``; with ``probe=False`` or ``ray://``, the environment's
    ``RAY_AUTH_MODE`` as it is)."""
    import ray

    address = address or "auto"
    if ray.is_initialized():
        raise ClusterError("this process is already connected to a Ray cluster; ray.shutdown() it first")
    target = address
    if address == "auto":
        from ray._private.utils import read_ray_address

        # RAY_ADDRESS (set inside a Ray job), else the `slicer cluster up` cluster, else the
        # address file of the last cluster started on this machine
        env_addr = os.environ.get("RAY_ADDRESS", "")
        if env_addr.startswith(("http://", "https://")):
            env_addr = ""  # the Jobs API's address (as `ray job submit` uses it), not a GCS
        target = env_addr or (read_state() or {}).get("address", "") or read_ray_address() or ""
        if target:
            address = target  # resolved here: Ray's own "auto" would look elsewhere
        else:
            # Ray's "auto" would then attach to any GCS process it finds on the host,
            # which on a shared machine can be someone else's cluster.
            raise ClusterError("--address auto: no RAY_ADDRESS, no local cluster address file and no "
                               "`slicer cluster up` cluster; "
                               "pass the cluster's HOST:PORT (GCS port, default 6379)")
    host = target.split("://")[-1].rsplit(":", 1)[0]
    loopback_prev = None
    auth_prev = {"RAY_AUTH_MODE": os.environ.get("RAY_AUTH_MODE")}
    if host in ("127.0.0.1", "localhost"):
        # A cluster on this machine's loopback (a LocalCluster, a test head): the driver
        # must report 127.0.0.1 too, or ray.init rewrites the address and retries forever.
        loopback_prev = enable_loopback()
    try:
        if probe and target and not target.startswith("ray://") and target != "auto" and ":" in target:
            gcs = target.replace("http://", "")
            _match_auth(gcs, timeout_s, notice)
            _probe_gcs(gcs, timeout_s)  # with the mode chosen: a wrong token fails here, clearly
        ray.init(address=address, namespace=namespace, logging_level="WARNING", runtime_env=_job_env())
    except Exception as e:  # noqa: BLE001
        if loopback_prev is not None:
            restore_loopback(loopback_prev)
        _restore_env(auth_prev)
        if isinstance(e, ClusterError):
            raise
        raise ClusterError(f"cannot connect to the Ray cluster at {address!r}: {type(e).__name__}: {e}") from e
    token_auth = os.environ.get("RAY_AUTH_MODE") == "token"
    return Connection(address=address, token_auth=token_auth, loopback_prev=loopback_prev, auth_prev=auth_prev)


def _local_gpus() -> int:
    """CUDA devices of this machine (0 without torch or CUDA)."""
    try:
        import torch

        return int(torch.cuda.device_count()) if torch.cuda.is_available() else 0
    except Exception:
        return 0


if __name__ == "__main__":
    if sys.argv[1:2] != ["ray-start"]:
        sys.exit("usage: python -m slicer.orchestrator.cluster ray-start RAY_START_ARGS...")
    sys.exit(_ray_start_main(sys.argv[2:]))
