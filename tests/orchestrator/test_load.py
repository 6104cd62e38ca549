"""LoadMeter timeline rows and the `slicer load` view."""
from __future__ import annotations

import json

import pytest

from slicer.actors.loadmeter import LoadMeter
from slicer.orchestrator import loadview as lv
from slicer.orchestrator.cli import main


class FakeClock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t


def test_loadmeter_busy_fraction_tokens_and_compute():
    clk = FakeClock()
    m = LoadMeter(clock=clk)
    m.queued(3)
    m.busy_start(); clk.t = 0.25
    m.busy_end(batch_size=2, tokens=2, compute_s_by_device={"a": 0.1, "b": 0.15})
    m.queued(1)
    clk.t = 1.0
    r = m.sample()
    assert r["busy_frac"] == pytest.approx(0.25)
    assert r["queue_max"] == 3 and r["queue_depth"] == 1
    assert r["tokens_per_s"] == pytest.approx(2.0) and r["mean_batch"] == 2
    assert r["compute_s"] == {"a": 0.1, "b": 0.15}
    # a batch running across the sample boundary counts in both intervals
    m.busy_start(); clk.t = 1.5
    r2 = m.sample()
    assert r2["busy_frac"] == pytest.approx(1.0) and r2["tokens"] == 0
    clk.t = 2.0
    m.busy_end(1, 1, {"a": 0.5})
    clk.t = 2.5
    r3 = m.sample()
    assert r3["busy_frac"] == pytest.approx(0.5)
    assert m.compute_totals() == {"a": pytest.approx(0.6), "b": pytest.approx(0.15)}


def _write_run(path, busy, compute):
    path.mkdir()
    rows = [{"t_s": 0.5 * (i + 1), "interval_s": 0.5, "busy_frac": busy, "queue_depth": i % 3, "queue_max": i % 3,
             "batches": 2, "mean_batch": 1.5, "tokens": 3, "tokens_per_s": 6.0,
             "compute_s": {"edge-0": compute, "edge-1": compute / 2}, "kv_bytes": 0, "sessions": 2}
            for i in range(10)]
    (path / "load.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    return rows


def test_totals_and_compare_two_runs(tmp_path, capsys):
    a = _write_run(tmp_path / "slicer", 0.2, 0.05)
    _write_run(tmp_path / "cloud", 0.8, 0.2)
    t = lv.totals(a)
    assert t["wall_s"] == pytest.approx(5.0) and t["busy_s"] == pytest.approx(1.0)
    assert t["server_compute_s"] == pytest.approx(10 * 0.075)
    png = tmp_path / "load.png"
    assert main(["load", str(tmp_path / "slicer"), str(tmp_path / "cloud"), "--plot", str(png)]) == 0
    out = capsys.readouterr().out
    assert "server compute slicer / cloud = 0.25x" in out
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_missing_run_is_a_clear_error(tmp_path, capsys):
    assert main(["load", str(tmp_path / "nope")]) == 2
    assert "not found" in capsys.readouterr().out
