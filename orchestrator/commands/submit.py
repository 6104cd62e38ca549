"""`slicer submit WORKLOAD --address http://HEAD:8265`: run a workload on a real cluster
through Ray Jobs, print the job id; with ``--wait`` follow it and bring the run folder back."""
from __future__ import annotations

HELP = "submit a workload to a Ray cluster as a Ray job (prints the job id; --wait follows it and fetches the run folder)"

import argparse  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("workload", nargs="?", default=None,
                   help="workload YAML inside --working-dir (omit with --entrypoint)")
    p.add_argument("--address", default=None,
                   help="Ray dashboard URL (default: $RAY_API_SERVER_ADDRESS, else http://127.0.0.1:8265, "
                        "where `ray dashboard clusters/<file>.yaml` tunnels the head's dashboard)")
    p.add_argument("--working-dir", default=None,
                   help="folder shipped to the cluster as the job's working_dir (default: the cwd); the "
                        "workload and the files it names must be inside it")
    p.add_argument("--entrypoint", default=None,
                   help="run this shell command instead of `slicer run WORKLOAD` (it may write results "
                        "under $SLICER_RUN_DIR, which comes back like a run folder)")
    p.add_argument("--wait", action="store_true", help="follow the logs until the job ends, then fetch the run folder")
    p.add_argument("--out", default=None, help="with --wait: local run folder (default: runs/<name>/ under the cwd)")
    p.add_argument("--timeout-s", type=float, default=None, help="with --wait: give up waiting after this long")
    p.add_argument("--force", action="store_true", help="with --wait: write into an existing, non-empty --out folder")
    p.add_argument("--json", action="store_true", help="print the submission as JSON")
    p.add_argument("--run-args", default="",
                   help="extra arguments for `slicer run` on the cluster, one string (e.g. \"--no-trace\")")


def run(args: argparse.Namespace) -> int:
    import shlex

    from slicer.orchestrator import jobs as J
    from slicer.orchestrator import results as R

    extra = shlex.split(args.run_args)
    refused = R.refuse_existing(args.out, args.force) if args.wait else None
    if refused:
        print(f"slicer submit: {refused}", file=sys.stderr)
        return 2
    if args.workload and not args.entrypoint:
        # The cluster would find a bad field only after shipping, queueing and starting
        # the job: check it here, with the same loader `slicer run` uses there.
        from slicer.orchestrator.workload import WorkloadError, load_workload

        try:
            load_workload(args.workload)
        except (WorkloadError, FileNotFoundError, OSError) as e:
            print(f"slicer submit: {e}", file=sys.stderr)
            return 2
    try:
        sub = J.submit_workload(args.address, args.workload, working_dir=args.working_dir,
                                entrypoint=args.entrypoint, extra_args=extra)
    except J.JobError as e:
        print(f"slicer submit: {e}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps({"job_id": sub.job_id, "run_name": sub.run_name, "entrypoint": sub.entrypoint,
                          "working_dir": sub.working_dir}))
    else:
        print(sub.job_id)
        print(f"slicer submit: job {sub.job_id} submitted (run folder runs/{sub.run_name}); "
              f"`slicer status {sub.job_id}`, `slicer logs {sub.job_id} --follow --fetch`", file=sys.stderr)
    if not args.wait:
        return 0
    try:
        c = J.client(args.address)
        info = J.follow(c, sub.job_id, out=sys.stderr, timeout_s=args.timeout_s)
        dest = J.fetch_run_folder(J.job_logs(c, sub.job_id), out=args.out)
    except J.JobError as e:
        print(f"slicer submit: {e}", file=sys.stderr)
        return 1
    # Ray's failure message repeats the tail of the logs just printed: keep its first clause.
    why = info["message"].split(", last available logs")[0].strip() if info["status"] != "SUCCEEDED" else ""
    print(f"slicer submit: job {sub.job_id} {info['status']}" + (f": {why}" if why else ""), file=sys.stderr)
    if dest is not None:
        print(f"run folder: {dest}")
    return 0 if info["status"] == "SUCCEEDED" else 1
