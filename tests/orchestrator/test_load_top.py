"""`slicer top`'s reading of the servers' Prometheus series (no cluster: text as Ray's
metrics endpoint serves it), and the Grafana dashboard in clusters/ against the metric
names the server exports."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from slicer.actors.loadmeter import METRICS
from slicer.orchestrator.commands import top

REPO = Path(__file__).resolve().parents[2]


def _expo(busy, tokens_a, tokens_b, count, total, queue, run="quick-1", extra=""):
    ray = 'Component="core_worker",NodeAddress="127.0.0.1",SessionName="s",Version="2.60.0",WorkerId="w1"'
    return f"""# HELP ray_slicer_server_busy_seconds_total seconds spent computing
# TYPE ray_slicer_server_busy_seconds_total counter
ray_slicer_server_busy_seconds_total{{{ray},run="{run}",server="server"}} {busy}
# HELP ray_slicer_server_tokens_total tokens computed (one per step)
# TYPE ray_slicer_server_tokens_total counter
ray_slicer_server_tokens_total{{{ray},device_class="laptop-cpu",run="{run}",server="server"}} {tokens_a}
ray_slicer_server_tokens_total{{{ray},device_class="jetson-orin-nano",run="{run}",server="server"}} {tokens_b}
# HELP ray_slicer_server_batch_size steps per batch
# TYPE ray_slicer_server_batch_size histogram
ray_slicer_server_batch_size_bucket{{{ray},le="1.0",run="{run}",server="server"}} 0
ray_slicer_server_batch_size_bucket{{{ray},le="+Inf",run="{run}",server="server"}} {count}
ray_slicer_server_batch_size_count{{{ray},run="{run}",server="server"}} {count}
ray_slicer_server_batch_size_sum{{{ray},run="{run}",server="server"}} {total}
# HELP ray_slicer_server_queue_depth steps waiting
# TYPE ray_slicer_server_queue_depth gauge
ray_slicer_server_queue_depth{{{ray},run="{run}",server="server"}} {queue}
# HELP ray_slicer_server_rejections_total refused
# TYPE ray_slicer_server_rejections_total counter
ray_slicer_server_rejections_total{{{ray},device_class="unknown",run="{run}",server="server",what="step"}} 2
# HELP ray_other_metric something else
# TYPE ray_other_metric gauge
ray_other_metric{{{ray}}} 99
{extra}"""


def test_view_rates_per_run_and_device_class():
    a = (100.0, top.parse(_expo(1.0, 10, 4, 5, 9, 0)))
    b = (102.0, top.parse(_expo(2.5, 50, 24, 25, 49, 3)))
    v = top.view(a, b)
    assert list(v) == ["quick-1"]
    x = v["quick-1"]
    assert x["busy_pct"] == pytest.approx(75.0)                       # 1.5 s busy in 2 s
    assert x["tokens_per_s"] == {"jetson-orin-nano": 10.0, "laptop-cpu": 20.0}
    assert x["mean_batch"] == pytest.approx(2.0)                      # (49-9)/(25-5)
    assert x["queue"] == 3 and x["rejections"] == 2
    text = top.format_view(v)
    assert "busy  75.0%" in text and "jetson-orin-nano" in text
    assert top.view(a, b, run="other") == {}
    assert "no slicer server metrics" in top.format_view({})


def test_two_runs_do_not_mix():
    body_b = "\n".join(l for l in _expo(0.5, 0, 6, 1, 1, 1, run="b").splitlines() if not l.startswith("#"))
    v = top.view((0.0, {}), (1.0, top.parse(_expo(1.0, 10, 0, 1, 1, 0) + body_b)))
    assert set(v) == {"quick-1", "b"}
    assert v["quick-1"]["tokens_per_s"] == {"jetson-orin-nano": 0.0, "laptop-cpu": 10.0}
    assert v["b"]["tokens_per_s"] == {"jetson-orin-nano": 6.0, "laptop-cpu": 0.0}
    assert v["quick-1"]["busy_pct"] == 100.0 and v["b"]["busy_pct"] == 50.0


def test_top_refuses_a_bad_interval(capsys):
    from slicer.orchestrator.cli import main

    assert main(["top", "--interval-s", "0"]) == 2
    assert "must be > 0" in capsys.readouterr().err


def test_grafana_dashboard_queries_the_exported_series():
    path = REPO / "clusters" / "grafana-slicer.json"
    dash = json.loads(path.read_text())
    assert dash["title"] and dash["panels"] and dash.get("schemaVersion")
    exported = {f"ray_{n}" for n in METRICS.values()}
    series = set()
    for p in dash["panels"]:
        assert p["title"] and p["type"] in ("timeseries", "stat", "table", "bargauge")
        assert p["gridPos"]["w"] > 0 and p["gridPos"]["h"] > 0
        for t in p["targets"]:
            expr = t["expr"]
            assert expr.count("(") == expr.count(")") and expr.count("{") == expr.count("}"), expr
            for name in re.findall(r"\bray_slicer_server_[a-z_]+", expr):
                base = re.sub(r"_(total|bucket|sum|count)$", "", name)
                assert base in exported, f"{p['title']}: {name} is not a series the server exports"
                series.add(base)
            assert 'run=~"$run"' in expr, f"{p['title']}: every query filters on the run variable"
    assert {f"ray_{METRICS[k]}" for k in ("busy", "tokens", "queue_at_batch", "rejections")} <= series
    names = [v["name"] for v in dash["templating"]["list"]]
    assert "run" in names and "datasource" in names
