"""`slicer run --address` against a cluster WITHOUT token authentication while a token
file is present (``~/.ray/auth_token`` and ``RAY_AUTH_TOKEN_PATH``): the driver follows the
cluster, not the file. The same run exports its spans over OTLP/HTTP to a receiver on
127.0.0.1, which must hear from at least 3 services (server, policy, edges): the driver's
``OTEL_*`` variables travel to the actors through the job's runtime_env."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from tests.orchestrator.conftest import write_tiny_job

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]


class Receiver:
    """A minimal OTLP/HTTP trace receiver: decodes each POST /v1/traces body as an
    ExportTraceServiceRequest and keeps (service.name, span name) pairs."""

    def __init__(self):
        from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
            ExportTraceServiceRequest,
        )

        self.spans: list[tuple[str, str]] = []
        self.bad: list[str] = []
        outer = self

        class H(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 - http.server's name
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                try:
                    req = ExportTraceServiceRequest.FromString(body)
                    for rs in req.resource_spans:
                        svc = next((a.value.string_value for a in rs.resource.attributes if a.key == "service.name"), "")
                        for ss in rs.scope_spans:
                            outer.spans.extend((svc, s.name) for s in ss.spans)
                except Exception as e:  # noqa: BLE001
                    outer.bad.append(f"{self.path}: {e}")
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *a):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture(scope="module")
def noauth_cluster():
    from slicer.orchestrator.cluster import LocalCluster

    lc = LocalCluster(edge_classes=["laptop-cpu", "jetson-orin-nano"], edge_slots=4, auth="disabled", connect=False)
    with lc:
        yield lc
    assert not lc.leftover_pids, f"cluster processes left behind: {lc.leftover_pids}"


def test_run_address_on_a_noauth_cluster_with_a_token_file_exports_otlp(noauth_cluster, tmp_path):
    write_tiny_job(tmp_path, "authjob", ("laptop-cpu", "jetson-orin-nano"), 3)
    home = tmp_path / "home"
    (home / ".ray").mkdir(parents=True)
    (home / ".ray" / "auth_token").write_text("b" * 64)  # as `clusters/README.md` step 1 leaves it
    (tmp_path / "tok").write_text("c" * 64)
    rx = Receiver()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "OTEL_"))}
    env.update(HOME=str(home), RAY_AUTH_TOKEN_PATH=str(tmp_path / "tok"), PYTHONPATH=str(REPO),
               OTEL_EXPORTER_OTLP_ENDPOINT=rx.url, OTEL_BSP_SCHEDULE_DELAY="200")
    try:
        p = subprocess.run([sys.executable, "-m", "slicer.orchestrator", "run", "wl.yaml", "--address",
                            noauth_cluster.address, "--out", str(tmp_path / "run"), "--quiet"],
                           cwd=tmp_path, env=env, capture_output=True, text=True, timeout=400)
    finally:
        rx.close()
    assert p.returncode == 0, p.stderr[-4000:]
    assert "Missing authorization" not in p.stderr and "Traceback" not in p.stderr, p.stderr[-3000:]
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["totals"]["completed"] == 2 and summary["totals"]["failed"] == 0
    assert not rx.bad, rx.bad
    services = {svc for svc, _ in rx.spans}
    assert len(services) >= 3, (services, len(rx.spans))
    assert {"slicer-server", "slicer-policy"} <= services
    assert any(s.startswith("slicer-edge-") for s in services)
    # the same spans went to the run folder too: every exported span name is a traced hop
    local = {json.loads(line)["name"] for line in (tmp_path / "run" / "traces.jsonl").read_text().splitlines()}
    assert {name for _, name in rx.spans} <= local
