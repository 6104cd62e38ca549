"""Placement: the labels and slots of the cluster's nodes, and checks that fail fast.

Node label ``role``: ``server`` (the shared server) or ``edge``; node label
``device-class``: the edge device class (a name from ``policies/devices.yaml``); custom
resources ``server_slot`` / ``edge_slot`` for counted capacity. Ray's docs
(scheduling/labels) recommend labels for identity and custom resources for capacity,
which is the split used here; ``clusters/*.yaml`` and the actors share this vocabulary.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Iterable, Mapping

from slicer.orchestrator.cluster import _ray

ROLE_LABEL = "role"
CLASS_LABEL = "device-class"
SERVER_ROLE = "server"
EDGE_ROLE = "edge"
EDGE_SLOT = "edge_slot"
SERVER_SLOT = "server_slot"
DEFAULT_EDGE_CLASSES = ("laptop-cpu", "jetson-orin-nano")

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
    msg = _ray.validate_label_selector(dict(selector))
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
