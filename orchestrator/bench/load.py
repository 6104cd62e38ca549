"""`slicer bench load`: many devices, hundreds of short requests against one server;
nothing may be lost. Reports request latency p50/p99 and throughput (generated tokens
per second end to end, and the server's steps per second), and the server's batching.

Each device keeps one request in flight (the runner's driver), so ``--devices`` is the
concurrency. No emulated link or slowdown: the load is the real one of this machine.
"""
from __future__ import annotations

HELP = "load: 16 devices, hundreds of short requests, nothing lost; latency p50/p99, tokens/s"

import argparse
import json
import math
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from slicer.actors.protocol import RequestRecord


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("workload", nargs="?", default=None, help="base workload (default: examples/multi_client.yaml)")
    p.add_argument("--devices", type=int, default=16, help="devices, all at once (default 16)")
    p.add_argument("--requests", type=int, default=320, help="requests in all, spread over the devices (default 320)")
    p.add_argument("--max-new-tokens", type=int, default=4, help="tokens per request (default 4: short generations)")
    p.add_argument("--policy", default=None, help="policy of every device (default: the workload's)")
    p.add_argument("--model", default=None, help="override the workload's model")
    p.add_argument("--address", default=None, help="an existing cluster instead of the embedded one")
    p.add_argument("--json", default=None, help="write the results as JSON here")


def percentile(xs: list[float], q: float) -> float | None:
    """Nearest-rank percentile (``q`` in [0, 100]) of ``xs``; None when empty."""
    if not xs:
        return None
    s = sorted(xs)
    k = max(0, min(len(s) - 1, math.ceil(q / 100.0 * len(s)) - 1))
    return s[k]


def load_report(expected: list[str], records: list[RequestRecord], wall_s: float, server: dict) -> dict:
    """The bench's figures from a run's records: ``lost`` counts requests with no record
    at all (a dropped request), ``failed`` those whose record says why they failed."""
    got = {r.request_id for r in records}
    ok = [r for r in records if r.ok]
    lat_ms = [1000.0 * r.latency_s for r in ok]
    tokens = sum(r.new_tokens for r in ok)
    steps = sum((server.get("steps_by_device") or {}).values())
    return {
        "requests": len(expected), "completed": len(ok), "failed": len(records) - len(ok),
        "lost": len([rid for rid in expected if rid not in got]),
        "duplicates": len(records) - len(got),
        "p50_ms": _r(percentile(lat_ms, 50)), "p99_ms": _r(percentile(lat_ms, 99)),
        "max_ms": _r(max(lat_ms) if lat_ms else None),
        "tokens": tokens, "wall_s": round(wall_s, 3),
        "tokens_per_s": round(tokens / wall_s, 2) if wall_s > 0 else None,
        "server_steps_per_s": round(steps / wall_s, 2) if wall_s > 0 else None,
        "server_compute_s": server.get("compute_s_total"),
        "batch_size_mean": server.get("batch_size_mean"), "batch_size_max": server.get("batch_size_max"),
        "errors": sorted({str(r.error)[:200] for r in records if not r.ok})[:10],
    }


def _r(x: float | None) -> float | None:
    return None if x is None else round(x, 2)


def run(args: argparse.Namespace) -> int:
    import dataclasses

    from slicer.actors.policy_actor import PolicyConfig
    from slicer.orchestrator.runner import (
        make_requests,
        run_workload,
        scale_devices,
        variant,
    )
    from slicer.orchestrator.workload import REPO_ROOT, WorkloadError, load_workload

    if args.devices < 1 or args.requests < args.devices:
        raise WorkloadError(f"--devices={args.devices} and --requests={args.requests}: need devices >= 1 and "
                            "requests >= devices")
    base = load_workload(args.workload or REPO_ROOT / "examples" / "multi_client.yaml")
    changes = {"max_new_tokens": args.max_new_tokens, "name": "bench-load"}
    if args.model:
        changes["model"] = args.model
    if args.policy:
        changes["policy"] = PolicyConfig(name=args.policy)
    wl = scale_devices(variant(base, **changes), args.devices)
    # Requests spread evenly: the first (requests % devices) devices get one more.
    per, extra = divmod(args.requests, args.devices)
    groups, k = [], 0
    for g in wl.devices:
        counts = [per + (1 if k + j < extra else 0) for j in range(g.count)]
        k += g.count
        # one group per request count keeps device ids unique via the group name
        for c in sorted(set(counts)):
            n = counts.count(c)
            groups.append(dataclasses.replace(g, count=n, requests=c, link_schedule=(),
                                              name=f"{g.name or g.device_class}-{c}r",
                                              emulation=dataclasses.replace(g.emulation, link=False, slowdown=1.0)))
    wl = variant(wl, devices=tuple(groups), server=dataclasses.replace(wl.server, max_sessions=max(64, 2 * args.devices)))
    expected = [r.request_id for rs in make_requests(wl, wl.model_ref()).values() for r in rs]
    out = run_workload(wl, address=args.address, progress=None, write=False, trace=False)
    rep = {"devices": args.devices, **load_report(expected, out.records, out.summary["wall_s"], out.summary["server"]),
           "max_new_tokens": wl.max_new_tokens, "model": wl.model,
           "policy": wl.policy.name, "modes": sorted({str(r.mode) for r in out.records})}
    print(f"{rep['devices']} devices, {rep['requests']} requests x {wl.max_new_tokens} tokens, model {wl.model}, "
          f"policy {rep['policy']} (modes {', '.join(rep['modes'])})")
    print(f"completed {rep['completed']}, failed {rep['failed']}, lost {rep['lost']}; latency p50 {rep['p50_ms']} ms, "
          f"p99 {rep['p99_ms']} ms; {rep['tokens_per_s']} tokens/s, server {rep['server_steps_per_s']} steps/s, "
          f"batch mean {rep['batch_size_mean']} max {rep['batch_size_max']} (wall {rep['wall_s']} s)")
    for e in rep["errors"]:
        print(f"  error: {e}")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(rep, f, indent=2)
    return 0 if rep["lost"] == 0 and rep["failed"] == 0 else 1
