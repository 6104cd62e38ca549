"""`slicer submit`/`status`/`logs` against a real `ray start --head` on 127.0.0.1 with token
authentication on: the job runs, reaches the cluster on loopback only, and its run folder
comes back; a client without the token is refused with a clear error.

The head runs with ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` (every port on 127.0.0.1; with it
``ray start --node-ip-address 127.0.0.1`` is not rewritten to the outward address) in a
session of its own, and is stopped by the pids of that session (never ``ray stop``)."""
from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from slicer.orchestrator import cluster as C
from slicer.orchestrator.cli import main as slicer

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(Path(__file__).parent))
from test_cluster_local import listen_addresses  # noqa: E402


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def session_members(sid: int) -> dict[int, int]:
    """``{pid: start_time}`` of the live processes of session ``sid`` (ours: we made it)."""
    out = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                f = Path(f"/proc/{d}/stat").read_text().rsplit(")", 1)[1].split()
            except (OSError, IndexError):
                continue
            if int(f[3]) == sid and f[0] != "Z":
                out[int(d)] = int(f[19])
    return out


class RayHead:
    """``ray start --head --block`` on loopback with token auth, in its own session."""

    def __init__(self, root: Path):
        self.root = root
        self.token = secrets.token_hex(32)
        self.dash_port = _free_port()
        self.url = f"http://127.0.0.1:{self.dash_port}"
        env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
        env.update(RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0", RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=self.token,
                   HOME=str(root / "home"), PYTHONPATH=str(REPO))
        (root / "home").mkdir()
        # Every port we can name is a free loopback one: other users' heads may hold the defaults.
        cmd = [shutil.which("ray") or "ray", "start", "--head", "--block", f"--port={_free_port()}",
               "--node-ip-address=127.0.0.1", "--dashboard-host=127.0.0.1", f"--dashboard-port={self.dash_port}",
               f"--ray-client-server-port={_free_port()}", f"--dashboard-agent-listen-port={_free_port()}",
               "--num-cpus=1", f"--temp-dir={root / 'ray'}", "--include-dashboard=true", "--disable-usage-stats"]
        self.log = open(root / "head.log", "w")
        self.proc = subprocess.Popen(cmd, env=env, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)

    def wait_ready(self, timeout_s: float = 120.0) -> None:
        deadline = time.monotonic() + timeout_s
        req = urllib.request.Request(f"{self.url}/api/version", headers={"Authorization": f"Bearer {self.token}"})
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"ray start exited: {(self.root / 'head.log').read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(req, timeout=2) as r:
                    if r.status == 200:
                        return
            except OSError:
                time.sleep(0.5)
        raise TimeoutError(f"dashboard not up after {timeout_s} s")

    def pids(self) -> dict[int, int]:
        return session_members(self.proc.pid)

    def stop(self) -> dict[int, int]:
        left = C.kill_pids(self.pids(), grace_s=3.0)
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            pass
        self.log.close()
        return left


@pytest.fixture(scope="module")
def head(tmp_path_factory):
    h = RayHead(tmp_path_factory.mktemp("head"))
    try:
        h.wait_ready()
        yield h
    finally:
        pids = h.pids()
        left = h.stop()
        shutil.rmtree(h.root / "ray", ignore_errors=True)
    assert left == {} and not any(C.pid_alive(p, st) for p, st in pids.items())


@pytest.fixture
def with_token(head, monkeypatch):
    for k in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN_PATH", "RAY_ADDRESS", "RAY_API_SERVER_ADDRESS"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("RAY_AUTH_TOKEN", head.token)  # mode unset: Ray's client alone would send nothing
    return head


JOB = r"""
import json, os, pathlib, ray
from slicer.orchestrator.cluster import connect
with connect("auto", timeout_s=10) as c:
    nodes = c.nodes()
    addrs = sorted({n.address for n in nodes})
    who = ray.get(ray.remote(lambda: ray.util.get_node_ip_address()).options(num_cpus=0).remote(), timeout=60)
d = pathlib.Path(os.environ["SLICER_RUN_DIR"])
d.mkdir(parents=True, exist_ok=True)
(d / "summary.json").write_text(json.dumps({"nodes": len(nodes), "addresses": addrs, "task_ip": who}))
print("hello from the job", addrs, who, flush=True)
"""


def test_submit_wait_fetches_the_run_folder(with_token, tmp_path, capsys):
    (tmp_path / "job.py").write_text(JOB)
    out = tmp_path / "fetched"
    rc = slicer(["submit", "--address", with_token.url, "--working-dir", str(tmp_path), "--entrypoint",
                 f"PYTHONPATH={REPO}:$PYTHONPATH python job.py", "--wait", "--timeout-s", "120", "--out", str(out)])
    cap = capsys.readouterr()
    assert rc == 0, cap.err[-3000:]
    job_id = cap.out.splitlines()[0].strip()
    assert job_id.startswith("raysubmit_")
    assert "hello from the job ['127.0.0.1'] 127.0.0.1" in cap.err  # followed logs
    summary = json.loads((out / "summary.json").read_text())
    assert summary == {"nodes": 1, "addresses": ["127.0.0.1"], "task_ip": "127.0.0.1"}

    assert slicer(["status", job_id, "--address", with_token.url, "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["status"] == "SUCCEEDED" and info["metadata"]["slicer_run_name"].endswith("-job")

    assert slicer(["logs", job_id, "--address", with_token.url, "--fetch", "--out", str(tmp_path / "again")]) == 0
    cap = capsys.readouterr()
    assert "hello from the job" in cap.out and "=== slicer run folder begin" not in cap.out
    assert json.loads((tmp_path / "again" / "summary.json").read_text()) == summary


def test_failed_job_follow_fetch_and_status(with_token, tmp_path, capsys):
    """Submit without --wait returns at once; `logs --follow --fetch` waits for the end and
    still brings back what a failed job wrote; `status` says FAILED."""
    rc = slicer(["submit", "--address", with_token.url, "--working-dir", str(tmp_path), "--entrypoint",
                 'mkdir -p "$SLICER_RUN_DIR" && echo partial > "$SLICER_RUN_DIR/notes.txt"; '
                 "echo about to fail; sleep 1; exit 3"])
    cap = capsys.readouterr()
    assert rc == 0
    job_id = cap.out.splitlines()[0].strip()
    assert slicer(["logs", job_id, "--address", with_token.url, "--follow", "--fetch",
                   "--out", str(tmp_path / "got")]) == 0
    assert "about to fail" in capsys.readouterr().out
    assert (tmp_path / "got" / "notes.txt").read_text() == "partial\n"
    assert slicer(["status", job_id, "--address", with_token.url]) == 0
    assert "FAILED" in capsys.readouterr().out
    # --wait maps the job's failure to a non-zero exit and says why.
    assert slicer(["submit", "--address", with_token.url, "--working-dir", str(tmp_path), "--entrypoint",
                   "exit 4", "--wait", "--timeout-s", "120"]) == 1
    assert "FAILED" in capsys.readouterr().err


def test_without_the_token_the_dashboard_refuses(head, monkeypatch, tmp_path, capsys):
    for k in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.ray/auth_token either
    assert slicer(["status", "raysubmit_x", "--address", head.url]) == 2
    err = capsys.readouterr().err
    assert "refused" in err and "auth_token" in err


def test_unknown_job_is_a_clear_error(with_token, capsys):
    assert slicer(["status", "raysubmit_doesnotexist", "--address", with_token.url]) == 2
    assert "raysubmit_doesnotexist" in capsys.readouterr().err


def test_head_binds_loopback_only(head):
    addrs = listen_addresses(head.pids())
    assert addrs == {"127.0.0.1"}, addrs
