"""Up-front validation of what needs the model (orchestrator.validation, called by both
runners before any actor starts) and infeasible budgets surfaced with the binding
constraint in records, summary and console."""
from __future__ import annotations

import io

import pytest

from slicer.orchestrator import results as R
from slicer.orchestrator.runner import run_inprocess
from slicer.orchestrator.validation import check_against_model, model_max_positions
from slicer.orchestrator.workload import WorkloadError, parse_workload


def _wl(model_dir, **kw):
    d = {"name": "v", "model": str(model_dir), "inputs": {"prompts": [[1, 2, 3]]},
         "devices": [{"class": "raspberry-pi-5", "count": 2}], "requests": 1, "max_new_tokens": 4}
    d.update(kw)
    return parse_workload(d)


@pytest.mark.parametrize("kw,needle", [
    ({"policy": {"name": "fixed", "split": 6}}, r"policy\.split=6 .*allowed 1\.\.5"),
    ({"policy": {"name": "fixed", "split": 0}}, r"policy\.split=0 .*cloud-only"),
    ({"max_new_tokens": 126}, r"max_new_tokens=126: .*129 tokens.*max_position_embeddings=128; allowed max_new_tokens <= 125"),
    ({"server": {"max_kv_mib": 0.001}}, r"server\.max_kv_mib=0\.001 cannot hold one request"),
    ({"server": {"max_sessions": 1}}, r"server\.max_sessions=1 is fewer than the 2 devices"),
    ({"server": {"max_kv_mib_per_device": 0.001}}, r"server\.max_kv_mib_per_device=0\.001 cannot hold one request"),
])
def test_model_dependent_fields_fail_before_any_run(model_dir, kw, needle):
    from slicer.actors.models import profile_from_config

    wl = _wl(model_dir, **kw)
    with pytest.raises(WorkloadError, match=needle):
        check_against_model(wl, profile_from_config(str(model_dir)), 3, max_positions=model_max_positions(str(model_dir)))
    with pytest.raises(WorkloadError, match=needle):  # and the runner calls it before generating anything
        run_inprocess(wl)


def test_per_device_server_limits_are_workload_fields(model_dir):
    with pytest.raises(WorkloadError, match=r"server\.max_sessions_per_device=0 is invalid: allowed an integer >= 1"):
        _wl(model_dir, server={"max_sessions_per_device": 0})
    with pytest.raises(WorkloadError, match=r"server\.max_kv_mib_per_device=-1 is invalid"):
        _wl(model_dir, server={"max_kv_mib_per_device": -1})
    from slicer.orchestrator.runner import server_config

    cfg = server_config(_wl(model_dir, server={"max_sessions_per_device": 2, "max_kv_mib_per_device": 1.5}))
    assert cfg.max_sessions_per_device == 2 and cfg.max_kv_bytes_per_device == int(1.5 * 2**20)


def test_valid_edges_of_the_ranges_pass(model_dir):
    from slicer.actors.models import profile_from_config

    prof = profile_from_config(str(model_dir))
    for kw in ({"policy": {"name": "fixed", "split": 5}}, {"max_new_tokens": 125}, {"server": {"max_sessions": 2}}):
        check_against_model(_wl(model_dir, **kw), prof, 3, max_positions=128)
    assert model_max_positions(str(model_dir)) == 128
    assert model_max_positions("/nonexistent/model") is None  # unknown: skipped, not guessed


def test_infeasible_budget_names_the_binding_constraint_everywhere(model_dir):
    # A memory budget below any front segment: no setting is feasible; the policy names memory.
    wl = _wl(model_dir, devices=[{"class": "raspberry-pi-5", "budgets": {"memory_mib": 0.0001, "latency_ms": 1000}}])
    out = run_inprocess(wl)
    rec = out.records[0]
    assert rec.plan_feasible is False and rec.plan_binding == "memory"
    plan = out.summary["devices"]["raspberry-pi-5-0"]["plans"][0]
    assert plan["feasible"] is False and plan["binding"] == "memory" and plan["reason"]
    table = R.format_table(out.summary)
    assert "raspberry-pi-5-0: no plan meets its budgets; binding constraint memory" in table
    buf = io.StringIO()
    R.progress_line(rec, 1, 1, buf)
    assert "plan infeasible, binding memory" in buf.getvalue()
    # a feasible device shows none of it
    ok = run_inprocess(_wl(model_dir, devices=[{"class": "raspberry-pi-5", "budgets": {"memory_mib": 100}}]))
    assert ok.records[0].plan_feasible is not False
    assert "no plan meets" not in R.format_table(ok.summary)


def test_one_requests_kv_is_kept_for_each_idle_device(model_dir):
    from slicer.actors.models import profile_from_config
    from slicer.orchestrator.runner import make_requests, server_config
    from slicer.orchestrator.validation import request_kv_bytes

    wl = _wl(model_dir, max_new_tokens=5)
    prof = profile_from_config(str(model_dir))
    reqs = make_requests(wl, vocab_size=97)
    kv = request_kv_bytes(wl, prof, 3)
    assert kv == int(prof.kv_bytes_per_token(0, prof.num_layers)) * (3 + 5) > 0
    assert server_config(wl, prof, reqs).kv_kept_per_idle_device == kv
    assert server_config(wl).kv_kept_per_idle_device == 0  # no model known: nothing kept


def test_max_kv_too_small_for_a_session_per_device_and_their_batched_step(model_dir):
    """Every device keeps a request in flight, and the server admits a session only when
    the KV reserved, its own and the worst batched step's memory fit ``max_kv_mib``:
    validation asks that of one session per device before any run, naming the figure
    needed; just above it the run admits every session."""
    from slicer.actors.models import profile_from_config
    from slicer.orchestrator.validation import all_sessions_bytes, model_config

    wl = _wl(model_dir, max_new_tokens=8, devices=[{"class": "raspberry-pi-5", "count": 4}])
    kv, step = all_sessions_bytes(wl, profile_from_config(str(model_dir)), model_config(str(model_dir)), 3)
    assert kv > 0 and step > 0
    need_mib = (kv + step) / 2**20
    short = _wl(model_dir, max_new_tokens=8, devices=[{"class": "raspberry-pi-5", "count": 4}],
                server={"max_kv_mib": round(0.97 * need_mib, 4)})
    with pytest.raises(WorkloadError, match=r"server\.max_kv_mib=.* cannot hold one session per device at once: "
                                            r".* worst batched step .*; allowed server\.max_kv_mib >= "):
        run_inprocess(short)
    enough = _wl(model_dir, max_new_tokens=8, devices=[{"class": "raspberry-pi-5", "count": 4}],
                 server={"max_kv_mib": round(1.01 * need_mib, 4)}, policy="cloud-only")
    out = run_inprocess(enough)
    assert all(r.ok for r in out.records), [r.error for r in out.records]
