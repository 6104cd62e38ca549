"""`slicer jobs`: the jobs of a cluster (id, state, run folder, start), newest first."""
from __future__ import annotations

HELP = "list the jobs submitted to a Ray cluster (id, state, run name, start time)"

import argparse  # noqa: E402
import sys  # noqa: E402


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--address", default=None, help="Ray dashboard URL (default as for `slicer submit`)")
    p.add_argument("--all", action="store_true", help="every job of the cluster, not only those `slicer submit` made")
    p.add_argument("--json", action="store_true", help="print the list as JSON on stdout")


def run(args: argparse.Namespace) -> int:
    import time

    from slicer.orchestrator import jobs as J
    from slicer.orchestrator import results as R

    try:
        rows = J.list_jobs(J.client(args.address), only_slicer=not args.all)
    except J.JobError as e:
        print(f"slicer jobs: {e}", file=sys.stderr)
        return 2
    if args.json:
        print(R.dumps(rows))
        return 0
    if not rows:
        print("no jobs" + ("" if args.all else " submitted by slicer (--all lists every job)"), file=sys.stderr)
        return 0
    w = max(len(r["job_id"]) for r in rows)
    print(f"{'JOB':<{w}}  {'STATE':<9}  {'STARTED (UTC)':<19}  RUN")
    for r in rows:
        start = (time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(r["start_time_ms"] / 1e3))
                 if r["start_time_ms"] else "-")
        print(f"{r['job_id']:<{w}}  {r['status']:<9}  {start:<19}  {r['metadata'].get('slicer_run_name', '-')}")
    return 0
