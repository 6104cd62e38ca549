"""`slicer status JOB`: the state of a submitted job (PENDING, RUNNING, SUCCEEDED, FAILED, STOPPED)."""
from __future__ import annotations

HELP = "show the state of a job submitted with `slicer submit`"

import argparse  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("job_id", metavar="JOB", help="job id printed by `slicer submit`")
    p.add_argument("--address", default=None, help="Ray dashboard URL (default as for `slicer submit`)")
    p.add_argument("--json", action="store_true", help="print the job's info as JSON")


def run(args: argparse.Namespace) -> int:
    from slicer.orchestrator import jobs as J

    try:
        info = J.job_info(J.client(args.address), args.job_id)
    except J.JobError as e:
        print(f"slicer status: {e}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(info))
    else:
        line = f"{info['job_id']}: {info['status']}"
        if info["message"]:
            line += f" ({info['message']})"
        print(line)
    return 0
