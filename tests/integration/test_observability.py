"""Traces and server metrics on a local multi-node cluster (loopback)."""
from __future__ import annotations

import json
import os
import time
import urllib.request

import pytest

from slicer.orchestrator import traceview as tv
from slicer.orchestrator.runner import run_workload
from slicer.orchestrator.workload import parse_workload
from tests.integration.conftest import CLASSES, PROMPTS

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def metrics_cluster():
    """A cluster whose nodes export metrics every 0.5 s (default 10 s, NOTES.md)."""
    from slicer.orchestrator.cluster import LocalCluster

    old = os.environ.get("RAY_metrics_report_interval_ms")
    os.environ["RAY_metrics_report_interval_ms"] = "500"
    try:
        with LocalCluster(edge_classes=CLASSES, edge_slots=8) as c:
            yield c
    finally:
        if old is None:
            os.environ.pop("RAY_metrics_report_interval_ms", None)
        else:
            os.environ["RAY_metrics_report_interval_ms"] = old


@pytest.fixture(scope="module")
def traced_run(metrics_cluster, tiny_model_dir, tmp_path_factory):
    wl = parse_workload({
        "name": "traced", "model": str(tiny_model_dir), "inputs": {"prompts": PROMPTS},
        "devices": [{"class": CLASSES[0], "count": 2}, {"class": CLASSES[1], "count": 1}],
        "policy": {"name": "fixed", "split": 2, "offload_step": 1}, "codec": "slicer:sparsity=0.5",
        "requests": 2, "max_new_tokens": 5, "server": {"max_batch": 4, "batch_window_ms": 2},
    })
    out_dir = tmp_path_factory.mktemp("traced") / "run"
    out = run_workload(wl, out=out_dir, trace=True, progress=None)
    return out, out_dir


def test_every_request_is_one_trace_across_processes(traced_run):
    out, run = traced_run
    traces = {t.request_id: t for t in tv.request_traces(tv.load_spans(run))}
    assert sorted(traces) == sorted(r.request_id for r in out.records)  # one trace per request
    for rec in out.records:
        t = traces[rec.request_id]
        assert rec.ok, rec.error
        # edge, server and policy actors: three processes at least
        assert len({(s["service"], s["pid"]) for s in t.spans}) >= 3, {s["service"] for s in t.spans}
        by_id = {s["span_id"]: s for s in t.spans}
        for s in t.spans:
            if s is not t.root:
                assert s["parent_id"] in by_id and s["trace_id"] == t.trace_id
        server = [s for s in t.spans if s["name"].startswith("server.")]
        assert server and all(by_id[s["parent_id"]]["name"] == "request" for s in server)
        assert all(s["service"] != t.root["service"] for s in server)  # recorded by the server itself
        assert t.hop_coverage() >= 0.95, tv.format_waterfall(t)
        sent = sum(s["attributes"]["slicer.bytes"] for s in t.spans if s["name"] == "transfer")
        assert sent == rec.bytes_sent > 0
        assert t.root["attributes"]["slicer.split"] == 2
        assert t.root["attributes"]["slicer.bits_per_element"] == pytest.approx(rec.bits_per_element)


def test_traces_cli_and_perfetto(traced_run, tmp_path, capsys):
    from slicer.orchestrator.cli import main

    _, run = traced_run
    assert main(["traces", str(run), "--perfetto", str(tmp_path / "p.json")]) == 0
    text = capsys.readouterr().out
    assert "hop coverage" in text and "server compute" in text
    doc = json.loads((tmp_path / "p.json").read_text())
    ev = doc["traceEvents"]
    assert {e["ph"] for e in ev} == {"X", "M", "s", "f"}
    # one flow arrow per edge send, from the edge's process to the server's
    sends = [e for e in ev if e["ph"] == "X" and e["name"].startswith("transfer")]
    starts = {e["id"]: e for e in ev if e["ph"] == "s"}
    ends = {e["id"]: e for e in ev if e["ph"] == "f"}
    assert len(starts) == len(ends) == len(sends) > 0 and set(starts) == set(ends)
    procs = {e["pid"]: e["args"]["name"] for e in ev if e["name"] == "process_name"}
    assert all(procs[ends[i]["pid"]] == "slicer-server" and procs[starts[i]["pid"]].startswith("slicer-edge-")
               for i in starts)


def test_server_metrics_on_the_prometheus_endpoint(traced_run):
    import ray

    out, _ = traced_run
    server_node = out.summary["cluster"]["server_node"]["node_id"]
    node = next(n for n in ray.nodes() if n["NodeID"] == server_node)
    url = f"http://{node['NodeManagerAddress']}:{node['MetricsExportPort']}/metrics"
    assert node["NodeManagerAddress"] == "127.0.0.1"
    deadline, text = time.time() + 30, ""
    while time.time() < deadline:
        text = urllib.request.urlopen(url, timeout=5).read().decode()
        if "ray_slicer_server_requests_total" in text and "ray_slicer_server_batch_size" in text:
            break
        time.sleep(0.5)
    assert "ray_slicer_server_requests_total" in text, text[:2000]
    lines = [l for l in text.splitlines() if l.startswith("ray_slicer_server_steps_total")]
    assert lines and float(lines[0].rsplit(" ", 1)[1]) > 0
    assert "ray_slicer_server_device_compute_seconds_total" in text
    # labelled by run and device class; `slicer top` reads the same series
    from slicer.orchestrator.commands import top

    deadline = time.time() + 30
    while time.time() < deadline:
        snap = top.parse(urllib.request.urlopen(url, timeout=5).read().decode())
        v = top.view((0.0, {}), (1.0, snap))
        runs = [r for r in v if r.startswith("traced-")]
        want = {}
        for rec in out.records:
            if rec.mode != "edge-only":
                want[rec.device_class] = want.get(rec.device_class, 0) + rec.new_tokens
        if runs and v[runs[-1]]["tokens"] == want:
            break
        time.sleep(0.5)
    assert runs, list(v)
    # tokens per device class, from the counter, equal what the records say (export lag aside)
    assert v[runs[-1]]["tokens"] == want
    assert v[runs[-1]]["mean_batch"] is not None
    assert "ray_slicer_server_queue_depth_at_batch_count" in text or "queue_depth_at_batch" in str(snap)


def test_load_timeline_table_and_plot_agree_with_the_run(traced_run, tmp_path, capsys):
    from slicer.orchestrator import loadview as lv
    from slicer.orchestrator.cli import main

    out, run = traced_run
    rows = lv.load_timeline(run)
    tot = lv.totals(rows)
    # the timeline's compute seconds per device are the server's own accounting
    server = out.summary["server"]
    for dev, s in tot["compute_s_by_device"].items():
        assert s == pytest.approx(server["compute_s_by_device"][dev], rel=0.02, abs=1e-3)
    assert tot["tokens"] == sum(r.new_tokens for r in out.records if r.mode != "edge-only")
    png = tmp_path / "load.png"
    assert main(["load", str(run), "--plot", str(png)]) == 0
    assert "server compute" in capsys.readouterr().out
    drawn = lv.plot({"run": rows}, png)["run"]
    assert drawn["compute_cum_s"][-1] == pytest.approx(tot["server_compute_s"])
    assert max(drawn["busy_pct"]) <= 100 and png.read_bytes()[:4] == b"\x89PNG"
