"""slicer.orchestrator.faults.Resubmitter's decisions without a cluster: errors that are not an
actor's death are final and keep their cause; attempts are bounded."""
from __future__ import annotations

import pytest

from slicer.actors.protocol import Request, RequestRecord
from slicer.orchestrator import faults

REQ = Request("d/r0", 0, (1, 2), 4)


def test_non_actor_errors_are_final_with_their_cause():
    r = faults.Resubmitter({"d": "phone"})
    err = r.on_error("d", REQ, TimeoutError("server.step did not answer within 60 s"), None)
    assert err == "TimeoutError: server.step did not answer within 60 s"
    rec = r.annotate(RequestRecord(request_id="d/r0", device="d", index=0))
    assert rec.attempts == 1 and rec.recovered_from == [err]


def test_actor_deaths_are_bounded(monkeypatch):
    ray_ex = pytest.importorskip("ray.exceptions")
    r = faults.Resubmitter({"d": "phone"}, max_attempts=2)
    monkeypatch.setattr(faults.Resubmitter, "_no_node", staticmethod(lambda cls: None))
    monkeypatch.setattr(faults.Resubmitter, "_await_restart", lambda self, dev, h: {"node_id": "n2"})
    died = ray_ex.RayActorError()
    assert r.on_error("d", REQ, died, object()) is None
    assert r.where["d"] == {"node_id": "n2"}
    assert r.on_error("d", REQ, died, object()) is None
    err = r.on_error("d", REQ, died, object())
    assert err.startswith("EdgeLostError: device d (class phone): its actor died 3 times") and "gave up after 2" in err
    assert r.annotate(RequestRecord(request_id="d/r0", device="d", index=0)).attempts == 4


def test_no_node_of_the_class_names_it(monkeypatch):
    ray_ex = pytest.importorskip("ray.exceptions")
    r = faults.Resubmitter({"d": "phone"})
    monkeypatch.setattr(faults.Resubmitter, "_no_node", staticmethod(lambda cls: f"device class {cls!r} has no alive node"))
    err = r.on_error("d", REQ, ray_ex.RayActorError(), object())
    assert err.startswith("EdgeLostError: device d (class phone) lost its actor") and "no alive node of class phone" in err
