"""The trace views on spans made by real OpenTelemetry providers (no Ray)."""
from __future__ import annotations

import json
import time

import jsonschema
import pytest

from slicer.actors import telemetry as tel
from slicer.orchestrator import traceview as tv
from slicer.orchestrator.cli import main

# Chrome trace-event format (the subset we emit): complete events and metadata events.
CHROME_TRACE_SCHEMA = {
    "type": "object",
    "required": ["traceEvents"],
    "properties": {
        "displayTimeUnit": {"enum": ["ms", "ns"]},
        "traceEvents": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["name", "ph", "pid", "tid"],
                "properties": {
                    "name": {"type": "string"},
                    "ph": {"enum": ["X", "M", "s", "f"]},
                    "ts": {"type": "number", "minimum": 0},
                    "dur": {"type": "number", "minimum": 0},
                    "pid": {"type": "integer"},
                    "tid": {"type": "integer"},
                    "args": {"type": "object"},
                },
                "if": {"properties": {"ph": {"const": "X"}}},
                "then": {"required": ["ts", "dur"]},
            },
        },
    },
}


def _fake_run(tmp_path, n_requests=3):
    """Spans of `n_requests` requests across three 'processes' (providers), as a run
    would write them. Returns the run folder."""
    spans = []
    carriers = []
    tel.init_tracing("driver")
    for i in range(n_requests):
        with tel.span("request", **{tel.ATTR_REQUEST: f"r{i}", tel.ATTR_DEVICE_CLASS: "small", tel.ATTR_POLICY: "slicer"}):
            carriers.append(tel.inject())
            time.sleep(0.002)
    spans += tel.drain()
    tel.init_tracing("edge-0", attributes={tel.ATTR_DEVICE_CLASS: "small"})
    edge_carriers = []
    for c in carriers:
        with tel.span("edge.compute", carrier=c):
            pass
        with tel.span("edge.encode", carrier=c, **{tel.ATTR_BYTES: 123}):
            edge_carriers.append(tel.inject())
    spans += tel.drain()
    tel.init_tracing("server")
    for c in edge_carriers:
        with tel.span("server.compute", carrier=c):
            pass
    spans += tel.drain()
    tel.init_tracing("test", enabled=False)
    run = tmp_path / "run"
    run.mkdir()
    with open(run / "traces.jsonl", "w") as f:
        for s in spans:
            f.write(json.dumps(s) + "\n")
    return run, spans


def test_spans_link_across_providers_and_group_by_request(tmp_path):
    run, spans = _fake_run(tmp_path)
    traces = tv.group_traces(tv.load_spans(run))
    assert [t.request_id for t in traces] == ["r0", "r1", "r2"]
    for t in traces:
        assert {s["service"] for s in t.spans} == {"driver", "edge-0", "server"}
        by_id = {s["span_id"]: s for s in t.spans}
        server = next(s for s in t.spans if s["name"] == "server.compute")
        assert by_id[server["parent_id"]]["name"] == "edge.encode"
        assert by_id[by_id[server["parent_id"]]["parent_id"]]["name"] == "request"
        assert t.attr(tel.ATTR_DEVICE_CLASS) == "small"


def test_hop_coverage_counts_union_of_hops():
    t = tv.Trace("t", [
        {"name": "request", "span_id": "a", "parent_id": None, "start_ns": 0, "end_ns": 100, "attributes": {}},
        {"name": "edge.compute", "span_id": "b", "parent_id": "a", "start_ns": 0, "end_ns": 40, "attributes": {}},
        {"name": "transfer", "span_id": "c", "parent_id": "a", "start_ns": 30, "end_ns": 60, "attributes": {}},
        {"name": "server.compute", "span_id": "d", "parent_id": "a", "start_ns": 80, "end_ns": 90, "attributes": {}},
    ])
    assert t.hop_coverage() == pytest.approx(0.7)
    bd = tv.breakdown([t])[("?", "?")]
    assert bd["edge compute"] == pytest.approx(40e-9)
    assert bd["wire"] == pytest.approx(30e-9)
    assert bd["other"] == pytest.approx(20e-9)


def test_perfetto_export_is_valid_chrome_trace(tmp_path):
    run, spans = _fake_run(tmp_path)
    out = tmp_path / "trace.json"
    assert main(["traces", str(run), "--perfetto", str(out)]) == 0
    doc = json.loads(out.read_text())
    jsonschema.validate(doc, CHROME_TRACE_SCHEMA)
    xs = [e for e in doc["traceEvents"] if e["ph"] == "X"]
    assert len(xs) == len(spans)
    names = {e["args"]["name"] for e in doc["traceEvents"] if e["name"] == "process_name"}
    assert names == {"driver", "edge-0", "server"}
    # every (process, thread) that holds a slice is named after its request
    threads = {(e["pid"], e["tid"]): e["args"]["name"] for e in doc["traceEvents"] if e["name"] == "thread_name"}
    assert {(e["pid"], e["tid"]) for e in xs} == set(threads)
    assert set(threads.values()) == {"r0", "r1", "r2"}


def _span(name, sid, parent, a, b, service, **attrs):
    return {"name": name, "trace_id": "t1", "span_id": sid, "parent_id": parent, "start_ns": a, "end_ns": b,
            "service": service, "attributes": attrs}


def test_perfetto_flows_go_from_each_send_to_its_server_step_and_emulation_is_labelled():
    spans = [
        _span("request", "r", None, 0, 1000, "edge", **{tel.ATTR_REQUEST: "dev/r0"}),
        _span("edge.compute", "c0", "r", 0, 100, "edge", **{"slicer.emulated_s": 0.05}),
        _span("edge.compute", "e0", "r", 100, 150, "edge", **{"slicer.emulated": True}),
        _span("transfer", "t0", "r", 150, 200, "edge"),
        _span("server.queue", "q0", "r", 200, 210, "server"),
        _span("server.compute", "s0", "r", 210, 300, "server"),
        _span("transfer", "t1", "r", 400, 450, "edge"),
        _span("server.queue", "q1", "r", 450, 470, "server"),
        _span("server.compute", "s1", "r", 470, 500, "server"),
    ]
    doc = tv.to_chrome_trace(spans)
    jsonschema.validate(doc, CHROME_TRACE_SCHEMA)
    ev = doc["traceEvents"]
    xs = {e["args"]["span_id"]: e for e in ev if e["ph"] == "X"}
    starts = {e["id"]: e for e in ev if e["ph"] == "s"}
    ends = {e["id"]: e for e in ev if e["ph"] == "f"}
    assert len(starts) == len(ends) == 2 and set(starts) == set(ends)
    for fid, (src, dst) in zip(sorted(starts), [("t0", "q0"), ("t1", "q1")]):
        s, f = starts[fid], ends[fid]
        # each end of the arrow lies inside (binds to) its slice, on that slice's process/thread
        for e, sid in ((s, src), (f, dst)):
            x = xs[sid]
            assert (e["pid"], e["tid"]) == (x["pid"], x["tid"])
            assert x["ts"] <= e["ts"] <= x["ts"] + x["dur"]
        assert f["bp"] == "e" and xs[src]["pid"] != xs[dst]["pid"]
    assert xs["e0"]["name"] == "edge.compute [emulated]"
    assert xs["c0"]["name"] == "edge.compute [50.0 ms emulated]"
    assert xs["s0"]["name"] == "server.compute"
    text = tv.format_waterfall(tv.group_traces(spans)[0])
    assert "edge.compute [emulated]" in text and "[50.0 ms emulated]" in text


def test_traces_json_alone_on_stdout_and_each_waterfall_once(tmp_path, capsys):
    run, spans = _fake_run(tmp_path, n_requests=1)  # first request == slowest request
    assert main(["traces", str(run)]) == 0
    assert capsys.readouterr().out.count("request r0  trace") == 1
    assert main(["traces", str(run), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["requests"] == 1 and doc["spans"] == len(spans)
    assert [w["request_id"] for w in doc["waterfalls"]] == ["r0"]
    assert {s["service"] for s in doc["waterfalls"][0]["spans"]} == {"driver", "edge-0", "server"}
    assert doc["breakdown"][0]["device_class"] == "small" and doc["breakdown"][0]["requests"] == 1
    (tmp_path / "b").mkdir()
    run3, _ = _fake_run(tmp_path / "b", n_requests=3)
    assert main(["traces", str(run3), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    slowest = max(doc["waterfalls"], key=lambda w: w["duration_ms"])
    assert doc["waterfalls"][0]["request_id"] == "r0" and len({w["request_id"] for w in doc["waterfalls"]}) == len(doc["waterfalls"])
    assert slowest["duration_ms"] >= doc["waterfalls"][0]["duration_ms"]


def test_cli_waterfall_and_unknown_request(tmp_path, capsys):
    run, _ = _fake_run(tmp_path)
    assert main(["traces", str(run), "--request", "r1"]) == 0
    out = capsys.readouterr().out
    assert "request r1" in out and "edge.encode" in out and "123B" in out
    assert main(["traces", str(run), "--request", "nope"]) == 2
    assert "no request 'nope'" in capsys.readouterr().err


def test_tracing_off_makes_no_spans():
    tel.init_tracing("off", enabled=False)
    with tel.span("request") as s:
        assert s is None
    assert tel.inject() == {}
    assert tel.drain() == []


def test_endpoint_without_the_exporter_warns_once(monkeypatch, capsys):
    import sys

    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:1")
    monkeypatch.setitem(sys.modules, "opentelemetry.exporter.otlp.proto.http.trace_exporter", None)  # not installed
    monkeypatch.setattr(tel, "_warned", False)
    tel.init_tracing("edge-x")
    tel.init_tracing("edge-x")
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "OTEL_EXPORTER_OTLP_ENDPOINT is set but the OTLP exporter is not installed" in err[0]
    assert "slicer[otlp]" in err[0] and not tel._state.otlp
    with tel.span("request"):  # spans still reach traces.jsonl
        pass
    assert [s["name"] for s in tel.drain()] == ["request"]
    tel.init_tracing("test", enabled=False)
