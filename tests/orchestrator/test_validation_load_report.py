"""`slicer bench load`'s accounting: a request with no record is LOST, one with a failed
record is FAILED; percentiles are nearest-rank."""
from __future__ import annotations

from slicer.actors.protocol import RequestRecord
from slicer.orchestrator.bench.load import load_report, percentile


def test_lost_failed_and_completed_are_told_apart():
    expected = [f"d{i}/r{j}" for i in range(2) for j in range(3)]
    def rec(rid: str, **kw) -> RequestRecord:
        return RequestRecord(request_id=rid, device=rid.split("/")[0], index=int(rid[-1]), **kw)

    recs = [rec("d0/r0", ok=True, latency_s=0.010, new_tokens=4),
            rec("d0/r1", ok=True, latency_s=0.030, new_tokens=4),
            rec("d0/r2", ok=False, error="EdgeLostError: no alive node", latency_s=0.0),
            rec("d1/r0", ok=True, latency_s=0.020, new_tokens=4)]
    rep = load_report(expected, recs, 2.0, {"steps_by_device": {"d0": 8, "d1": 4}, "batch_size_mean": 1.5})
    assert (rep["requests"], rep["completed"], rep["failed"], rep["lost"]) == (6, 3, 1, 2)
    assert rep["p50_ms"] == 20.0 and rep["p99_ms"] == 30.0
    assert rep["tokens_per_s"] == 6.0 and rep["server_steps_per_s"] == 6.0
    assert rep["errors"] == ["EdgeLostError: no alive node"] and rep["duplicates"] == 0


def test_percentile_nearest_rank():
    xs = list(range(1, 201))
    assert percentile(xs, 50) == 100 and percentile(xs, 99) == 198 and percentile(xs, 100) == 200
    assert percentile([], 50) is None and percentile([7.0], 99) == 7.0
