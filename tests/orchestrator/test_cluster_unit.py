"""Cluster bootstrap logic that needs no Ray cluster: selectors, placement checks on
hand-built node lists, argument validation, pid-exact process cleanup."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time

import pytest

from slicer.orchestrator import cluster as C
from slicer.orchestrator.cluster import auth as A


def _node(nid, labels, **res):
    return C.NodeInfo(node_id=nid, alive=True, address="127.0.0.1", labels=labels, resources=res)


NODES = [
    _node("s", {"role": "server"}, server_slot=1.0, CPU=1.0),
    _node("a", {"role": "edge", "device-class": "laptop-cpu"}, edge_slot=4.0),
    _node("b", {"role": "edge", "device-class": "jetson-orin-nano"}, edge_slot=2.0),
    _node("c", {"role": "edge", "device-class": "jetson-orin-nano"}, edge_slot=2.0),
]


@pytest.mark.parametrize("selector,expected", [
    ({"role": "edge"}, {"a", "b", "c"}),
    ({"role": "!edge"}, {"s"}),
    ({"device-class": "jetson-orin-nano"}, {"b", "c"}),
    ({"device-class": "in(laptop-cpu,jetson-orin-nano)"}, {"a", "b", "c"}),
    ({"device-class": "!in(laptop-cpu, jetson-orin-nano)"}, {"s"}),  # absent key matches a negation
    ({"device-class": "!laptop-cpu"}, {"s", "b", "c"}),
    ({"role": "edge", "device-class": "laptop-cpu"}, {"a"}),
    ({"role": "server", "device-class": "laptop-cpu"}, set()),
])
def test_selector_matches(selector, expected):
    assert {n.node_id for n in NODES if C.selector_matches(selector, n.labels)} == expected


def test_check_placement_names_missing_class():
    with pytest.raises(C.PlacementError) as e:
        C.check_placement(C.edge_selector("raspberry-pi-5"), nodes=NODES)
    msg = str(e.value)
    assert "raspberry-pi-5" in msg and "jetson-orin-nano" in msg and "laptop-cpu" in msg
    assert "role 'edge' has no alive node" not in msg  # only the key that fails is named


def test_check_placement_ignores_dead_nodes():
    dead = [C.NodeInfo("x", False, "127.0.0.1", {"role": "edge", "device-class": "phone-soc"}, {"edge_slot": 8})]
    with pytest.raises(C.PlacementError, match="phone-soc"):
        C.check_placement(C.edge_selector("phone-soc"), nodes=NODES + dead)


def test_check_placement_counts_slots_across_matching_nodes():
    got = C.check_placement(C.edge_selector("jetson-orin-nano"), resources={C.EDGE_SLOT: 1}, count=4, nodes=NODES)
    assert {n.node_id for n in got} == {"b", "c"}
    with pytest.raises(C.PlacementError, match="need 5"):
        C.check_placement(C.edge_selector("jetson-orin-nano"), resources={C.EDGE_SLOT: 1}, count=5, nodes=NODES)


def test_check_placement_combination_without_node():
    with pytest.raises(C.PlacementError, match="no node has them all"):
        C.check_placement({"role": "server", "device-class": "laptop-cpu"}, nodes=NODES)


def test_bad_selector_is_refused_with_its_value():
    with pytest.raises(ValueError, match="bad value!"):
        C.check_placement({"device-class": "bad value!"}, nodes=NODES)


def test_node_spec_labels_and_resources():
    e = C.NodeSpec(C.EDGE_ROLE, "phone-soc", slots=3)
    assert e.labels() == {"role": "edge", "device-class": "phone-soc"}
    assert e.resources() == {"edge_slot": 3.0}
    s = C.NodeSpec(C.SERVER_ROLE)
    assert s.labels() == {"role": "server"} and s.resources() == {"server_slot": 16.0}


@pytest.mark.parametrize("kw,match", [
    (dict(edge_classes=[]), "edge_classes"),
    (dict(edge_classes=["ok", "not ok"]), "not ok"),
    (dict(nodes_per_class=0), "nodes_per_class"),
    (dict(auth="maybe"), "auth='maybe'"),
])
def test_local_cluster_rejects_bad_arguments(kw, match):
    with pytest.raises(ValueError, match=match):
        C.LocalCluster(**kw)


def test_local_cluster_builds_one_spec_per_node():
    lc = C.LocalCluster(edge_classes=["a", "b", "a"], nodes_per_class=2, edge_slots=5)
    assert [s.device_class for s in lc.edge_specs] == ["a", "a", "b", "b"]
    assert all(s.resources() == {"edge_slot": 5.0} for s in lc.edge_specs)
    assert lc.server_spec.labels() == {"role": "server"}


def test_kill_pids_kills_tree_and_skips_recycled_pids():
    p = subprocess.Popen([sys.executable, "-c",
                          "import subprocess,sys,time; subprocess.Popen([sys.executable,'-c','import time; time.sleep(60)']);"
                          " time.sleep(60)"])
    try:
        deadline = time.monotonic() + 10
        tree = C.descendants([p.pid])
        while len(tree) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
            tree = C.descendants([p.pid])
        assert len(tree) == 2 and p.pid in tree
        # A wrong start time stands for a pid reused by another process: left alone.
        fake = {pid: st + 1 for pid, st in tree.items()}
        assert C.kill_pids(fake, grace_s=0.1) == {}
        assert all(C.pid_alive(pid, st) for pid, st in tree.items())
        assert C.kill_pids(tree, grace_s=1.0) == {}
        assert not any(C.pid_alive(pid, st) for pid, st in tree.items())
    finally:
        p.kill()
        p.wait(5)


def test_find_token_order(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("RAY_AUTH_TOKEN", raising=False)
    monkeypatch.delenv("RAY_AUTH_TOKEN_PATH", raising=False)
    assert C.find_token() is None
    (tmp_path / ".ray").mkdir()
    (tmp_path / ".ray" / "auth_token").write_text("fromhome\n")
    assert C.find_token() == "fromhome"
    (tmp_path / "tok").write_text("frompath")
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(tmp_path / "tok"))
    assert C.find_token() == "frompath"
    monkeypatch.setenv("RAY_AUTH_TOKEN", "fromenv")
    assert C.find_token() == "fromenv"


def test_connect_to_a_dead_address_fails_fast_and_clearly():
    t0 = time.perf_counter()
    with pytest.raises(C.ClusterError, match="cannot reach the Ray cluster at 127.0.0.1:1"):
        C.connect("127.0.0.1:1", timeout_s=2)
    assert time.perf_counter() - t0 < 10.0  # Ray's own client waits ~40 s here


def test_connect_auto_without_any_address_refuses(monkeypatch):
    import ray._private.utils as ru

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setattr(ru, "read_ray_address", lambda temp_dir=None: None)
    with pytest.raises(C.ClusterError, match="no RAY_ADDRESS"):
        C.connect("auto")


@pytest.mark.parametrize("user,needs,token,expect", [
    (None, False, "t", "disabled"),          # a token file alone never turns token mode on
    ("token", False, "t", "disabled"),       # the cluster wins; one line says so
    (None, True, "t", "token"),
    ("disabled", True, "t", "error:RAY_AUTH_MODE=disabled"),
    (None, True, None, "error:no token was found"),
])
def test_auth_mode_follows_the_cluster(monkeypatch, user, needs, token, expect):
    import io

    monkeypatch.setattr(A, "cluster_requires_token", lambda target, timeout_s: needs)
    monkeypatch.setattr(A, "find_token", lambda: token)
    monkeypatch.setattr(A, "_reload_auth_config", lambda: None)
    if user is None:
        monkeypatch.delenv("RAY_AUTH_MODE", raising=False)
    else:
        monkeypatch.setenv("RAY_AUTH_MODE", user)
    notice = io.StringIO()
    if expect.startswith("error:"):
        with pytest.raises(C.ClusterError, match=expect[6:]):
            C._match_auth("127.0.0.1:6379", 1.0, notice)
        return
    C._match_auth("127.0.0.1:6379", 1.0, notice)
    assert os.environ["RAY_AUTH_MODE"] == expect
    lines = notice.getvalue().splitlines()
    assert len(lines) == (1 if user == "token" and not needs else 0), lines
    if lines:
        assert "without token authentication" in lines[0] and "unset it" in lines[0]


def test_job_env_ships_otel_variables_but_not_those_the_job_has(monkeypatch):
    import json

    for k in [k for k in os.environ if k.startswith("OTEL_")]:
        monkeypatch.delenv(k)
    monkeypatch.delenv("RAY_JOB_CONFIG_JSON_ENV_VAR", raising=False)
    assert C._job_env() is None
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4318")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_HEADERS", "x=1")
    assert C._job_env() == {"env_vars": {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318",
                                         "OTEL_EXPORTER_OTLP_HEADERS": "x=1"}}
    # inside a submitted job Ray refuses a driver env var the job already sets
    monkeypatch.setenv("RAY_JOB_CONFIG_JSON_ENV_VAR", json.dumps(
        {"runtime_env": {"env_vars": {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318"}}}))
    assert C._job_env() == {"env_vars": {"OTEL_EXPORTER_OTLP_HEADERS": "x=1"}}


def test_cluster_record_is_checked_and_down_removes_only_what_up_could_make(tmp_path, monkeypatch, capsys):
    """The record lives in the user's home: a tampered one must not make `down` delete an
    arbitrary folder or kill processes that are not the cluster's."""
    import json

    from slicer.orchestrator.cli import main

    monkeypatch.setenv("SLICER_HOME", str(tmp_path))
    rec = tmp_path / "cluster.json"
    for bad in ("[]", '{"address": 5, "id": "x"}', '{"address": "127.0.0.1:1"}', "not json"):
        rec.write_text(bad)
        assert C.read_state() is None
    victim = tmp_path / "slicer-rc-victim"
    victim.mkdir()
    rec.write_text(json.dumps({"id": "nosuchcluster", "address": "127.0.0.1:1", "temp_dir": str(victim)}))
    assert C.marked_pids("nosuchcluster") == {}
    assert C.cluster_down() == {"stopped": 0, "left": []}
    assert victim.is_dir() and not rec.exists()  # outside the temp dir: left alone
    assert main(["cluster", "down"]) == 1 and "no slicer cluster is recorded" in capsys.readouterr().err
    assert main(["cluster", "up", "--classes", "no-such-class"]) == 2
    assert "not in the device catalog" in capsys.readouterr().err
    assert main(["cluster", "status"]) == 0 and "no slicer cluster is up" in capsys.readouterr().out


def test_marked_pids_finds_exactly_the_marked_processes():
    import uuid

    cid = uuid.uuid4().hex[:12]
    env = {**__import__("os").environ, C.CLUSTER_ID_ENV: cid}
    p = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"], env=env)
    q = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"],
                         env={**env, C.CLUSTER_ID_ENV: cid + "x"})
    try:
        deadline = time.monotonic() + 10
        while p.pid not in C.marked_pids(cid) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert set(C.marked_pids(cid)) == {p.pid}
    finally:
        for x in (p, q):
            x.kill()
            x.wait(5)


def test_address_auto_prefers_ray_address_then_the_slicer_cluster(tmp_path, monkeypatch):
    """`--address auto` resolves without Ray's own search (which takes any GCS on the host):
    RAY_ADDRESS unless it is a dashboard URL, then the `slicer cluster up` record."""
    seen = []

    def fake_match(target, timeout_s, notice):
        seen.append(target)
        raise C.ClusterError("stop here")

    monkeypatch.setattr(A, "_match_auth", fake_match)  # connect calls it through cluster.auth
    monkeypatch.setenv("SLICER_HOME", str(tmp_path))
    (tmp_path / "cluster.json").write_text('{"id": "abc", "address": "127.0.0.1:4242"}')
    monkeypatch.setenv("RAY_ADDRESS", "127.0.0.1:5151")
    for env, want in (("127.0.0.1:5151", "127.0.0.1:5151"), ("http://127.0.0.1:8265", "127.0.0.1:4242")):
        monkeypatch.setenv("RAY_ADDRESS", env)
        with pytest.raises(C.ClusterError, match="stop here"):
            C.connect("auto", timeout_s=1)
        assert seen[-1] == want


def test_cluster_up_gives_the_server_node_the_machines_gpus(tmp_path, monkeypatch):
    """`slicer cluster up`: the head (server node) starts with this machine's GPUs, edge
    nodes with none, and labels/slots come from the same NodeSpec as the embedded cluster's
    (a `server.device: cuda` workload can then be placed). No Ray is started: the starts
    are recorded."""
    from slicer.orchestrator.cluster import persistent as P

    monkeypatch.setenv("SLICER_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("RAY_AUTH_TOKEN", "t" * 64)
    monkeypatch.setattr(P, "_local_gpus", lambda: 2)
    starts = []
    monkeypatch.setattr(P, "_ray_start", lambda args, env, timeout_s: starts.append(args))
    state = P.cluster_up(["phone"], nodes_per_class=1, edge_slots=3, server_slots=5)
    try:
        head, edge = starts
        assert "--head" in head and "--num-gpus=2" in head and '--resources={"server_slot": 5}' in head
        assert "--labels=role=server" in head
        assert "--num-gpus=0" in edge and '--resources={"edge_slot": 3}' in edge
        assert "--labels=role=edge,device-class=phone" in edge
    finally:
        P.state_path().unlink(missing_ok=True)
        shutil.rmtree(state["temp_dir"], ignore_errors=True)
