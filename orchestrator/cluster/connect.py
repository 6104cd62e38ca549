"""``connect``: this driver joins an existing cluster, its auth mode following the
cluster's (``cluster.auth``), its tracing variables travelling to the actors."""
from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from typing import Mapping

from slicer.orchestrator.cluster import _ray, auth
from slicer.orchestrator.cluster.persistent import read_state
from slicer.orchestrator.cluster.placement import (
    ClusterError,
    NodeInfo,
    check_placement,
    list_nodes,
)


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
            auth.restore_loopback(self.loopback_prev)
            self.loopback_prev = None
        if self.auth_prev is not None:
            auth._restore_env(self.auth_prev)
            self.auth_prev = None

    def __enter__(self) -> "Connection":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


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
        # RAY_ADDRESS (set inside a Ray job), else the `slicer cluster up` cluster, else the
        # address file of the last cluster started on this machine
        env_addr = os.environ.get("RAY_ADDRESS", "")
        if env_addr.startswith(("http://", "https://")):
            env_addr = ""  # the Jobs API's address (as `ray job submit` uses it), not a GCS
        target = env_addr or (read_state() or {}).get("address", "") or _ray.read_ray_address() or ""
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
        loopback_prev = auth.enable_loopback()
    try:
        if probe and target and not target.startswith("ray://") and target != "auto" and ":" in target:
            gcs = target.replace("http://", "")
            auth._match_auth(gcs, timeout_s, notice)
            auth._probe_gcs(gcs, timeout_s)  # with the mode chosen: a wrong token fails here, clearly
        ray.init(address=address, namespace=namespace, logging_level="WARNING", runtime_env=_job_env())
    except Exception as e:  # noqa: BLE001
        if loopback_prev is not None:
            auth.restore_loopback(loopback_prev)
        auth._restore_env(auth_prev)
        if isinstance(e, ClusterError):
            raise
        raise ClusterError(f"cannot connect to the Ray cluster at {address!r}: {type(e).__name__}: {e}") from e
    token_auth = os.environ.get("RAY_AUTH_MODE") == "token"
    return Connection(address=address, token_auth=token_auth, loopback_prev=loopback_prev, auth_prev=auth_prev)
