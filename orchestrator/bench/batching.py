"""`slicer bench batching`: server throughput with 8 devices, batching on against off
(every step computed alone), the same requests, one cluster, measured side by side."""
from __future__ import annotations

HELP = "throughput with 8 devices: server batching on vs off (ratio; target >= 1.5x)"

import argparse  # noqa: E402
import json  # noqa: E402

from slicer.orchestrator.bench import add_workload_overrides, workload_overrides  # noqa: E402


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("workload", nargs="?", default=None, help="base workload (default: examples/multi_client.yaml)")
    p.add_argument("--devices", type=int, default=8, help="devices (default 8)")
    p.add_argument("--policy", default="cloud-only",
                   help="policy of every device (default cloud-only: every step reaches the server)")
    add_workload_overrides(p)
    p.add_argument("--repeats", type=int, default=1, help="on/off pairs, alternated (default 1)")
    p.add_argument("--address", default=None, help="an existing cluster instead of the embedded one")
    p.add_argument("--json", default=None, help="write the results as JSON here")


def run(args: argparse.Namespace) -> int:
    import dataclasses

    from slicer.actors.policy_actor import PolicyConfig
    from slicer.orchestrator.runner import run_many, scale_devices, variant
    from slicer.orchestrator.workload import REPO_ROOT, load_workload

    base = load_workload(args.workload or REPO_ROOT / "examples" / "multi_client.yaml")
    changes = workload_overrides(args)
    # No emulated link delay: it would put sleeps, not compute, on the critical path.
    wl = scale_devices(variant(base, policy=PolicyConfig(name=args.policy), **changes), args.devices)
    wl = variant(wl, devices=tuple(dataclasses.replace(g, emulation=dataclasses.replace(g.emulation, link=False, slowdown=1.0))
                                   for g in wl.devices))
    runs = []
    for i in range(args.repeats):
        for on in (True, False):
            runs.append((on, variant(wl, name=f"batching-{'on' if on else 'off'}-{i}",
                                     server=dataclasses.replace(wl.server, batching=on))))
    outs = run_many([w for _, w in runs], address=args.address)
    rows = []
    for (on, _), out in zip(runs, outs):
        s = out.summary
        rows.append({"batching": on, "tokens": s["totals"]["tokens"], "wall_s": s["wall_s"],
                     "tokens_per_s": s["totals"]["tokens_per_s"], "completed": s["totals"]["completed"],
                     "requests": s["totals"]["requests"], "batch_size_mean": s["server"]["batch_size_mean"],
                     "batch_size_max": s["server"]["batch_size_max"], "server_compute_s": s["server"]["compute_s_total"],
                     "latency_p50_ms": s["totals"]["latency_p50_ms"]})
    on = [r["tokens_per_s"] for r in rows if r["batching"]]
    off = [r["tokens_per_s"] for r in rows if not r["batching"]]
    ratio = (sum(on) / len(on)) / (sum(off) / len(off)) if off and sum(off) > 0 else float("inf")
    print(f"{args.devices} devices, policy {args.policy}, model {wl.model}, "
          f"{wl.requests} requests x {wl.max_new_tokens} tokens per device")
    print(f"{'batching':>8}  {'tok/s':>8}  {'wall s':>7}  {'mean batch':>10}  {'server s':>8}  {'p50 ms':>7}  done")
    for r in rows:
        print(f"{'on' if r['batching'] else 'off':>8}  {r['tokens_per_s']:>8.1f}  {r['wall_s']:>7.2f}  "
              f"{r['batch_size_mean']:>10.2f}  {r['server_compute_s']:>8.3f}  {r['latency_p50_ms']:>7.1f}  "
              f"{r['completed']}/{r['requests']}")
    print(f"throughput ratio on/off: {ratio:.2f}x (target >= 1.5x)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"benchmark": "batching", "devices": args.devices, "policy": args.policy, "rows": rows,
                       "ratio": ratio}, f, indent=1)
    return 0
