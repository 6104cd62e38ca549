"""Job plumbing without a cluster: the run folder's trip through the logs (round trip,
damage detected, hostile archives refused), addresses, runtime env and entrypoint."""
from __future__ import annotations

import io
import shlex
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from slicer.orchestrator import jobs as J

REPO = Path(__file__).resolve().parents[2]


def _run_folder(tmp_path: Path) -> Path:
    d = tmp_path / "runs" / "20260101-000000-demo"
    (d / "sub").mkdir(parents=True)
    (d / "summary.json").write_text('{"totals": {"failed": 0}}')
    (d / "sub" / "records.jsonl").write_bytes(bytes(range(256)) * 50)
    return d


def test_bundle_round_trip_through_noisy_logs(tmp_path):
    d = _run_folder(tmp_path)
    what, data = J.pack_run_folder(d)
    logs = "progress 1/2\nprogress 2/2\n" + "\n".join(J.bundle_lines(d.name, what, data)) + "\n"
    dest = J.fetch_run_folder(logs, root=tmp_path / "local")
    assert dest == tmp_path / "local" / "runs" / d.name
    for f in ("summary.json", "sub/records.jsonl"):
        assert (dest / f).read_bytes() == (d / f).read_bytes()
    vis = J.visible_logs(logs)
    assert vis.startswith("progress 1/2\nprogress 2/2\n") and "run folder 20260101-000000-demo" in vis
    assert "=== slicer" not in vis and len(vis.splitlines()) == 3


def test_no_bundle_means_none(tmp_path):
    assert J.fetch_run_folder("just logs\n", root=tmp_path) is None


def test_truncated_or_corrupt_bundle_is_an_error(tmp_path):
    d = _run_folder(tmp_path)
    lines = J.bundle_lines(d.name, *J.pack_run_folder(d))
    with pytest.raises(J.JobError, match="truncated"):
        J.find_bundle("\n".join(lines[:-1]))
    body = lines[1]
    flipped = ("B" if body[0] != "B" else "C") + body[1:]
    with pytest.raises(J.JobError, match="sha256"):
        J.find_bundle("\n".join([lines[0], flipped, *lines[2:]]))


def _hostile_tar(name: str, kind=tarfile.REGTYPE) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as t:
        info = tarfile.TarInfo(name)
        info.type = kind
        if kind == tarfile.SYMTYPE:
            info.linkname = "/etc/passwd"
        payload = b"x"
        info.size = len(payload) if kind == tarfile.REGTYPE else 0
        t.addfile(info, io.BytesIO(payload) if kind == tarfile.REGTYPE else None)
    return buf.getvalue()


@pytest.mark.parametrize("name,kind", [("../evil", tarfile.REGTYPE), ("/abs/evil", tarfile.REGTYPE),
                                       ("a/../../evil", tarfile.REGTYPE), ("link", tarfile.SYMTYPE)])
def test_hostile_archives_are_refused(tmp_path, name, kind):
    with pytest.raises(J.JobError, match="refused|escapes"):
        J.unpack_bundle(_hostile_tar(name, kind), tmp_path / "dest")
    assert not (tmp_path / "evil").exists()


def test_hostile_run_name_is_refused(tmp_path):
    data = _hostile_tar("summary.json")
    import hashlib

    logs = "\n".join([f"{J.BEGIN} name=.. what=all bytes={len(data)} sha256={hashlib.sha256(data).hexdigest()} ===",
                      __import__("base64").b64encode(data).decode(), J.END])
    with pytest.raises(J.JobError, match="refused"):
        J.fetch_run_folder(logs, root=tmp_path)


def test_big_run_folder_comes_back_as_summary_only(tmp_path, monkeypatch):
    d = _run_folder(tmp_path)
    monkeypatch.setattr(J, "MAX_BUNDLE_BYTES", 100)
    what, data = J.pack_run_folder(d)
    assert what == "summary-only"
    with tarfile.open(fileobj=io.BytesIO(data)) as t:
        assert t.getnames() == ["summary.json"]


@pytest.mark.parametrize("given,env,expected", [
    ("http://10.0.0.5:8265/", {}, "http://10.0.0.5:8265"),
    ("127.0.0.1:8265", {}, "http://127.0.0.1:8265"),
    (None, {"RAY_API_SERVER_ADDRESS": "https://head:443"}, "https://head:443"),
    (None, {"RAY_ADDRESS": "10.0.0.5:6379"}, "http://127.0.0.1:8265"),  # a GCS address is not the dashboard
])
def test_normalize_address(monkeypatch, tmp_path, given, env, expected):
    for k in ("RAY_API_SERVER_ADDRESS", "RAY_ADDRESS"):
        monkeypatch.delenv(k, raising=False)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    monkeypatch.setenv("SLICER_HOME", str(tmp_path))  # no `slicer cluster up` record
    assert J.normalize_address(given) == expected
    # with a `slicer cluster up` record, its dashboard is the default (not over an explicit one)
    (tmp_path / "cluster.json").write_text('{"id": "x", "address": "127.0.0.1:7", "dashboard_url": "http://127.0.0.1:9"}')
    assert J.normalize_address(given) == (expected if given or env.get("RAY_API_SERVER_ADDRESS") else "http://127.0.0.1:9")


def test_ray_client_address_is_refused():
    with pytest.raises(J.JobError, match="dashboard"):
        J.normalize_address("ray://head:10001")


def test_auth_header_only_with_a_token(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    for k in ("RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH"):
        monkeypatch.delenv(k, raising=False)
    assert J.auth_headers() == {}
    monkeypatch.setenv("RAY_AUTH_TOKEN", "abc")
    assert J.auth_headers() == {"Authorization": "Bearer abc"}


def test_runtime_env_ships_the_slicer_namespace(tmp_path):
    staged = J.stage_package(tmp_path / "stage")
    env = J.runtime_env_for(REPO, staged)
    assert env["working_dir"] == str(REPO) and env["py_modules"] == [str(staged)]
    assert ".git" in env["excludes"] and "runs" in env["excludes"]
    assert staged.name == "slicer" and sorted(p.name for p in staged.iterdir()) == sorted(J.PACKAGES)
    assert (staged / "codec" / "__init__.py").is_file() and not list(staged.rglob("__pycache__"))
    # what a job's interpreter sees: `slicer.codec` from the staged folder, and no bare `codec`
    code = "import slicer.codec as c, sys; print(c.__file__)"
    out = subprocess.run([sys.executable, "-I", "-c", f"import sys; sys.path.insert(0, {str(staged.parent)!r}); {code}"],
                         capture_output=True, text=True, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().startswith(str(staged))


def test_workload_outside_working_dir_is_refused_before_contacting_anyone(tmp_path):
    wl = tmp_path / "w.yaml"
    wl.write_text("name: w\n")
    with pytest.raises(J.JobError, match="outside --working-dir"):
        J.submit_workload("http://127.0.0.1:1", str(wl), working_dir=str(REPO))
    with pytest.raises(J.JobError, match="not found"):
        J.submit_workload("http://127.0.0.1:1", str(tmp_path / "nope.yaml"), working_dir=str(tmp_path))


def test_unreachable_dashboard_is_a_clear_error():
    with pytest.raises(J.JobError, match="cannot reach the Ray dashboard at http://127.0.0.1:1"):
        J.client("http://127.0.0.1:1", timeout_s=2)


def test_wrapper_runs_the_command_and_prints_its_run_folder(tmp_path):
    script = "import os, pathlib; d = pathlib.Path(os.environ['SLICER_RUN_DIR']); d.mkdir(parents=True); " \
             "(d / 'summary.json').write_text('{\"ok\": 1}'); print('inner done'); raise SystemExit(3)"
    p = subprocess.run([sys.executable, "-m", "slicer.orchestrator.jobs", "wrap", "--run-dir", "runs/x-1", "--",
                        sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=60,
                       env={**__import__("os").environ, "PYTHONPATH": str(REPO)})
    assert p.returncode == 3, p.stderr  # the command's exit code is the job's
    assert "inner done" in p.stdout
    dest = J.fetch_run_folder(p.stdout, root=tmp_path / "local")
    assert (dest / "summary.json").read_text() == '{"ok": 1}' and dest.name == "x-1"


def test_entrypoint_is_shell_quoted():
    ep = J.build_entrypoint("runs/a b", ["python", "-m", "slicer.orchestrator", "run", "ex/it's.yaml"])
    assert shlex.split(ep)[-5:] == ["python", "-m", "slicer.orchestrator", "run", "ex/it's.yaml"]
    assert shlex.split(ep)[:6] == ["python", "-m", "slicer.orchestrator.jobs", "wrap", "--run-dir", "runs/a b"]


def test_runtime_env_carries_the_otel_variables(tmp_path, monkeypatch):
    for k in [k for k in __import__("os").environ if k.startswith("OTEL_")]:
        monkeypatch.delenv(k)
    assert "env_vars" not in J.runtime_env_for(tmp_path, tmp_path)
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4318")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_HEADERS", "authorization=Bearer x")
    assert J.runtime_env_for(tmp_path, tmp_path)["env_vars"] == {
        "OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318", "OTEL_EXPORTER_OTLP_HEADERS": "authorization=Bearer x"}


def test_submit_checks_the_workload_before_contacting_the_cluster(tmp_path, capsys):
    """A bad field is named locally: the unreachable dashboard is never asked (its error
    would be 'cannot reach the Ray dashboard')."""
    from slicer.orchestrator.cli import main

    (tmp_path / "w.yaml").write_text("name: w\nmodel: tiny\nrequests: -3\n")
    rc = main(["submit", str(tmp_path / "w.yaml"), "--address", "http://127.0.0.1:1", "--working-dir", str(tmp_path)])
    err = capsys.readouterr().err
    assert rc == 2 and "cannot reach" not in err
    assert "requests" in err, err


@pytest.mark.parametrize("argv", [["run", "--in-process"], ["logs", "raysubmit_x", "--fetch"],
                                  ["submit", "--wait", "--entrypoint", "true"], ["sweep", "--predict-only"]])
def test_out_refuses_an_existing_folder_without_force(tmp_path, capsys, argv):
    from slicer.orchestrator.cli import main

    out = tmp_path / "out"
    out.mkdir()
    (out / "summary.json").write_text("{}")
    rc = main([*argv, "--out", str(out), "--address", "http://127.0.0.1:1"] if argv[0] in ("logs", "submit")
              else [*argv, "--out", str(out)])
    assert rc == 2 and "exists and is not empty" in capsys.readouterr().err
    assert (out / "summary.json").read_text() == "{}"


@pytest.mark.parametrize("argv", [["jobs"], ["stop", "raysubmit_x"], ["status", "raysubmit_x"]])
def test_job_commands_name_an_unreachable_dashboard(capsys, argv):
    from slicer.orchestrator.cli import main

    assert main([*argv, "--address", "http://127.0.0.1:1"]) == 2
    assert "cannot reach the Ray dashboard at http://127.0.0.1:1" in capsys.readouterr().err


def test_version():
    out = subprocess.run([sys.executable, "-m", "slicer.orchestrator", "--version"], capture_output=True, text=True)
    from importlib.metadata import version

    assert out.returncode == 0 and out.stdout.strip() == f"slicer {version('slicer')}"
