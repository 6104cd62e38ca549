"""Fault injection on a local multi-node cluster (loopback), each fault mid-generation
with three devices running: every request completes with exactly the unsplit greedy
tokens, or fails with an error naming the cause; none is lost and none hangs (every
wait of the runner, the recovery and the fault thread has its own timeout)."""
from __future__ import annotations

import time

import pytest

from slicer.orchestrator import faults
from slicer.orchestrator.runner import run_workload
from slicer.orchestrator.workload import parse_workload
from tests.integration.conftest import PROMPTS

pytestmark = pytest.mark.integration

NEW_TOKENS = 12


def _wl(model_dir):
    # Link emulation at 0.02 Mbit/s: ~60 ms per decode step, ~0.3 s per prefill, so a
    # request lasts ~1 s and a device ~3 s (3 requests in a row); each fault strikes once
    # the server has computed a few steps of the target (``faults.wait_for_steps``): mid-
    # generation whatever the machine's speed, with most of the work still to come.
    link = {"rate_mbps": 0.02, "snr_db": 20}
    return parse_workload({
        "name": "faults", "model": str(model_dir), "inputs": {"prompts": PROMPTS},
        "devices": [{"class": "raspberry-pi-5", "count": 2, "link": link, "emulation": {"link": True}},
                    {"class": "jetson-orin-nano", "count": 1, "link": link, "emulation": {"link": True}}],
        "policy": {"name": "fixed", "split": 2, "offload_step": 1}, "codec": "lossless", "precision": "float32",
        "requests": 3, "max_new_tokens": NEW_TOKENS, "server": {"step_timeout_s": 60}})


def _check_complete(wl, out, ref):
    """Nothing lost: one record per request; ok ones carry exactly the reference tokens."""
    ids = sorted(r.request_id for r in out.records)
    assert ids == sorted(f"{d}/r{i}" for d, _ in wl.all_devices() for i in range(3))
    for r in out.records:
        if r.ok:
            assert r.tokens == ref(PROMPTS[r.index % len(PROMPTS)], NEW_TOKENS), r.request_id


def _run_with_fault(wl, fault, steps: int = 4, device: str | None = None):
    """Run ``wl``; ``fault(actors)`` strikes once ``device`` (None: all together) has had
    ``steps`` server steps."""
    box = {}

    def placed(actors):
        box["actors"] = actors

        def strike():
            faults.wait_for_steps(actors["server"], steps, device)
            fault(actors)

        box["thread"] = faults.after(0.0, strike)

    t0 = time.monotonic()
    with faults.on_placed(placed):
        out = run_workload(wl, progress=None, write=False, trace=False)
    box["thread"].join(30)
    assert box["thread"].error is None, box["thread"].error
    assert box["thread"].done
    return out, time.monotonic() - t0


def test_edge_actor_killed_mid_generation_is_restarted_and_its_request_replayed(
        local_cluster, tiny_model_dir, tiny_reference):
    wl = _wl(tiny_model_dir)
    victim = "raspberry-pi-5-1"
    out, _ = _run_with_fault(wl, lambda a: faults.kill_actor(a["edges"][victim], restart=True), device=victim)
    _check_complete(wl, out, tiny_reference)
    assert all(r.ok for r in out.records), [r.error for r in out.records if not r.ok]
    retried = [r for r in out.records if r.attempts > 1]
    assert [r.device for r in retried] == [victim]  # the one in flight, resubmitted once
    assert retried[0].attempts == 2 and "Actor" in retried[0].recovered_from[0]
    assert all(r.attempts == 1 for r in out.records if r.device != victim)
    assert out.summary["totals"]["resubmitted"] == 1


def test_server_killed_mid_generation_sessions_rebuilt_by_replay(local_cluster, tiny_model_dir, tiny_reference):
    wl = _wl(tiny_model_dir)
    out, _ = _run_with_fault(wl, lambda a: faults.kill_actor(a["server"], restart=True), steps=12)
    _check_complete(wl, out, tiny_reference)
    assert all(r.ok for r in out.records), [r.error for r in out.records if not r.ok]
    rebuilt = [ev for r in out.records for ev in r.server_recoveries]
    assert rebuilt, "the server kill hit no session"
    assert any(ev.replayed_steps > 0 for ev in rebuilt)  # mid-request: the sent log was replayed
    assert all(r.attempts == 1 for r in out.records)  # the edges never failed
    assert out.summary["totals"]["server_sessions_rebuilt"] == len(rebuilt)


def test_edge_node_removed_devices_move_to_another_node_of_their_class(local_cluster, tiny_model_dir, tiny_reference):
    wl = _wl(tiny_model_dir)
    # A second node of the class (added from this thread: Ray's add_node needs the main
    # thread); the fault removes whichever node holds raspberry-pi-5-0.
    spare = local_cluster.add_edge_node("raspberry-pi-5")
    box = {}

    def fault(actors):
        box["where"] = {d: w["node_id"] for d, w in actors["where"].items()}
        box["old"] = box["where"]["raspberry-pi-5-0"]
        local_cluster.remove_node(box["old"])

    out, _ = _run_with_fault(wl, fault, device="raspberry-pi-5-0")
    _check_complete(wl, out, tiny_reference)
    assert all(r.ok for r in out.records), [r.error for r in out.records if not r.ok]
    rpi_nodes = set(local_cluster.node_ids_by_class()["raspberry-pi-5"])
    assert box["old"] not in rpi_nodes and len(rpi_nodes) == 1 and (spare in rpi_nodes or box["old"] == spare)
    moved = [d for d, node in box["where"].items() if node == box["old"]]
    last = {r.device: r for r in sorted(out.records, key=lambda r: r.index)}
    for d in moved:  # every device of the lost node finished on the remaining node of its class
        assert last[d].node in rpi_nodes, (d, last[d].node)
    assert any(r.attempts > 1 for r in out.records if r.device in moved)  # in-flight ones were resubmitted


def test_last_node_of_a_class_removed_fails_its_requests_with_the_cause(local_cluster, tiny_model_dir, tiny_reference):
    wl = _wl(tiny_model_dir)
    box = {}

    def fault(actors):
        box["old"] = actors["where"]["jetson-orin-nano-0"]["node_id"]
        local_cluster.remove_node(box["old"])

    try:
        out, _ = _run_with_fault(wl, fault, device="jetson-orin-nano-0")
    finally:
        local_cluster.add_edge_node("jetson-orin-nano")  # later tests in this module get their class back
    _check_complete(wl, out, tiny_reference)
    failed = [r for r in out.records if not r.ok]
    assert failed and {r.device for r in failed} == {"jetson-orin-nano-0"}
    for r in failed:
        assert "EdgeLostError" in r.error and "jetson-orin-nano" in r.error and "no alive node" in r.error
    # the other class went on unaffected
    assert all(r.ok for r in out.records if r.device != "jetson-orin-nano-0")
