"""Spans of one request, in-process: one trace, correct parents, hops covering its time,
bytes equal to the record's."""
from __future__ import annotations

import pytest

from slicer.actors import telemetry as tel
from slicer.actors.protocol import LinkChange, LinkSpec, Request
from slicer.actors.server import Server, ServerConfig
from slicer.orchestrator import traceview as tv
from tests.actors.conftest import fixed_planner
from tests.actors.test_edge_server import PROMPTS, _edge


@pytest.fixture
def tracing():
    tel.init_tracing("test")
    yield
    tel.init_tracing("test", enabled=False)


@pytest.mark.parametrize("split,w", [(2, 1), (3, 3), (0, 1)])
def test_one_trace_per_request_with_linked_hops(tiny_model, tracing, split, w):
    server = Server(tiny_model, ServerConfig())
    edge, _ = _edge(tiny_model, server, fixed_planner(split, w))
    recs = [edge.generate(Request(request_id=f"r{i}", index=i, prompt_ids=tuple(p), max_new_tokens=5))
            for i, p in enumerate(PROMPTS)]
    traces = tv.request_traces(tel.drain())
    assert [t.request_id for t in traces] == [r.request_id for r in recs]
    for t, rec in zip(traces, recs):
        ids = {s["span_id"] for s in t.spans}
        root = t.root
        assert root["name"] == "request" and root["parent_id"] is None
        assert all(s["parent_id"] in ids for s in t.spans if s is not root)  # nothing dangles
        names = {s["name"] for s in t.spans}
        assert {"edge.compute", "server.queue", "server.decode", "server.compute", "transfer", "return",
                "policy.decide"} <= names
        assert t.hop_coverage() >= 0.95, tv.format_waterfall(t)
        sent = sum(s["attributes"]["slicer.bytes"] for s in t.spans if s["name"] == "transfer")
        assert sent == rec.bytes_sent == root["attributes"]["slicer.bytes"]
        for s in t.spans:
            assert s["start_ns"] <= s["end_ns"]
            assert root["start_ns"] <= s["start_ns"] and s["end_ns"] <= root["end_ns"] + 1_000_000


def test_tracing_off_records_nothing_and_keeps_results(tiny_model):
    tel.init_tracing("test", enabled=False)
    server = Server(tiny_model, ServerConfig())
    edge, _ = _edge(tiny_model, server, fixed_planner(2, 1))
    rec = edge.generate(Request(request_id="r", index=0, prompt_ids=tuple(PROMPTS[0]), max_new_tokens=3))
    assert rec.ok and tel.drain() == []


def test_link_change_replan_is_in_the_request_trace(tiny_model, tracing):
    """The re-plan a link change triggers belongs to the request it happened before: the
    policy call carries that request's trace context (it carried none, so a policy actor
    in another process started a trace of its own)."""
    server = Server(tiny_model, ServerConfig())
    edge, _ = _edge(tiny_model, server, fixed_planner(2, 1), link=LinkSpec(rate_mbps=50.0),
                    link_schedule=(LinkChange(at_request=1, rate_mbps=2.0),))
    sent = []
    report = edge.policy.report
    edge.policy.report = lambda dev, rep, ctx=None: sent.append((rep, dict(ctx or {}))) or report(dev, rep, ctx)
    for i in range(2):
        edge.generate(Request(request_id=f"r{i}", index=i, prompt_ids=tuple(PROMPTS[0]), max_new_tokens=2))
    traces = {t.request_id: t for t in tv.request_traces(tel.drain())}
    (link_ctx,) = [ctx for rep, ctx in sent if rep.link is not None]
    assert traces["r1"].trace_id in link_ctx.get("traceparent", "")
