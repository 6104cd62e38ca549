"""The Ray driver loop of ``slicer.orchestrator.runner`` at a stall, without a Ray cluster: fake
actor handles stand in for the actors and ``ray.wait``/``ray.get`` resolve their fake
refs. A stall must keep every finished record and name the stall."""
from __future__ import annotations

import io
import json
import time

import pytest
import ray
from ray.exceptions import GetTimeoutError

from slicer.actors import ray_actors as RA
from slicer.actors.protocol import RequestRecord
from slicer.orchestrator import runner
from slicer.orchestrator.workload import parse_workload

PENDING = object()


class Ref:
    """A fake ObjectRef: a value, or PENDING for a call that never returns."""

    def __init__(self, value):
        self.value = value


class Method:
    def __init__(self, fn):
        self.fn = fn

    def remote(self, *args):
        return Ref(self.fn(*args))


class FakeEdge:
    """Finishes its requests at once, except those whose index is in ``hang_at``."""

    def __init__(self, cfg, hang_at=()):
        dev = cfg.device_id
        self.where = Method(lambda: {"node_id": f"node-{dev}", "labels": {}})
        self.drain_traces = Method(lambda _: [])
        self.generate = Method(lambda req, _: PENDING if req.index in hang_at else RequestRecord(
            request_id=req.request_id, device=dev, index=req.index, ok=True,
            latency_s=0.001, new_tokens=1, tokens=[7], bytes_sent=10))


class FakeServer:
    def __init__(self, stats_hang):
        self.where = Method(lambda: {"node_id": "node-server", "labels": {}})
        self.load_sample = Method(lambda: {"t_s": time.time(), "sessions": 0})
        self.load_timeline = Method(lambda: [])
        self.stats = Method(lambda: PENDING if stats_hang else {"requests": 0})
        self.drain_traces = Method(lambda _: [])


class FakePolicy:
    def __init__(self):
        self.decisions = Method(lambda: [{"trigger": "register"}])
        self.drain_traces = Method(lambda _: [])


def _fake_get(refs, timeout=None):
    if isinstance(refs, list):
        return [_fake_get(r, timeout) for r in refs]
    if refs.value is PENDING:
        raise GetTimeoutError("fake: never finishes")
    return refs.value


def _fake_wait(refs, num_returns=1, timeout=None):
    done = [r for r in refs if r.value is not PENDING][:num_returns]
    if not done:
        time.sleep(min(timeout or 0.0, 0.005))
    return done, [r for r in refs if r not in done]


@pytest.fixture
def fake_ray(monkeypatch):
    hang = {"raspberry-pi-5-1": {1}}  # device 1's second request never finishes
    state = {"stats_hang": True}
    monkeypatch.setattr(ray, "wait", _fake_wait)
    monkeypatch.setattr(ray, "get", _fake_get)
    state["killed"] = []
    monkeypatch.setattr(RA, "kill", state["killed"].append)  # fake handles: ray.kill would start (or join) a real Ray
    monkeypatch.setattr(RA, "make_policy", lambda *a, **k: FakePolicy())
    monkeypatch.setattr(RA, "make_server", lambda *a, **k: FakeServer(state["stats_hang"]))
    monkeypatch.setattr(RA, "make_edge", lambda cfg, *a, **k: FakeEdge(cfg, hang.get(cfg.device_id, ())))
    monkeypatch.setattr(runner, "_cluster_gpus", lambda *a, **k: (lambda device_class: False))  # no Ray: no GPU
    return hang, state


def _drive(tmp_path, write=True):
    wl = parse_workload({"name": "stall", "model": str(tmp_path / "no-model"), "inputs": {"prompts": [[1, 2, 3]]},
                         "devices": [{"class": "raspberry-pi-5", "count": 2}], "requests": 3,
                         "max_new_tokens": 1, "server": {"step_timeout_s": 0.01}})
    prep = runner.Prepared(wl.model_ref(), None, runner.make_requests(wl, vocab_size=97))
    where_to = {"policy": {}, "server": {}, "edges": {"raspberry-pi-5": {}}}
    progress = io.StringIO()
    backend = runner.RayBackend(where_to=where_to, cluster_info={"address": "fake"})
    out = runner.drive(wl, backend, prepared=prep, out=tmp_path / "runs", trace=True, progress=progress,
                       load_interval_s=0.005, write=write)
    return out, progress.getvalue()


def test_stall_keeps_every_finished_record_and_names_the_stall(fake_ray, tmp_path):
    out, log = _drive(tmp_path)
    done = sorted(r.request_id for r in out.records if r.ok)
    # Device 0 finishes all 3 requests; device 1 finishes r0, then r1 hangs and r2 never starts.
    assert done == ["raspberry-pi-5-0/r0", "raspberry-pi-5-0/r1", "raspberry-pi-5-0/r2", "raspberry-pi-5-1/r0"]
    failed = [r for r in out.records if not r.ok]
    assert [r.request_id for r in failed] == ["raspberry-pi-5-1/r1"]
    assert out.error is not None and out.error.startswith("StallError: no request finished")
    assert "['raspberry-pi-5-1']" in out.error and "1 request(s) never started" in out.error
    assert failed[0].error == out.error and out.summary["error"] == out.error
    assert out.summary["totals"]["completed"] == 4 and out.summary["totals"]["failed"] == 1
    assert out.decisions == [{"trigger": "register"}]  # the policy still answered
    assert "FAILED: StallError" in log
    # The run folder holds the same records (the server's stats call hung: stats are empty).
    rows = [json.loads(line) for line in (out.run_dir / "requests.jsonl").read_text().splitlines()]
    assert len(rows) == 5 and sum(r["ok"] for r in rows) == 4
    assert json.loads((out.run_dir / "summary.json").read_text())["error"] == out.error
    assert len(fake_ray[1]["killed"]) == 4  # every actor (policy, server, 2 edges) killed, the hung one too


def test_no_stall_no_error_and_a_hung_final_call_still_raises(fake_ray, tmp_path):
    hang, state = fake_ray
    hang.clear()
    state["stats_hang"] = False
    out, _ = _drive(tmp_path, write=False)
    assert out.error is None and out.summary["error"] is None
    assert out.summary["totals"]["completed"] == 6 and out.summary["totals"]["failed"] == 0
    # Without a stall a server that does not answer is still an error, not an empty result.
    state["stats_hang"] = True
    with pytest.raises(TimeoutError, match="server stats did not answer"):
        _drive(tmp_path, write=False)


class _RestartingBackend:
    """A backend whose one request is resubmitted to a restarted actor (each restart
    slower than the stall limit) before it finishes."""

    def __init__(self, restarts: int):
        self.restarts, self.polls = restarts, 0

    def start(self, wl, prep, *, progress, trace, t_setup):
        pass

    def submit(self, dev_id, request):
        self.pending = (dev_id, request)

    def poll(self, timeout_s):
        self.polls += 1
        time.sleep(0.05)
        if self.polls <= self.restarts:
            return [], True  # resubmitted: progress, nothing finished
        dev_id, req = self.pending
        return [(dev_id, RequestRecord(request_id=req.request_id, device=dev_id, index=req.index, ok=True))], False

    def failed(self, dev_id, request, error):
        return RequestRecord.failed(request, dev_id, "raspberry-pi-5", error)

    def sample_load(self):
        return None

    def collect(self, stalled, trace):
        return runner.Collected({}, [], [], {}, {})

    def close(self):
        pass


def test_a_resubmission_restarts_the_stall_clock(tmp_path):
    """Restarting an actor takes longer than the stall limit (0.01 s x 3 steps here); a
    resubmitted request gets its whole time again instead of being declared stalled."""
    wl = parse_workload({"name": "resub", "model": str(tmp_path / "no-model"), "inputs": {"prompts": [[1, 2, 3]]},
                         "devices": [{"class": "raspberry-pi-5", "count": 1}], "requests": 1,
                         "max_new_tokens": 1, "server": {"step_timeout_s": 0.01}})
    prep = runner.Prepared(wl.model_ref(), None, runner.make_requests(wl, vocab_size=97))
    out = runner.drive(wl, _RestartingBackend(restarts=3), prepared=prep, load_interval_s=0.001)
    assert out.error is None and [r.ok for r in out.records] == [True]
