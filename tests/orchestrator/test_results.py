"""results.py reads typed request records (``RequestRecord``, ``StepRecord``): the summary,
the progress line, requests.jsonl written with ``to_json`` and read back with ``load_records``."""
from __future__ import annotations

import io
import json

import pytest

from slicer.actors.protocol import (
    LinkSpec,
    Mode,
    PlanKey,
    Replan,
    RequestRecord,
    SessionRebuild,
    StepRecord,
    to_json,
)
from slicer.orchestrator import results as R


def _rec(dev: str, i: int, **kw) -> RequestRecord:
    steps = [StepRecord(step=0, kind="prefill", tokens=3, token=5, edge_compute_s=0.01, payload_bytes=100, elements=200,
                        send_t=1.0, server_recv_t=1.001, server_done_t=1.002, recv_t=1.004, queue_s=0.0005,
                        server_compute_s=0.001),
             StepRecord(step=1, kind="decode", tokens=1, token=6, edge_compute_s=0.02, payload_bytes=50, elements=100,
                        send_t=2.0, server_recv_t=2.001, server_done_t=2.002, recv_t=2.003, server_compute_s=0.001),
             StepRecord(step=2, kind="local", tokens=1, token=7, edge_compute_s=0.03)]
    r = RequestRecord(request_id=f"{dev}/r{i}", device=dev, index=i, ok=True, device_class="raspberry-pi-5",
                      mode=Mode.SPLIT, split=2, offload_step=1, codec="lossless", front_precision="float32",
                      link=LinkSpec(rate_mbps=5.0), tokens=[5, 6, 7], new_tokens=3, steps=steps,
                      latency_s=0.1 * (i + 1), t_start=float(i), t_end=i + 0.5)
    r.add_totals()
    for k, v in kw.items():
        setattr(r, k, v)
    return r


def _records() -> list[RequestRecord]:
    failed = RequestRecord(request_id="b/r0", device="b", index=0, error="EdgeLostError: gone", attempts=3,
                           recovered_from=["node died"])
    return [_rec("a", 1), _rec("a", 0, server_recoveries=[SessionRebuild("a/r0", 1, 1, 0.1, "ServerRestarted")]), failed,
            _rec("b", 1, mode=Mode.CLOUD_ONLY, split=0, codec="tokens", plan_feasible=False, plan_binding="memory",
                 plan_reason="too big", emulated=True)]


def test_summary_from_typed_records():
    recs = _records()
    assert recs[0].bytes_sent == 150 and recs[0].payloads == 2  # add_totals counts only steps that sent
    devices = {"a": {"device_class": "raspberry-pi-5", "node": "n1"}, "b": {"device_class": "jetson", "emulated": True}}
    s = R.build_summary({"name": "w"}, recs, {"compute_s_by_device": {"a": 0.25}}, [{"trigger": "register"}],
                        devices, 2.0)
    a, b = s["devices"]["a"], s["devices"]["b"]
    assert (a["requests"], a["completed"], a["tokens"], a["bytes_sent"]) == (2, 2, 6, 300)
    assert a["bits_per_element"] == pytest.approx(300 * 8 / 600)
    assert a["latency_p50_ms"] == pytest.approx(150.0) and a["server_compute_s"] == 0.25
    assert a["plan"] == {"split": 2, "offload_step": 1, "codec": "lossless", "mode": "split", "front_precision": "float32"}
    assert type(a["plan"]["mode"]) is str  # summary.json holds plain values
    assert (b["requests"], b["completed"], b["failed"], b["errors"]) == (2, 1, 1, ["EdgeLostError: gone"])
    assert b["plans"][-1] == {"split": 0, "offload_step": 1, "codec": "tokens", "mode": "cloud-only",
                              "front_precision": "float32", "feasible": False, "binding": "memory",
                              "reason": "too big"}
    t = s["totals"]
    assert (t["requests"], t["completed"], t["failed"], t["tokens"]) == (4, 3, 1, 9)
    assert t["tokens_per_s"] == 4.5 and t["bytes_sent"] == 450 and t["emulated"] is True
    assert t["resubmitted"] == 1 and t["server_sessions_rebuilt"] == 1
    json.dumps(s, allow_nan=False)  # nothing typed left in it
    assert "binding constraint memory: too big" in R.format_table(s)


def test_summary_says_which_devices_sent_over_ray_calls():
    recs = _records()
    for r in recs[:2]:
        r.transport = "direct"
    recs[3].transport, recs[3].transport_note = "ray", "channel 10.0.0.1:4000 not usable (ConnectionRefusedError)"
    devices = {"a": {"device_class": "pi"}, "b": {"device_class": "jetson"}}
    stats = {"config": {"transport": "direct"}, "channel": {"steps": 4, "connections": 0}}
    s = R.build_summary({"name": "w"}, recs, stats, [], devices, 2.0)
    assert (s["devices"]["a"]["transport"], s["devices"]["a"]["transport_note"]) == ("direct", None)
    assert s["devices"]["b"]["transport"] == "ray" and s["server"]["channel"]["steps"] == 4
    table = R.format_table(s)
    assert "b: steps went as Ray calls, not over the step channel: channel 10.0.0.1:4000 not usable" in table
    assert "a: steps went" not in table
    s_ray = R.build_summary({"name": "w"}, recs, {"config": {"transport": "ray"}}, [], devices, 2.0)
    assert "steps went as Ray calls" not in R.format_table(s_ray)  # asked for: nothing to say


def test_progress_line_reads_attributes():
    recs = _records()
    buf = io.StringIO()
    R.progress_line(recs[0], 1, 4, buf)
    R.progress_line(recs[2], 2, 4, buf)
    R.progress_line(recs[3], 3, 4, buf)
    lines = buf.getvalue().splitlines()
    assert lines[0] == "[1/4] a a/r1 split l=2 3 tok 150 B 200 ms ok"
    assert lines[1].startswith("[2/4] b b/r0 None l=None 0 tok 0 B 0 ms FAILED: EdgeLostError: gone")
    assert lines[1].endswith("(after 2 resubmission(s))")
    assert " cloud-only l=0 " in lines[2] and "(plan infeasible, binding memory)" in lines[2]


def test_requests_jsonl_round_trip(tmp_path):
    recs = _records()
    recs[0].replans = [Replan(step=1, goodput_mbps=2.5, before=PlanKey(2, 1, "float32", "lossless"),
                              after=PlanKey(2, 1, "float32", "ecsq:rate=8"), applies="next step")]
    recs[0].text = "hi"
    R.write_run(tmp_path, {"name": "w"}, recs, [], [], {"name": "w"})
    rows = [json.loads(line) for line in (tmp_path / "requests.jsonl").read_text().splitlines()]
    # sorted by device, then index; plain JSON values (the mode's name, the link's fields)
    assert [r["request_id"] for r in rows] == ["a/r0", "a/r1", "b/r0", "b/r1"]
    assert rows[1]["mode"] == "split" and rows[1]["link"]["rate_mbps"] == 5.0 and rows[2]["mode"] is None
    assert rows[1]["steps"][2]["payload_bytes"] is None and rows[1]["text"] == "hi"
    back = R.load_records(tmp_path)
    assert all(isinstance(r, RequestRecord) for r in back)
    by_id = {r.request_id: r for r in recs}
    for r in back:
        want = by_id[r.request_id]
        assert r == want and to_json(r) == to_json(want)  # every field, typed as written
        assert r.mode == want.mode and (r.mode is None or isinstance(r.mode, Mode))
        assert r.steps == want.steps and r.link == want.link
        assert [s.sent for s in r.steps] == [s.sent for s in want.steps]
    assert back[1].replans[0].after.codec_spec == "ecsq:rate=8"
    assert R.load_records(tmp_path / "requests.jsonl")[0].request_id == "a/r0"  # the file itself


def test_load_records_ignores_unknown_fields_and_names_a_bad_line(tmp_path):
    row = to_json(_rec("a", 0))
    row["field_from_a_newer_version"] = 1
    (tmp_path / "requests.jsonl").write_text(json.dumps(row) + "\n\n" + json.dumps({"ok": True}) + "\n")
    with pytest.raises(ValueError, match=r"requests.jsonl:3: not a request record"):
        R.load_records(tmp_path)
    (tmp_path / "requests.jsonl").write_text(json.dumps(row) + "\n")
    (rec,) = R.load_records(tmp_path)
    assert rec.request_id == "a/r0" and rec.bytes_sent == 150 and rec.steps[2].kind == "local"
