"""Ray Jobs: submit a workload to a real cluster, follow it, and bring its run folder back.

How results come back: the job's entrypoint is this module's wrapper,

    python -m slicer.orchestrator.jobs wrap --run-dir runs/<name> -- python -m slicer.orchestrator run ...

which runs the command (with ``SLICER_RUN_DIR`` set) and, when it exits, prints the run
folder as a gzipped tar in base64 lines between two marker lines at the end of the job's
logs. The logs are the one output a Ray job keeps that the client can read through the
same authenticated dashboard API, with no shared filesystem, object store access or
extra port; ``slicer submit --wait`` and ``slicer logs JOB --fetch`` decode it into
``runs/<name>/`` locally (checksummed, members checked against path traversal). Folders
over ``MAX_BUNDLE_BYTES`` come back as ``summary.json`` only.

Token authentication: ``JobSubmissionClient`` sends a token only when ``RAY_AUTH_MODE=token``
is set in the client's environment (Ray 2.60, ``get_auth_headers_if_auth_enabled``); we
send ``Authorization: Bearer <token>`` whenever a token is available (``RAY_AUTH_TOKEN``,
``RAY_AUTH_TOKEN_PATH``, ``~/.ray/auth_token``), so a user who ran
``ray get-auth-token --generate`` needs nothing else. Every HTTP call has a timeout.
"""
from __future__ import annotations

import argparse
import base64
import hashlib
import io
import os
import re
import shlex
import subprocess
import sys
import tarfile
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

BEGIN = "=== slicer run folder begin"
END = "=== slicer run folder end ==="
MAX_BUNDLE_BYTES = 32 << 20
"""Largest gzipped run folder put in the logs (the dashboard returns whole logs per call;
32 MiB of base64 is ~43 MiB of text, still one HTTP response)."""
LINE_CHARS = 120
TERMINAL = ("SUCCEEDED", "FAILED", "STOPPED")
DEFAULT_ADDRESS = "http://127.0.0.1:8265"
EXCLUDES = [".git", "runs", "__pycache__", "*.pyc", "*.egg-info", ".pytest_cache", ".hypothesis", ".venv"]
PACKAGES = ("orchestrator", "actors", "codec", "policies")


class JobError(RuntimeError):
    """A job could not be submitted, found or read (the message says which and why)."""


# ----------------------------------------------------------------------------- client


def auth_headers() -> dict[str, str]:
    """``Authorization`` header when a Ray auth token is available, else empty."""
    from slicer.orchestrator.cluster import find_token

    tok = find_token()
    return {"Authorization": f"Bearer {tok}"} if tok else {}


def normalize_address(address: str | None) -> str:
    """The dashboard URL: ``--address``, else ``RAY_API_SERVER_ADDRESS``/``RAY_ADDRESS`` when
    they are http(s) URLs, else the `slicer cluster up` cluster's, else
    ``http://127.0.0.1:8265`` (what ``ray dashboard clusters/<file>.yaml`` tunnels to).
    ``HOST:PORT`` gets ``http://``."""
    if not address:
        for var in ("RAY_API_SERVER_ADDRESS", "RAY_ADDRESS"):
            v = os.environ.get(var, "")
            if v.startswith(("http://", "https://")):
                address = v
                break
        else:
            from slicer.orchestrator.cluster import read_state

            address = (read_state() or {}).get("dashboard_url") or DEFAULT_ADDRESS
    if "://" not in address:
        address = "http://" + address
    if not address.startswith(("http://", "https://")):
        raise JobError(f"--address {address!r}: the Ray dashboard's URL is needed, e.g. http://HEAD:8265 "
                       f"(Jobs go through the dashboard, not ray:// or the GCS port)")
    return address.rstrip("/")


def client(address: str | None, timeout_s: float = 30.0):
    """A ``JobSubmissionClient`` whose every HTTP request times out after ``timeout_s``."""
    from ray.exceptions import AuthenticationError
    from ray.job_submission import JobSubmissionClient

    class _TimedClient(JobSubmissionClient):
        def _do_request(self, method, endpoint, **kwargs):  # requests has no default timeout
            kwargs.setdefault("timeout", timeout_s)
            return super()._do_request(method, endpoint, **kwargs)

    url = normalize_address(address)
    try:
        return _TimedClient(url, headers=auth_headers())
    except AuthenticationError as e:
        raise JobError(f"the Ray dashboard at {url} refused us ({str(e).splitlines()[0]}); put the cluster's "
                       f"token in ~/.ray/auth_token, RAY_AUTH_TOKEN_PATH or RAY_AUTH_TOKEN") from e
    except Exception as e:  # noqa: BLE001 - connection refused, timeout, not a dashboard
        raise JobError(f"cannot reach the Ray dashboard at {url}: {type(e).__name__}: {e}. Is the cluster up "
                       f"and the SSH tunnel open (ray dashboard clusters/<file>.yaml)? The address is the "
                       f"dashboard port (8265), not the GCS port (6379).") from e


# ----------------------------------------------------------------------------- submit


@dataclass(frozen=True)
class Submission:
    """What ``submit_workload`` sent."""

    job_id: str
    """Ray's submission id (``raysubmit_...``)."""
    run_name: str
    """Name of the run folder (``runs/<run_name>`` in the job and locally)."""
    entrypoint: str
    """The shell command the job runs."""
    working_dir: str
    """Local folder shipped as the job's working_dir."""


def run_name_for(workload: str | None, now: float | None = None) -> str:
    stem = re.sub(r"[^A-Za-z0-9_.-]+", "-", Path(workload).stem if workload else "job").strip("-") or "job"
    return f"{time.strftime('%Y%m%d-%H%M%S', time.gmtime(now))}-{stem}"


def stage_package(dest: Path) -> Path:
    """Copy the installed ``slicer`` packages into ``dest/slicer`` (what the job imports as
    ``slicer.codec`` ...), wherever they are installed from; returns that folder."""
    import importlib
    import shutil

    top = dest / "slicer"
    top.mkdir(parents=True, exist_ok=True)
    for name in PACKAGES:
        # __path__, not __file__: an editable install can surface a package as a
        # namespace package (no __file__).
        dirs = [Path(p) for p in importlib.import_module(f"slicer.{name}").__path__ if Path(p).is_dir()]
        if not dirs:
            raise JobError(f"cannot locate the slicer.{name} package to ship it to the cluster")
        shutil.copytree(dirs[0], top / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    return top


def runtime_env_for(working_dir: Path, staged: Path) -> dict:
    """Ship ``working_dir`` as the job's folder and the staged ``slicer`` package
    (``stage_package``) with ``py_modules``, so the job imports the same code as this
    client whether or not the nodes installed the project. The client's ``OTEL_*`` tracing
    variables travel as ``env_vars``: the job's driver and every actor it starts see them."""
    from slicer.actors.telemetry import otlp_env

    env = {"working_dir": str(working_dir), "excludes": list(EXCLUDES), "py_modules": [str(staged)]}
    env_vars = otlp_env()
    if env_vars:
        env["env_vars"] = env_vars
    return env


def build_entrypoint(run_dir: str, command: list[str]) -> str:
    return shlex.join([sys_python(), "-m", "slicer.orchestrator.jobs", "wrap", "--run-dir", run_dir, "--", *command])


def sys_python() -> str:
    # On the cluster, `python` is whatever the nodes' setup installed the project into.
    return "python"


def submit_workload(address: str | None, workload: str | None, *, working_dir: str | None = None,
                    entrypoint: str | None = None, extra_args: list[str] | None = None,
                    timeout_s: float = 120.0) -> Submission:
    """Submit ``slicer run WORKLOAD`` (or ``entrypoint``) as a Ray job; returns once Ray has
    it. The dashboard answers the submission only after starting the job's supervisor
    actor (a new worker process): 30 s timed out on a loaded 2-core machine, hence 120 s."""
    wd = Path(working_dir or os.getcwd()).resolve()
    if not wd.is_dir():
        raise JobError(f"--working-dir {str(wd)!r} is not a folder")
    name = run_name_for(workload if entrypoint is None else None)
    run_dir = f"runs/{name}"
    if entrypoint is None:
        if workload is None:
            raise JobError("give a WORKLOAD (a YAML file inside --working-dir) or --entrypoint")
        wl = Path(workload).resolve()
        if not wl.is_file():
            raise JobError(f"workload {workload!r} not found")
        try:
            rel = wl.relative_to(wd)
        except ValueError as e:
            raise JobError(f"workload {str(wl)!r} is outside --working-dir {str(wd)!r}: only that folder is "
                           f"shipped to the cluster; run from the project root or pass --working-dir") from e
        command = [sys_python(), "-m", "slicer.orchestrator", "run", str(PurePosixPath(*rel.parts)), "--address", "auto",
                   "--out", run_dir, *(extra_args or [])]
    else:
        command = ["bash", "-c", entrypoint]
    ep = build_entrypoint(run_dir, command)
    c = client(address, timeout_s)
    with tempfile.TemporaryDirectory(prefix="slicer-job-") as tmp:
        env = runtime_env_for(wd, stage_package(Path(tmp)))
        try:
            job_id = c.submit_job(entrypoint=ep, runtime_env=env,
                                  metadata={"slicer_run_name": name, "slicer_workload": str(workload or "")})
        except Exception as e:  # noqa: BLE001
            raise JobError(f"job submission to {normalize_address(address)} failed: {type(e).__name__}: {e}") from e
    return Submission(job_id=job_id, run_name=name, entrypoint=ep, working_dir=str(wd))


# ----------------------------------------------------------------------------- status / logs


def job_info(c, job_id: str) -> dict:
    try:
        info = c.get_job_info(job_id)
    except Exception as e:  # noqa: BLE001
        raise JobError(f"job {job_id!r}: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}") from e
    return {"job_id": job_id, "status": str(info.status), "message": info.message or "",
            "entrypoint": info.entrypoint, "start_time_ms": info.start_time, "end_time_ms": info.end_time,
            "metadata": dict(info.metadata or {})}


def list_jobs(c, only_slicer: bool = True) -> list[dict]:
    """The cluster's jobs as ``job_info`` dicts, newest first; ``only_slicer``: those
    `slicer submit` made (they carry ``slicer_run_name`` in their metadata)."""
    try:
        jobs = c.list_jobs()
    except Exception as e:  # noqa: BLE001
        raise JobError(f"listing jobs: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}") from e
    rows = [{"job_id": j.submission_id or j.job_id, "status": str(j.status), "message": j.message or "",
             "entrypoint": j.entrypoint, "start_time_ms": j.start_time, "end_time_ms": j.end_time,
             "metadata": dict(j.metadata or {})} for j in jobs]
    rows = [r for r in rows if r["job_id"] and (not only_slicer or "slicer_run_name" in r["metadata"])]
    return sorted(rows, key=lambda r: r["start_time_ms"] or 0, reverse=True)


def stop_job(c, job_id: str) -> bool:
    try:
        return bool(c.stop_job(job_id))
    except Exception as e:  # noqa: BLE001
        raise JobError(f"stopping job {job_id!r}: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}") from e


def job_logs(c, job_id: str) -> str:
    try:
        return c.get_job_logs(job_id)
    except Exception as e:  # noqa: BLE001
        raise JobError(f"logs of job {job_id!r}: {type(e).__name__}: {e}") from e


def follow(c, job_id: str, out=sys.stdout, poll_s: float = 1.0, timeout_s: float | None = None) -> dict:
    """Print the job's logs as they grow (run-folder lines left out) until it ends;
    returns its final info. Polls, so it works through any proxy and keeps timeouts."""
    printed = 0
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    while True:
        info = job_info(c, job_id)
        text = visible_logs(job_logs(c, job_id))
        if len(text) > printed:
            out.write(text[printed:])
            out.flush()
            printed = len(text)
        if info["status"] in TERMINAL:
            return info
        if deadline is not None and time.monotonic() > deadline:
            raise JobError(f"job {job_id} still {info['status']} after {timeout_s:.0f} s "
                           f"(it goes on running; `slicer status {job_id}` / `slicer logs {job_id} --follow`)")
        time.sleep(poll_s)


# ----------------------------------------------------------------------------- run folder in the logs


def pack_run_folder(run_dir: Path) -> tuple[str, bytes]:
    """``(what, tar.gz bytes)`` of ``run_dir``; only ``summary.json`` when the whole is too big."""
    def tar(files):
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w:gz") as t:
            for f in files:
                t.add(f, arcname=str(f.relative_to(run_dir)), recursive=False)
        return buf.getvalue()

    files = sorted(p for p in run_dir.rglob("*") if p.is_file() and not p.is_symlink())
    data = tar(files)
    if len(data) <= MAX_BUNDLE_BYTES:
        return "all", data
    return "summary-only", tar([p for p in files if p.name == "summary.json"])


def bundle_lines(name: str, what: str, data: bytes) -> list[str]:
    b64 = base64.b64encode(data).decode("ascii")
    head = f"{BEGIN} name={name} what={what} bytes={len(data)} sha256={hashlib.sha256(data).hexdigest()} ==="
    return [head, *(b64[i:i + LINE_CHARS] for i in range(0, len(b64), LINE_CHARS)), END]


_HEAD_RE = re.compile(re.escape(BEGIN) + r" name=(\S+) what=(\S+) bytes=(\d+) sha256=([0-9a-f]{64}) ===")


def find_bundle(logs: str) -> tuple[str, str, bytes] | None:
    """The last complete run folder in the logs: ``(name, what, tar.gz bytes)``; None if none.
    Raises JobError when one is there but damaged (truncated logs, wrong checksum)."""
    lines = logs.splitlines()
    starts = [i for i, ln in enumerate(lines) if ln.startswith(BEGIN)]
    if not starts:
        return None
    i = starts[-1]
    m = _HEAD_RE.fullmatch(lines[i].strip())
    if m is None:
        raise JobError(f"run folder header is malformed: {lines[i][:200]!r}")
    try:
        j = lines.index(END, i + 1)
    except ValueError as e:
        raise JobError("run folder in the logs is truncated (no end marker): the job may still be writing it") from e
    data = base64.b64decode("".join(ln.strip() for ln in lines[i + 1:j]), validate=True)
    if len(data) != int(m.group(3)) or hashlib.sha256(data).hexdigest() != m.group(4):
        raise JobError("run folder in the logs fails its size/sha256 check")
    return m.group(1), m.group(2), data


def visible_logs(logs: str) -> str:
    """The logs with the run-folder block replaced by one line."""
    out, skipping = [], False
    for ln in logs.splitlines(keepends=True):
        if ln.startswith(BEGIN):
            m = _HEAD_RE.fullmatch(ln.strip())
            size = m.group(3) if m else "?"
            out.append(f"[slicer: run folder {m.group(1) if m else '?'} in the logs ({size} bytes); "
                       f"`slicer logs JOB --fetch` writes it]\n")
            skipping = True
        elif skipping:
            if ln.rstrip("\n") == END:
                skipping = False
        else:
            out.append(ln)
    return "".join(out)


def unpack_bundle(data: bytes, dest: Path) -> list[Path]:
    """Extract a run-folder tar.gz into ``dest``: regular files and folders only, every
    path relative and inside ``dest`` (logs are input from the cluster, checked as such)."""
    dest.mkdir(parents=True, exist_ok=True)
    root = dest.resolve()
    written = []
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as t:
        for m in t.getmembers():
            p = PurePosixPath(m.name)
            if p.is_absolute() or ".." in p.parts or not (m.isfile() or m.isdir()):
                raise JobError(f"run folder member {m.name!r} refused (absolute, '..' or not a plain file)")
            target = (root / Path(*p.parts)).resolve()
            if root != target and root not in target.parents:
                raise JobError(f"run folder member {m.name!r} escapes {root}")
            if m.isdir():
                target.mkdir(parents=True, exist_ok=True)
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            src = t.extractfile(m)
            target.write_bytes(src.read() if src else b"")
            written.append(target)
    return written


def fetch_run_folder(logs: str, out: str | None = None, root: Path | None = None) -> Path | None:
    """Write the run folder found in ``logs`` to ``out`` (default ``runs/<name>`` under
    ``root`` or the cwd); None when the logs hold none."""
    found = find_bundle(logs)
    if found is None:
        return None
    name, _, data = found
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", name) or name in (".", ".."):
        raise JobError(f"run folder name {name!r} refused")
    dest = Path(out) if out else Path(root or Path.cwd()) / "runs" / name
    unpack_bundle(data, dest)
    return dest


# ----------------------------------------------------------------------------- job side


def _wrap(argv: list[str]) -> int:
    """Job side: run the command with SLICER_RUN_DIR set, then print the run folder."""
    p = argparse.ArgumentParser(prog="python -m slicer.orchestrator.jobs wrap")
    p.add_argument("--run-dir", required=True)
    p.add_argument("command", nargs=argparse.REMAINDER)
    a = p.parse_args(argv)
    cmd = a.command[1:] if a.command[:1] == ["--"] else a.command
    if not cmd:
        p.error("give the command after --")
    run_dir = Path(a.run_dir).resolve()
    env = dict(os.environ, SLICER_RUN_DIR=str(run_dir))
    sys.stdout.flush()
    rc = subprocess.call(cmd, env=env)
    if run_dir.is_dir() and any(run_dir.rglob("*")):
        what, data = pack_run_folder(run_dir)
        print("\n".join(bundle_lines(run_dir.name, what, data)), flush=True)
    else:
        print(f"[slicer: the job wrote no run folder at {run_dir}]", flush=True)
    return rc


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] != ["wrap"]:
        print("usage: python -m slicer.orchestrator.jobs wrap --run-dir DIR -- COMMAND...", file=sys.stderr)
        return 2
    return _wrap(argv[1:])


if __name__ == "__main__":
    sys.exit(main())


__all__ = ["JobError", "Submission", "auth_headers", "client", "submit_workload", "job_info", "job_logs",
           "list_jobs", "stop_job",
           "follow", "fetch_run_folder", "visible_logs", "find_bundle", "unpack_bundle", "pack_run_folder",
           "bundle_lines", "normalize_address", "runtime_env_for"]
