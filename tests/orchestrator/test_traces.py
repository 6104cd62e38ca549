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
                    "ph": {"enum": ["X", "M"]},
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
    names = {e["args"]["name"] for e in doc["traceEvents"] if e["ph"] == "M"}
    assert names == {"driver", "edge-0", "server"}


def test_cli_waterfall_and_unknown_request(tmp_path, capsys):
    run, _ = _fake_run(tmp_path)
    assert main(["traces", str(run), "--request", "r1"]) == 0
    out = capsys.readouterr().out
    assert "request r1" in out and "edge.encode" in out and "123B" in out
    assert main(["traces", str(run), "--request", "nope"]) == 2
    assert "no request 'nope'" in capsys.readouterr().out


def test_tracing_off_makes_no_spans():
    tel.init_tracing("off", enabled=False)
    with tel.span("request") as s:
        assert s is None
    assert tel.inject() == {}
    assert tel.drain() == []
