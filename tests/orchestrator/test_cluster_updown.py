"""`slicer cluster up` / `slicer submit --wait` / `slicer cluster down`, each a separate
command as a user types them, in a HOME of its own (the token `up` writes to
``~/.ray/auth_token`` lands there): a persistent cluster on 127.0.0.1 with the project's
labels and token auth, a job that runs a workload on it and brings its run folder back,
and nothing left running afterwards."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from slicer.orchestrator import cluster as C

from tests.orchestrator.conftest import write_tiny_job

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]


def slicer(args: list[str], env: dict, cwd: Path, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "slicer.orchestrator", *args], env=env, cwd=cwd,
                          capture_output=True, text=True, timeout=timeout)


def test_cluster_up_submit_wait_down_leaves_nothing(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    work = tmp_path / "work"
    work.mkdir()
    write_tiny_job(work, "updown", ("phone-soc", "raspberry-pi-5"), 3)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "SLICER_"))}
    env.update(HOME=str(home), PYTHONPATH=str(REPO))
    state = None
    try:
        up = slicer(["cluster", "up", "--classes", "phone-soc,raspberry-pi-5", "--slots", "4", "--json"], env, work,
                    timeout=400)
        assert up.returncode == 0, up.stderr[-3000:]
        state = json.loads(up.stdout)
        assert state["address"].startswith("127.0.0.1:") and state["nodes"] == 3
        token_file = home / ".ray" / "auth_token"
        assert token_file.is_file() and (token_file.stat().st_mode & 0o777) == 0o600  # written for the user, private
        pids = C.marked_pids(state["id"])
        assert len(pids) >= 6  # 3 raylets, GCS, dashboard, agents...
        from tests.orchestrator.test_cluster_local import listen_addresses

        assert listen_addresses(pids) == {"127.0.0.1"}
        # a second `up` refuses while this one runs
        again = slicer(["cluster", "up"], env, work, timeout=120)
        assert again.returncode == 1 and "already up" in again.stderr
        # the dashboard of `cluster up` is submit's default address; the token is found in HOME
        out = tmp_path / "fetched"
        sub = slicer(["submit", "wl.yaml", "--wait", "--timeout-s", "400", "--out", str(out),
                      "--run-args", "--no-trace --quiet"], env, work, timeout=560)
        assert sub.returncode == 0, sub.stderr[-4000:]
        summary = json.loads((out / "summary.json").read_text())
        assert summary["totals"]["completed"] == 2 and summary["totals"]["failed"] == 0
        # each device ran on a node labelled with its class
        labels = {d: v["labels"] for d, v in summary["cluster"]["edge_nodes"].items()}
        assert labels["phone-soc-0"]["device-class"] == "phone-soc"
        assert labels["raspberry-pi-5-0"]["device-class"] == "raspberry-pi-5"
        assert all(v["role"] == "edge" for v in labels.values())
        jobs = slicer(["jobs", "--json"], env, work, timeout=120)
        assert jobs.returncode == 0 and [j["status"] for j in json.loads(jobs.stdout)] == ["SUCCEEDED"]
    finally:
        down = slicer(["cluster", "down", "--json"], env, work, timeout=180)
    assert down.returncode == 0, down.stderr[-2000:]
    assert state is not None
    assert C.marked_pids(state["id"]) == {}, "cluster processes left behind"
    assert not os.path.exists(state["temp_dir"])
    assert not (home / ".slicer" / "cluster.json").exists()
    assert json.loads(down.stdout)["stopped"] >= 6
    status = slicer(["cluster", "status"], env, work, timeout=60)
    assert status.returncode == 0 and "no slicer cluster is up" in status.stdout
