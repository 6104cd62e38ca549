"""The runner's in-process path, the results folder and `slicer run --in-process` (no Ray)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from slicer.actors.protocol import Mode, StepRecord
from slicer.orchestrator import results as R
from slicer.orchestrator.cli import main
from slicer.orchestrator.runner import make_requests, run_inprocess, scale_devices
from slicer.orchestrator.workload import WorkloadError, parse_workload

PROMPTS = [[1, 5, 9, 13, 2], [3, 4], [7, 8, 9]]


def _wl(model_dir, **kw):
    d = {"name": "t", "model": str(model_dir), "inputs": {"prompts": PROMPTS},
         "devices": [{"class": "raspberry-pi-5", "count": 2, "budgets": {"memory_mib": 0.07, "latency_ms": 5}},
                     {"class": "jetson-orin-nano", "budgets": {"memory_mib": 0.15}}],
         "requests": 2, "max_new_tokens": 4}
    d.update(kw)
    return parse_workload(d)


def test_requests_are_the_same_across_variants(model_dir):
    wl = _wl(model_dir)
    reqs = make_requests(wl, vocab_size=97)
    assert [list(r.prompt_ids) for r in reqs["raspberry-pi-5-1"]] == [PROMPTS[0], PROMPTS[1]]
    assert reqs["jetson-orin-nano-0"][1].request_id == "jetson-orin-nano-0/r1"
    with pytest.raises(WorkloadError, match="token id 500"):
        make_requests(_wl(model_dir, inputs={"prompts": [[1, 500]]}), vocab_size=97)
    with pytest.raises(WorkloadError, match="has no tokenizer"):
        make_requests(_wl(model_dir, inputs={"prompts": ["hello"]}), vocab_size=97)
    big = scale_devices(wl, 5)
    assert [g.count for g in big.devices] == [3, 2]


def test_inprocess_run_with_the_real_policy(model_dir, tmp_path):
    out = run_inprocess(_wl(model_dir))
    s = out.summary
    assert s["totals"]["completed"] == 6 and s["totals"]["failed"] == 0
    pi, jet = s["devices"]["raspberry-pi-5-0"], s["devices"]["jetson-orin-nano-0"]
    # the tighter memory budget gets the shallower split (SLICER's deepest feasible split)
    assert 0 < pi["plan"]["split"] < jet["plan"]["split"]
    assert pi["server_compute_s"] > 0 and pi["bytes_sent"] > 0 and pi["latency_p95_ms"] >= pi["latency_p50_ms"]
    assert len(out.decisions) == 3 and all(d["trigger"] == "register" and d["tier"] is not None for d in out.decisions)
    R.write_run(tmp_path, s["workload"], out.records, out.decisions, out.load, s)
    for f in ("summary.json", "requests.jsonl", "policy.jsonl", "load.jsonl", "workload.json"):
        assert (tmp_path / f).stat().st_size > 0
    # requests.jsonl reads back as the same typed records (sorted by device, then index)
    back = R.load_records(tmp_path)
    assert back == sorted(out.records, key=lambda r: (r.device, r.index))
    assert all(isinstance(r.mode, Mode) and all(isinstance(st, StepRecord) for st in r.steps) for r in back)
    assert sum(st.sent for r in back for st in r.steps) == sum(r.payloads for r in out.records) > 0
    table = R.format_table(s)
    assert "raspberry-pi-5-0" in table and "6/6 completed" in table


def test_slicer_run_in_process_cli(model_dir, tmp_path, capsys):
    wl = {"name": "cli", "model": str(model_dir), "inputs": {"prompts": PROMPTS},
          "devices": [{"class": "jetson-orin-nano"}], "policy": "cloud-only", "requests": 2, "max_new_tokens": 3}
    (tmp_path / "w.yaml").write_text(yaml.safe_dump(wl))
    rc = main(["run", str(tmp_path / "w.yaml"), "--in-process", "--out", str(tmp_path / "run"), "--quiet"])
    assert rc == 0
    s = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert s["devices"]["jetson-orin-nano-0"]["plan"]["mode"] == "cloud-only"
    assert "2/2 completed" in capsys.readouterr().out
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump({**wl, "devices": [{"class": "toaster"}]}))
    assert main(["run", str(tmp_path / "bad.yaml"), "--in-process", "--quiet"]) == 2
    assert "devices[0].class='toaster' is not in the device catalog" in capsys.readouterr().err


def test_percentile():
    assert R.percentile([], 50) is None
    assert R.percentile([3.0, 1.0, 2.0], 50) == 2.0
    assert R.percentile([0.0, 10.0], 95) == pytest.approx(9.5)


@pytest.mark.parametrize("exc_cls", ["PlacementError", "UnsupportedModelError", "wrapped"])
def test_run_reports_cluster_and_model_errors_in_one_line(monkeypatch, capsys, exc_cls):
    """Matched by class, not by name: an actor's error arrives as a Ray-made subclass of
    its cause (``RayTaskError(UnsupportedModelError)``), which the name test missed."""
    from slicer.actors.models.families import UnsupportedModelError
    from slicer.orchestrator.cluster import PlacementError
    from slicer.orchestrator.commands import run as run_cmd

    cause = {"PlacementError": PlacementError("no alive node matches"),
             "UnsupportedModelError": UnsupportedModelError("model_type 'x' is not supported"),
             "wrapped": type("RayTaskError(UnsupportedModelError)", (UnsupportedModelError,), {})("from an actor")}[exc_cls]

    def boom(*a, **k):
        raise cause

    monkeypatch.setattr(run_cmd, "_execute", boom)
    assert main(["run", str(Path(__file__).resolve().parents[2] / "examples" / "quickstart.yaml"), "--quiet"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("slicer run: ") and str(cause) in err[0]
    monkeypatch.setattr(run_cmd, "_execute", lambda *a, **k: (_ for _ in ()).throw(KeyError("a bug")))
    with pytest.raises(KeyError):  # anything else is a bug: its traceback stays
        main(["run", str(Path(__file__).resolve().parents[2] / "examples" / "quickstart.yaml"), "--quiet"])
