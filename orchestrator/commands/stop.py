"""`slicer stop JOB`: stop a running job (Ray sends SIGTERM, then SIGKILL)."""
from __future__ import annotations

HELP = "stop a job submitted with `slicer submit`"

import argparse  # noqa: E402
import sys  # noqa: E402


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("job_id", metavar="JOB", help="job id printed by `slicer submit` (see `slicer jobs`)")
    p.add_argument("--address", default=None, help="Ray dashboard URL (default as for `slicer submit`)")


def run(args: argparse.Namespace) -> int:
    from slicer.orchestrator import jobs as J

    try:
        c = J.client(args.address)
        info = J.job_info(c, args.job_id)
        if info["status"] in J.TERMINAL:
            print(f"slicer stop: job {args.job_id} has already ended ({info['status']})", file=sys.stderr)
            return 0
        J.stop_job(c, args.job_id)
    except J.JobError as e:
        print(f"slicer stop: {e}", file=sys.stderr)
        return 2
    print(f"slicer stop: job {args.job_id} stopping (`slicer status {args.job_id}`)", file=sys.stderr)
    return 0
