"""`slicer run` end to end in a subprocess: its own embedded cluster, a complete
summary.json, and no process left behind (every process the run starts inherits a
marker in its environment; none may carry it after the command returns)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]


def _marked_pids(marker: str) -> list[int]:
    out = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/environ", "rb") as f:
                if marker.encode() in f.read():
                    out.append(int(d))
        except OSError:
            continue
    return out


def test_slicer_run_quickstart_writes_summary_and_leaves_nothing(tmp_path):
    # The quickstart as shipped: the project's trained slicer-tiny, text prompts.
    path = REPO / "examples" / "quickstart.yaml"
    wl = yaml.safe_load(path.read_text())
    out = tmp_path / "run"
    marker = f"SLICER_TEST_MARKER_{uuid.uuid4().hex}"
    env = {**os.environ, "SLICER_TEST_MARKER": marker}
    for k in ("RAY_ADDRESS", "RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"):
        env.pop(k, None)  # a fresh user's shell: no cluster, no token
    with open(tmp_path / "stdout", "w") as so, open(tmp_path / "stderr", "w") as se:
        proc = subprocess.Popen([sys.executable, "-m", "slicer.orchestrator", "run", str(path), "--out", str(out), "--json"],
                                cwd=tmp_path, env=env, stdout=so, stderr=se)
        most = 0  # the check below can fail: while it runs, the marker is on the cluster's processes
        deadline = time.monotonic() + 600
        while proc.poll() is None and time.monotonic() < deadline:
            most = max(most, len(_marked_pids(marker)))
            time.sleep(0.5)
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    stdout, stderr = (tmp_path / "stdout").read_text(), (tmp_path / "stderr").read_text()
    assert proc.returncode == 0, stderr[-3000:]
    printed = json.loads(stdout)  # --json: the summary alone on stdout
    assert printed["totals"]["completed"] == 6 and printed["run_dir"] == str(out)
    # progress went to stderr: the cluster start, the actors loading, each request
    assert "starting a local Ray cluster" in stderr and "actors ready" in stderr and "[6/6]" in stderr, stderr[-2000:]
    assert most > 3, f"only {most} marked processes seen while running"
    assert _marked_pids(marker) == [], "processes of the run are still alive"
    s = json.loads((out / "summary.json").read_text())
    assert set(s["devices"]) == {"raspberry-pi-5-0", "jetson-orin-nano-0"}
    for d in s["devices"].values():
        for key in ("class", "node", "plan", "requests", "tokens", "bytes_sent", "bits_per_element",
                    "latency_p50_ms", "latency_p95_ms"):
            assert key in d, key
        assert d["requests"] == 3 and d["tokens"] == 3 * wl["max_new_tokens"] and d["node"]
        assert {"split", "offload_step", "codec"} <= set(d["plan"])
    srv = s["server"]
    assert {"compute_s_by_device", "requests", "batch_size_mean", "batch_size_hist"} <= set(srv)
    assert s["totals"]["emulated"] is True  # the quickstart emulates its devices and links
    recs = [json.loads(line) for line in (out / "requests.jsonl").read_text().splitlines()]
    assert len(recs) == 6 and all(r["ok"] and len(r["tokens"]) == wl["max_new_tokens"] for r in recs)
    assert (out / "policy.jsonl").read_text().strip()
    # one load row per server batch: the quickstart's plot has points to draw (the driver's
    # polling alone gave 2 rows 6 ms apart)
    load = [json.loads(line) for line in (out / "load.jsonl").read_text().splitlines()]
    assert len(load) >= 20, len(load)
    assert sum(r["batches"] for r in load) == len(load)
    assert all(r["t_s"] > 0 for r in load) and load == sorted(load, key=lambda r: r["t_s"])
    assert sum(r["tokens"] for r in load) == sum(r["new_tokens"] for r in recs if r["mode"] != "edge-only")
    # the scripted link change before request 2 shows as a policy decision
    decisions = [json.loads(line) for line in (out / "policy.jsonl").read_text().splitlines()]
    assert any(d["trigger"] == "link" and d["device"] == "raspberry-pi-5-0" for d in decisions)
