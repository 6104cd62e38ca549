"""`slicer run [WORKLOAD]`: run a workload on an embedded local Ray cluster (or an
existing one with ``--address``), print a summary and write the run folder.

The server's limits can be set on the command line: one flag per field of
``ServerConfig`` (``--max-batch``, ``--batch-window-ms``, ``--max-kv-mib``...),
derived from its declaration (``slicer.actors.fields``: type, bounds, doc), each
overriding the workload's ``server:`` value."""
from __future__ import annotations

HELP = "run a workload (default: examples/quickstart.yaml) on an embedded local Ray cluster or --address"

import argparse  # noqa: E402
import sys  # noqa: E402


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("workload", nargs="?", default=None,
                   help="workload YAML (default: examples/quickstart.yaml of the installed project)")
    p.add_argument("--address", default=None,
                   help="use an existing Ray cluster (auto, HOST:PORT, ray://HOST:PORT) instead of starting one")
    p.add_argument("--out", default=None, help="run folder (default: runs/<YYYYmmdd-HHMMSS>-<name>/ under the cwd)")
    p.add_argument("--no-trace", action="store_true", help="turn tracing off (no traces.jsonl)")
    p.add_argument("--in-process", action="store_true",
                   help="no Ray: run the plain classes in this process, one request at a time (debugging)")
    p.add_argument("--quiet", action="store_true", help="no per-request progress lines")
    p.add_argument("--force", action="store_true", help="write into an existing, non-empty --out folder")
    p.add_argument("--json", action="store_true",
                   help="print the run's summary as JSON on stdout (progress and messages go to stderr)")
    from slicer.actors.fields import add_flags
    from slicer.actors.server_config import ServerConfig

    add_flags(p.add_argument_group("server limits (override the workload's server: section)"), ServerConfig,
              section="server")


def with_overrides(wl, args: argparse.Namespace):
    """``wl`` with the server flags given on the command line (each already checked
    against its field's bounds as it was parsed)."""
    import dataclasses

    from slicer.actors.fields import given_flags
    from slicer.actors.server_config import ServerConfig

    given = given_flags(args, ServerConfig)
    return dataclasses.replace(wl, server=dataclasses.replace(wl.server, **given)) if given else wl


def run(args: argparse.Namespace) -> int:
    import contextlib
    import os

    from slicer.orchestrator import results as R
    from slicer.orchestrator.workload import (
        DEFAULT_WORKLOAD,
        WorkloadError,
        load_workload,
    )

    path = args.workload or str(DEFAULT_WORKLOAD)
    refused = R.refuse_existing(args.out, args.force)
    if refused:
        print(f"slicer run: {refused}", file=sys.stderr)
        return 2
    try:
        wl = with_overrides(load_workload(path), args)
    except WorkloadError as e:
        print(f"slicer run: {e}", file=sys.stderr)
        return 2
    progress = None if args.quiet else sys.stderr
    if os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") and not args.no_trace:
        from slicer.actors.telemetry import (
            otlp_exporter_available,
            warn_missing_exporter,
        )

        if not otlp_exporter_available():
            warn_missing_exporter("this machine")
    # --json: stdout carries the summary alone; anything else printed meanwhile (workers'
    # forwarded output included) goes to stderr.
    to_stderr = contextlib.redirect_stdout(sys.stderr) if args.json else contextlib.nullcontext()
    try:
        with to_stderr:
            out = _execute(args, wl, progress)
    except (WorkloadError, FileNotFoundError, OSError) as e:
        print(f"slicer run: {e}", file=sys.stderr)
        return 2
    except Exception as e:  # placement errors, timeouts: one clear line, no traceback wall
        from slicer.actors.models.families import UnsupportedModelError
        from slicer.orchestrator.cluster import ClusterError

        # isinstance, not the class name: an actor's error arrives as a RayTaskError that
        # is also an instance of its cause's class
        if isinstance(e, (ClusterError, TimeoutError, UnsupportedModelError)):
            print(f"slicer run: {type(e).__name__}: {e}", file=sys.stderr)
            return 1
        raise
    rc = 0 if out.summary["totals"]["failed"] == 0 else 1
    if args.json:
        print(R.dumps({**out.summary, "run_dir": str(out.run_dir)}))
        return rc
    print(R.format_table(out.summary))
    sample = next((r for r in out.records if r.ok and r.text is not None), None)
    if sample is not None:
        print(f"\nsample ({sample.request_id}, {sample.mode} l={sample.split}, {sample.codec}): {sample.text!r}")
    print(f"\nrun folder: {out.run_dir}")
    return rc


def _execute(args: argparse.Namespace, wl, progress):
    from slicer.orchestrator import results as R

    if args.in_process:
        from slicer.orchestrator.runner import run_inprocess

        out = run_inprocess(wl, progress=progress)
        out.run_dir = R.new_run_dir(wl.name, args.out)
        R.write_run(out.run_dir, wl.to_dict(), out.records, out.decisions, out.load, out.summary)
        return out
    from slicer.orchestrator.runner import run_workload

    return run_workload(wl, address=args.address, out=args.out, trace=not args.no_trace, progress=progress)
