"""The runtime on one local multi-node cluster (loopback): placement by labels, exact
tokens with a lossless codec, eight devices at once, re-planning on a link change."""
from __future__ import annotations

import pytest

from slicer.orchestrator.runner import run_workload
from slicer.orchestrator.workload import parse_workload
from tests.integration.conftest import PROMPTS

pytestmark = pytest.mark.integration


def _wl(model_dir, **kw):
    d = {"name": "it", "model": str(model_dir), "inputs": {"prompts": PROMPTS},
         "devices": [{"class": "raspberry-pi-5", "count": 1}, {"class": "jetson-orin-nano", "count": 1}],
         "requests": 2, "max_new_tokens": 5, "server": {"step_timeout_s": 60}}
    d.update(kw)
    return parse_workload(d)


def test_eight_devices_lossless_split_on_labelled_nodes(local_cluster, tiny_model_dir, tiny_reference, tmp_path):
    """Eight devices at once (four per class) on a lossless per-token split: every actor
    on a node with its labels, every request completes with the unsplit model's tokens,
    the server batches steps of several devices."""
    wl = _wl(tiny_model_dir, devices=[{"class": "raspberry-pi-5", "count": 4}, {"class": "jetson-orin-nano", "count": 4}],
             policy={"name": "fixed", "split": 3, "offload_step": 1}, codec="lossless", precision="float32",
             requests=2, max_new_tokens=6, server={"max_batch": 8, "batch_window_ms": 5})
    out = run_workload(wl, out=tmp_path / "run", progress=None)
    nodes = {n.node_id: n.labels for n in local_cluster.nodes()}
    edges = out.summary["cluster"]["edge_nodes"]
    assert len(edges) == 8
    for dev_id, w in edges.items():
        cls = out.summary["devices"][dev_id]["class"]
        assert nodes[w["node_id"]]["role"] == "edge" and nodes[w["node_id"]]["device-class"] == cls
        assert w["labels"]["device-class"] == cls  # as the actor itself saw its node
    assert nodes[out.summary["cluster"]["server_node"]["node_id"]]["role"] == "server"
    ids = sorted(r.request_id for r in out.records)
    assert ids == sorted(f"{d}/r{i}" for d, _ in wl.all_devices() for i in range(2))  # nothing lost
    for r in out.records:
        assert r.ok, r.error
        assert r.mode == "split" and r.split == 3
        assert r.tokens == tiny_reference(PROMPTS[r.index % len(PROMPTS)], 6)
        assert (r.transport, r.transport_note) == ("direct", None)  # the step channel
    s = out.summary
    assert s["server"]["channel"]["steps"] == sum(r.payloads for r in out.records)  # every step over it
    assert s["totals"]["completed"] == 16 and s["server"]["requests"] == 16
    assert s["server"]["batch_size_max"] >= 2  # steps of several devices were batched
    for d in s["devices"].values():
        assert d["bytes_sent"] > 0 and d["bits_per_element"] > 32 and d["latency_p50_ms"] > 0
        assert d["server_compute_s"] > 0
    assert (tmp_path / "run" / "summary.json").exists() and (tmp_path / "run" / "requests.jsonl").exists()


def test_ray_transport_gives_the_same_tokens(local_cluster, tiny_model_dir, tiny_reference):
    """``server.transport: ray``: every step a Ray actor call, the server offers no
    channel, the records say why, and the tokens are the unsplit model's."""
    wl = _wl(tiny_model_dir, policy={"name": "fixed", "split": 2, "offload_step": 1}, codec="lossless",
             precision="float32", max_new_tokens=4, server={"transport": "ray", "step_timeout_s": 60})
    out = run_workload(wl, progress=None, write=False)
    for r in out.records:
        assert r.ok, r.error
        assert r.tokens == tiny_reference(PROMPTS[r.index % len(PROMPTS)], 4)
        assert r.transport == "ray" and "server.transport: ray" in r.transport_note
    assert out.summary["server"]["channel"] is None


def test_link_change_replans_and_shows_in_records(local_cluster, tiny_model_dir):
    # Memory binds the split; a latency budget the link can carry at 20 Mbit/s but not at
    # 0.5 Mbit/s makes the policy compress harder (or retreat) after the change.
    wl = _wl(tiny_model_dir, devices=[{
        "class": "raspberry-pi-5", "link": {"rate_mbps": 20, "snr_db": 15, "bandwidth_hz": 20e6},
        "budgets": {"latency_ms": 2, "memory_mib": 0.13},
        "link_schedule": [{"at_request": 1, "rate_mbps": 0.5}]}], requests=2, max_new_tokens=4)
    out = run_workload(wl, progress=None, write=False)
    recs = sorted(out.records, key=lambda r: r.index)
    assert all(r.ok for r in recs), [r.error for r in recs]
    link_dec = [d for d in out.decisions if d["trigger"] == "link"]
    assert len(link_dec) == 1 and link_dec[0]["changed"], out.decisions
    before, after = link_dec[0]["previous"], link_dec[0]
    shallower = after["split"] < before["split"]
    sparser = (after["sparsity"] or 0) > (before["sparsity"] or 0)
    assert shallower or sparser, (before, after)
    assert recs[0].link.rate_mbps == 20 and recs[1].link.rate_mbps == 0.5 and recs[1].link_changed
    assert (recs[1].split, recs[1].codec) == (after["split"], after["codec"])
    assert (recs[0].split, recs[0].codec) != (recs[1].split, recs[1].codec)
    assert recs[1].bytes_sent < recs[0].bytes_sent


def test_run_with_address_uses_the_existing_cluster(local_cluster, tiny_model_dir, tiny_reference, tmp_path):
    """`python -m slicer.orchestrator run WORKLOAD --address ADDR --out DIR` (what a Ray job
    runs), here with the cloud-only policy: token ids cross, the server runs everything."""
    import json
    import subprocess
    import sys

    import yaml

    wl = {"name": "addr", "model": str(tiny_model_dir), "inputs": {"prompts": PROMPTS[:2]},
          "devices": [{"class": "jetson-orin-nano"}], "policy": "cloud-only", "requests": 2, "max_new_tokens": 3}
    (tmp_path / "w.yaml").write_text(yaml.safe_dump(wl))
    before = {n.node_id for n in local_cluster.nodes()}
    proc = subprocess.run([sys.executable, "-m", "slicer.orchestrator", "run", str(tmp_path / "w.yaml"), "--address",
                           local_cluster.address, "--out", str(tmp_path / "run"), "--quiet"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    s = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert s["totals"]["completed"] == 2
    recs = [json.loads(line) for line in (tmp_path / "run" / "requests.jsonl").read_text().splitlines()]
    for r in recs:
        assert r["mode"] == "cloud-only" and r["codec"] == "tokens"
        assert r["tokens"] == tiny_reference(PROMPTS[r["index"]], 3)
        assert r["bytes_sent"] == (9 + 4 * len(PROMPTS[r["index"]])) + 2 * (9 + 4)  # SLTK token ids
        assert r["transport"] == "direct"
    assert s["devices"]["jetson-orin-nano-0"]["node"] in before  # ran on this cluster's nodes
    assert {n.node_id for n in local_cluster.nodes()} == before  # and left it running
