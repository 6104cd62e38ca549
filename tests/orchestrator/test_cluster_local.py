"""The embedded local multi-node cluster on loopback: labels, slots, placement as Ray
does it, fail-fast placement errors, token authentication, only 127.0.0.1 bound, and
nothing left behind (with and without a ``~/.ray/auth_token`` file)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from slicer.orchestrator import cluster as C

from tests.orchestrator.conftest import write_tiny_job

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]
CLASSES = ["laptop-cpu", "jetson-orin-nano"]
_ENV_KEYS = ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER")
ENV_BEFORE: dict = {}  # filled by the fixture just before the cluster starts


def listen_addresses(pids) -> set[str]:
    """Local addresses of the TCP LISTEN sockets owned by ``pids`` (from /proc)."""
    inodes = {}
    for pid in pids:
        try:
            for fd in os.listdir(f"/proc/{pid}/fd"):
                link = os.readlink(f"/proc/{pid}/fd/{fd}")
                if link.startswith("socket:["):
                    inodes[link[8:-1]] = pid
        except OSError:
            continue
    out = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            rows = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            f = row.split()
            if f[3] != "0A" or f[9] not in inodes:  # 0A = LISTEN
                continue
            out.add(_decode_ip(f[1].split(":")[0]))
    return out


def _decode_ip(hexip: str) -> str:
    """/proc/net/tcp{,6} addresses: 32-bit words in host (little-endian) byte order;
    IPv4-mapped IPv6 (::ffff:a.b.c.d) is reported as a.b.c.d, ::1 as itself."""
    import ipaddress

    raw = b"".join(bytes.fromhex(hexip[i:i + 8])[::-1] for i in range(0, len(hexip), 8))
    ip = ipaddress.ip_address(raw)
    if ip.version == 6 and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return str(ip)


@pytest.fixture(scope="module")
def local(tmp_path_factory):
    # An empty HOME: the state "no ~/.ray/auth_token" (the other state runs in a subprocess
    # below), and nothing of the user's is read or written.
    old_home = os.environ.get("HOME")
    os.environ["HOME"] = str(tmp_path_factory.mktemp("home"))
    ENV_BEFORE.update({k: os.environ.get(k) for k in _ENV_KEYS})
    try:
        # With a dashboard: the Jobs API that `slicer submit` uses (test at the end).
        with C.LocalCluster(edge_classes=CLASSES, edge_slots=4, include_dashboard=True) as lc:
            yield lc
    finally:
        os.environ["HOME"] = old_home


def test_nodes_have_labels_slots_and_loopback_addresses(local):
    nodes = local.nodes()
    assert len(nodes) == 3
    assert {n.address for n in nodes} == {"127.0.0.1"}
    by_role = {}
    for n in nodes:
        by_role.setdefault(n.role, []).append(n)
    assert len(by_role["server"]) == 1 and by_role["server"][0].resources.get("server_slot") == 1
    assert sorted(n.device_class for n in by_role["edge"]) == sorted(CLASSES)
    assert all(n.resources.get("edge_slot") == 4 for n in by_role["edge"])
    assert sorted(local.node_ids_by_class()) == sorted(CLASSES + ["server"])


def test_ray_places_where_our_selector_says(local):
    import ray

    @ray.remote(num_cpus=0.1)
    def where():
        return ray.get_runtime_context().get_node_id()

    nodes = local.nodes()
    selectors = [C.server_selector(), C.edge_selector("laptop-cpu"), C.edge_selector("jetson-orin-nano"),
                 {"device-class": "!laptop-cpu"}, {"device-class": "in(laptop-cpu,jetson-orin-nano)"},
                 {"role": "!edge"}]
    refs = [where.options(label_selector=s).remote() for s in selectors]
    got = ray.get(refs, timeout=60)
    for s, node_id in zip(selectors, got):
        predicted = {n.node_id for n in nodes if C.selector_matches(s, n.labels)}
        assert node_id in predicted, (s, node_id, predicted)


def test_missing_class_fails_fast_with_its_name(local):
    t0 = time.perf_counter()
    with pytest.raises(C.PlacementError, match="raspberry-pi-5"):
        local.check_placement(C.edge_selector("raspberry-pi-5"))
    with pytest.raises(C.PlacementError, match="need 5"):
        local.check_placement(C.edge_selector("laptop-cpu"), resources={C.EDGE_SLOT: 1}, count=5)
    assert time.perf_counter() - t0 < 5.0
    assert [n.device_class for n in local.check_placement(C.edge_selector("laptop-cpu"),
                                                           resources={C.EDGE_SLOT: 1}, count=4)] == ["laptop-cpu"]


def test_only_loopback_is_bound(local):
    addrs = listen_addresses(local.started_pids)
    assert addrs, "found no listening socket of the cluster's processes"
    assert addrs == {"127.0.0.1"}, addrs


_CONNECT = """
import json, sys
from slicer.orchestrator.cluster import connect, ClusterError
try:
    with connect(sys.argv[1], timeout_s=3) as c:
        print(json.dumps({"ok": True, "classes": sorted(n.device_class or n.role for n in c.nodes())}))
except ClusterError as e:
    print(json.dumps({"ok": False, "error": str(e)}))
"""


def _run_connect(address: str, env_update: dict) -> tuple[dict, float]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_AUTH")}
    env.update(env_update, HOME=env_update.get("HOME", "/nonexistent-home"), PYTHONPATH=str(REPO))
    t0 = time.perf_counter()
    p = subprocess.run([sys.executable, "-c", _CONNECT, address], env=env, capture_output=True, text=True,
                       timeout=90, cwd=REPO)
    assert p.returncode == 0, p.stderr[-2000:]
    return json.loads(p.stdout.strip().splitlines()[-1]), time.perf_counter() - t0


def test_token_auth_is_on_and_connect_uses_the_token(local):
    assert os.environ.get("RAY_AUTH_MODE") == "token"  # default auth="token" while the cluster runs
    token = os.environ["RAY_AUTH_TOKEN"]
    # With the token (mode unset: connect() switches token mode on) from another process.
    ok, _ = _run_connect(local.address, {"RAY_AUTH_TOKEN": token})
    assert ok["ok"], ok
    assert ok["classes"] == sorted(CLASSES + ["server"])
    # Without it the GCS refuses, and connect() says so within seconds, not after ~20 s.
    bad, dt = _run_connect(local.address, {})
    assert not bad["ok"] and "127.0.0.1" in bad["error"] and "auth" in bad["error"].lower(), bad
    assert dt < 15.0
    wrong, _ = _run_connect(local.address, {"RAY_AUTH_TOKEN": "0" * 64})
    assert not wrong["ok"], wrong


_LIFECYCLE = """
import json, os, sys, time
from slicer.orchestrator.cluster import LocalCluster, edge_selector, pid_alive
import ray
sys.path.insert(0, sys.argv[2])
from test_cluster_local import listen_addresses
token_file = os.path.expanduser("~/.ray/auth_token")
before = open(token_file).read() if os.path.exists(token_file) else None
lc = LocalCluster(edge_classes=["phone-soc"], auth=sys.argv[1])
with lc:
    @ray.remote(num_cpus=0.1)
    def f():
        return os.environ.get("RAY_AUTH_MODE"), ray.get_runtime_context().get_node_id()
    mode, node = ray.get(f.options(label_selector=edge_selector("phone-soc")).remote(), timeout=60)
    pids = lc.started_pids
    listen = sorted(listen_addresses(pids))
    edge = [n.node_id for n in lc.nodes() if n.device_class == "phone-soc"]
after = open(token_file).read() if os.path.exists(token_file) else None
time.sleep(0.2)
print(json.dumps({
    "mode": mode, "on_edge": node in edge, "n_pids": len(pids), "listen": listen,
    "alive_after": [p for p, st in pids.items() if pid_alive(p, st)], "leftover": lc.leftover_pids,
    "temp_dir_left": os.path.exists(lc.temp_dir), "token_file_same": before == after,
    "token_file_exists": after is not None,
    "env_after": {k: os.environ.get(k) for k in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN",
                                                 "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER")},
    "start_s": lc.start_s, "stop_s": lc.stop_s}))
"""




def test_submit_runs_a_workload_as_a_ray_job(local, tmp_path, capsys):
    """`slicer submit WORKLOAD --wait` through this cluster's Jobs API: `slicer run` runs
    inside the job on the multi-node cluster and its run folder comes back. The working
    dir holds only the workload and its model, so the project ships as py_modules."""
    from slicer.orchestrator.cli import main as slicer

    work = tmp_path / "work"
    work.mkdir()
    write_tiny_job(work, "tinyjob", ("laptop-cpu", "jetson-orin-nano"), 4)
    out = tmp_path / "fetched"
    rc = slicer(["submit", str(work / "wl.yaml"), "--address", local.dashboard_url, "--working-dir", str(work),
                 "--wait", "--timeout-s", "240", "--out", str(out), "--run-args", "--no-trace --quiet"])
    cap = capsys.readouterr()
    assert rc == 0, cap.err[-4000:]
    summary = json.loads((out / "summary.json").read_text())
    text = json.dumps(summary)
    assert summary["totals"]["failed"] == 0 and summary["totals"]["completed"] == 2, text[:2000]
    assert "laptop-cpu" in text and "jetson-orin-nano" in text
    edge_nodes = {n.node_id for n in local.nodes() if n.role == "edge"}
    assert {d["node"] for d in summary["devices"].values()} <= edge_nodes  # ran on this cluster's edge nodes


def test_add_and_remove_an_edge_node(local):
    """Fault injection: a second node of a class joins, then disappears with its processes."""
    before = local.started_pids
    node_id = local.add_edge_node("laptop-cpu", slots=2)
    assert [n.device_class for n in local.nodes() if n.node_id == node_id] == ["laptop-cpu"]
    assert len(local.check_placement(C.edge_selector("laptop-cpu"))) == 2
    new = {p: st for p, st in local.started_pids.items() if p not in before}
    assert new and all(C.pid_alive(p, st) for p, st in new.items())
    with pytest.raises(C.ClusterError, match="head"):
        local.remove_node(next(n.node_id for n in local.nodes() if n.role == "server"))
    local.remove_node(node_id)
    deadline = time.monotonic() + 30
    while any(n.node_id == node_id for n in local.nodes()) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not any(n.node_id == node_id for n in local.nodes())
    assert not [p for p, st in new.items() if C.pid_alive(p, st)]
    assert len(local.check_placement(C.edge_selector("laptop-cpu"))) == 1


def test_stop_leaves_nothing_and_restores_the_environment(local):
    """Runs last in this module: stops the shared cluster (the fixture's stop is then a no-op)."""
    import ray

    pids = local.started_pids
    temp_dir = local.temp_dir
    # (started_pids also remembers the processes of the node removed above, now dead)
    assert len([p for p, st in pids.items() if C.pid_alive(p, st)]) >= 8
    local.stop()
    time.sleep(0.2)
    assert not ray.is_initialized()
    assert [p for p, st in pids.items() if C.pid_alive(p, st)] == []
    assert local.leftover_pids == [] and not os.path.exists(temp_dir)
    assert not (Path(os.environ["HOME"]) / ".ray" / "auth_token").exists()  # nothing written
    for k in _ENV_KEYS:
        assert os.environ.get(k) == ENV_BEFORE[k], k
    assert local.stop_s is not None and local.stop_s < 15.0


@pytest.mark.parametrize("token_file,auth", [(True, "token")])
def test_start_stop_leaves_nothing_with_a_token_file(tmp_path, token_file, auth):
    """In a subprocess with its own HOME holding ~/.ray/auth_token (as an earlier
    ``ray.init()`` leaves it), so the user's own file is never touched."""
    home = tmp_path / "home"
    (home / ".ray").mkdir(parents=True)
    if token_file:  # as left by an earlier `ray.init()`, which enables token auth by default
        (home / ".ray" / "auth_token").write_text("a" * 64)
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env.update(HOME=str(home), PYTHONPATH=str(REPO))
    p = subprocess.run([sys.executable, "-c", _LIFECYCLE, auth, str(Path(__file__).parent)], env=env,
                       capture_output=True, text=True, timeout=150, cwd=tmp_path)
    assert p.returncode == 0, p.stderr[-3000:]
    r = json.loads(p.stdout.strip().splitlines()[-1])
    assert r["on_edge"]
    assert r["mode"] == ("token" if auth == "token" else None)
    assert r["n_pids"] >= 6 and r["listen"] == ["127.0.0.1"]
    assert r["alive_after"] == [] and r["leftover"] == [] and not r["temp_dir_left"]
    assert r["token_file_same"] and r["token_file_exists"] == token_file  # never created nor changed
    assert r["env_after"] == {"RAY_AUTH_MODE": None, "RAY_AUTH_TOKEN": None,
                              "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": None}
