"""`slicer bench <name>` benchmarks, one module each (see orchestrator/cli.py)."""
from __future__ import annotations

import argparse


def add_workload_overrides(p: argparse.ArgumentParser) -> None:
    """The options that change a benchmark's base workload (``workload_overrides``)."""
    p.add_argument("--requests", type=int, default=None, help="requests per device (default: the workload's)")
    p.add_argument("--max-new-tokens", type=int, default=None, help="tokens per request (default: the workload's)")
    p.add_argument("--model", default=None, help="override the workload's model")


def workload_overrides(args: argparse.Namespace) -> dict:
    """The given ``--requests`` / ``--max-new-tokens`` / ``--model`` as workload changes."""
    given = {"requests": args.requests, "max_new_tokens": args.max_new_tokens, "model": args.model}
    return {k: v for k, v in given.items() if v}
