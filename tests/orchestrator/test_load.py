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
    assert "not found" in capsys.readouterr().err
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "load.jsonl").write_text('{"busy_frac": 1}\n')
    assert main(["load", str(bad)]) == 2
    assert "no numeric t_s" in capsys.readouterr().err


def test_every_batch_is_a_timeline_row_and_rebase_starts_at_the_run():
    clk = FakeClock()
    m = LoadMeter(clock=clk)
    clk.t = 10.0  # actors starting: no batch yet
    t_start = m.sample()["t_s"]  # the driver's first sample: the run's t=0
    rows_expected = []
    for i in range(25):
        clk.t += 0.01
        m.queued(i % 4)
        m.busy_start()
        clk.t += 0.03
        m.busy_end(batch_size=1 + i % 3, tokens=1 + i % 3, compute_s_by_device={f"dev-{i % 2}": 0.03})
        rows_expected.append(1 + i % 3)
    rows = m.timeline()
    assert len(rows) == 25 and m.timeline() == []  # drained
    assert [r["mean_batch"] for r in rows] == rows_expected
    assert rows[1]["interval_s"] == pytest.approx(0.04) and rows[1]["busy_frac"] == pytest.approx(0.75)
    from slicer.actors.loadmeter import rebase

    rb = rebase(rows, t_start)
    assert len(rb) == 25 and rb[0]["t_s"] == pytest.approx(0.04) and rb[-1]["t_s"] == pytest.approx(1.0)
    t = lv.totals(rb)
    assert t["wall_s"] == pytest.approx(1.0) and t["busy_s"] == pytest.approx(0.75, rel=1e-3)  # rows keep 4 digits
    assert t["tokens"] == sum(rows_expected) and t["server_compute_s"] == pytest.approx(0.75)
    # a row straddling the start is clipped: its busy time stays, its idle part goes
    rb2 = rebase(rows, t_start + 0.02)
    assert rb2[0]["interval_s"] == pytest.approx(0.02) and rb2[0]["busy_frac"] == pytest.approx(1.0)


def test_timeline_is_bounded_by_merging_pairs_with_the_same_totals():
    clk = FakeClock()
    m = LoadMeter(clock=clk, max_events=8)
    for i in range(40):
        clk.t += 0.5
        m.busy_start()
        clk.t += 0.5
        m.busy_end(2, 2, {"d": 0.5})
    rows = m.timeline()
    assert len(rows) <= 8
    t = lv.totals(rows)
    assert t["tokens"] == 80 and t["wall_s"] == pytest.approx(40.0) and t["busy_frac"] == pytest.approx(0.5)
    assert sum(r["batches"] for r in rows) == 40 and t["mean_batch"] == pytest.approx(2.0)


def test_plot_starts_at_zero_has_a_device_panel_and_bins_noisy_rows(tmp_path, capsys):
    import matplotlib

    matplotlib.use("Agg")
    rows = []
    for i in range(300):  # per-batch rows: 3 ms apart, tokens/s alternating 0 / 667
        rows.append({"t_s": 5.0 + 0.003 * (i + 1), "interval_s": 0.003, "busy_frac": 0.5, "queue_depth": i % 5,
                     "queue_max": i % 5, "batches": 1, "mean_batch": 1.0, "tokens": 2 * (i % 2),
                     "tokens_per_s": round(2 * (i % 2) / 0.003, 3), "compute_s": {"raspberry-pi-5-0": 0.0015},
                     "kv_bytes": 0, "sessions": 1})
    import matplotlib.pyplot as plt

    seen = {}
    real_savefig = plt.Figure.savefig

    def spy(fig, *a, **kw):
        seen["axes"] = [(ax.get_ylabel(), ax.get_ylim(), ax.get_xlim()) for ax in fig.axes]
        return real_savefig(fig, *a, **kw)

    plt.Figure.savefig = spy
    try:
        drawn = lv.plot({"run": rows}, tmp_path / "p.png", n_bins=20)["run"]
    finally:
        plt.Figure.savefig = real_savefig
    assert len(drawn["busy_pct"]) <= 20 and drawn["samples"] == 300
    # binned: tokens/s is the bin's rate (300 tokens over 0.9 s), not the per-row 0/667 noise
    assert max(drawn["tokens_per_s"]) < 400 and min(drawn["tokens_per_s"]) > 250
    labels = [a[0] for a in seen["axes"]]
    assert "server compute s per device (cum.)" in labels and len(labels) == 5
    assert all(ylim[0] == 0 for _, ylim, _ in seen["axes"]) and all(xlim[0] == 0 for _, _, xlim in seen["axes"])
    assert drawn["compute_cum_s_by_device"]["raspberry-pi-5-0"][-1] == pytest.approx(0.45)


def test_table_keeps_device_names_and_json_is_alone_on_stdout(tmp_path, capsys):
    a = _write_run(tmp_path / "a", 0.2, 0.05)
    for r in a:
        r["compute_s"] = {"jetson-orin-nano-12": 0.01}
    (tmp_path / "a" / "load.jsonl").write_text("\n".join(json.dumps(r) for r in a))
    assert main(["load", str(tmp_path / "a")]) == 0
    assert "jetson-orin-nano-12" in capsys.readouterr().out
    assert main(["load", str(tmp_path / "a"), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["runs"]["a"]["samples"] == 10 and doc["runs"]["a"]["totals"]["tokens"] == 30
