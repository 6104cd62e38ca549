"""`slicer logs JOB [--follow] [--fetch]`: a submitted job's output; ``--fetch`` writes the
run folder the job put at the end of its logs to ``runs/<name>/`` (or ``--out``)."""
from __future__ import annotations

HELP = "print a submitted job's logs (--follow until it ends; --fetch writes its run folder locally)"

import argparse  # noqa: E402
import sys  # noqa: E402


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("job_id", metavar="JOB", help="job id printed by `slicer submit`")
    p.add_argument("--address", default=None, help="Ray dashboard URL (default as for `slicer submit`)")
    p.add_argument("--follow", "-f", action="store_true", help="keep printing until the job ends")
    p.add_argument("--fetch", action="store_true", help="write the job's run folder locally")
    p.add_argument("--out", default=None, help="with --fetch: local run folder (default: runs/<name>/)")
    p.add_argument("--force", action="store_true", help="with --fetch: write into an existing, non-empty --out folder")
    p.add_argument("--raw", action="store_true", help="print the logs as they are (run folder lines included)")


def run(args: argparse.Namespace) -> int:
    from slicer.orchestrator import jobs as J
    from slicer.orchestrator import results as R

    refused = R.refuse_existing(args.out, args.force) if args.fetch else None
    if refused:
        print(f"slicer logs: {refused}", file=sys.stderr)
        return 2
    try:
        c = J.client(args.address)
        if args.follow:
            J.follow(c, args.job_id, out=sys.stdout)
            logs = J.job_logs(c, args.job_id)
        else:
            logs = J.job_logs(c, args.job_id)
            sys.stdout.write(logs if args.raw else J.visible_logs(logs))
        if args.fetch:
            dest = J.fetch_run_folder(logs, out=args.out)
            if dest is None:
                print(f"slicer logs: job {args.job_id} has no run folder in its logs (yet)", file=sys.stderr)
                return 1
            print(f"run folder: {dest}", file=sys.stderr)
    except J.JobError as e:
        print(f"slicer logs: {e}", file=sys.stderr)
        return 2
    return 0
