"""`slicer cluster up` / `down`: a persistent local multi-node cluster on 127.0.0.1."""
from __future__ import annotations

import os
import secrets
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Iterable

from slicer.orchestrator.cluster import _ray
from slicer.orchestrator.cluster.auth import LOOPBACK_ENV, find_token
from slicer.orchestrator.cluster.local import _free_port, _local_gpus
from slicer.orchestrator.cluster.placement import (
    CLASS_LABEL,
    DEFAULT_EDGE_CLASSES,
    EDGE_ROLE,
    SERVER_ROLE,
    ClusterError,
    NodeSpec,
    validate_selector,
)
from slicer.orchestrator.cluster.processes import _start_time, kill_pids, pid_alive

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
    # The daemons inherit RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0, so each of their own
    # ray.init calls (the dashboard agent's job supervisor, job drivers) stays on
    # 127.0.0.1; only this CLI process ignores it, or `ray start --address` refuses.
    _ray.keep_loopback_in_ray_start()
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

    def node_args(index: int, spec: NodeSpec) -> list[str]:
        d = os.path.join(root, f"n{index}")
        os.makedirs(d, exist_ok=True)
        # The server node gets this machine's GPUs (a CUDA server is placed with num_gpus=1),
        # as the embedded cluster's does; edge nodes get none.
        gpus = _local_gpus() if spec.role == SERVER_ROLE else 0
        return [f"--num-cpus={num_cpus_per_node}", f"--num-gpus={gpus}", "--node-ip-address=127.0.0.1",
                f"--labels={','.join(f'{k}={v}' for k, v in spec.labels().items())}",
                f"--resources={json.dumps({k: int(v) for k, v in spec.resources().items()})}", f"--temp-dir={d}",
                f"--dashboard-agent-listen-port={_free_port()}", "--disable-usage-stats"]

    try:
        if progress is not None:
            progress.write(f"slicer: starting the head (server node) on 127.0.0.1:{port}...\n")
            progress.flush()
        _ray_start(["--head", f"--port={port}", "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}",
                    "--include-dashboard=true",
                    *node_args(0, NodeSpec(SERVER_ROLE, slots=server_slots))], env, timeout_s)
        state_path().parent.mkdir(parents=True, exist_ok=True)
        state_path().write_text(json.dumps(state, indent=1) + "\n", encoding="utf-8")  # `down` works from here on
        i = 1
        for c in classes:
            for _ in range(nodes_per_class):
                if progress is not None:
                    progress.write(f"slicer: starting edge node {i}/{state['nodes'] - 1} ({c})...\n")
                    progress.flush()
                _ray_start([f"--address=127.0.0.1:{port}",
                            *node_args(i, NodeSpec(EDGE_ROLE, c, slots=edge_slots))],
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
