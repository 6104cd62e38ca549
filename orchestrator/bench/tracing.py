"""`slicer bench tracing`: what tracing costs. The multi-client example with tracing on
against off, the same requests on one cluster, alternated on/off so drift hits both."""
from __future__ import annotations

HELP = "tokens/s of the multi-client example with tracing on vs off (target: under 5% cost)"

import argparse
import json


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("workload", nargs="?", default=None, help="workload (default: examples/multi_client.yaml)")
    p.add_argument("--repeats", type=int, default=3, help="on/off pairs, alternated (default 3)")
    p.add_argument("--requests", type=int, default=None, help="requests per device (default: the workload's)")
    p.add_argument("--max-new-tokens", type=int, default=None, help="tokens per request (default: the workload's)")
    p.add_argument("--json", default=None, help="write the results as JSON here")


def run(args: argparse.Namespace) -> int:
    import statistics

    from slicer.orchestrator.cluster import LocalCluster
    from slicer.orchestrator.runner import run_many, variant
    from slicer.orchestrator.workload import REPO_ROOT, load_workload

    wl = load_workload(args.workload or REPO_ROOT / "examples" / "multi_client.yaml")
    changes = {k: v for k, v in (("requests", args.requests), ("max_new_tokens", args.max_new_tokens)) if v}
    wl = variant(wl, **changes)
    per_class = max(sum(g.count for g in wl.devices if g.device_class == c) for c in wl.device_classes())
    rows = []
    with LocalCluster(edge_classes=sorted(wl.device_classes()), edge_slots=max(16, per_class)):
        # The first run on a fresh cluster pays warm-up (worker start, model load): it ran at
        # 88 tok/s against 200-270 for the rest (bench run at 10:56), so it is discarded.
        run_many([variant(wl, name="tracing-warmup")], trace=False)
        for i in range(args.repeats):
            for on in ((True, False) if i % 2 == 0 else (False, True)):
                out = run_many([variant(wl, name=f"tracing-{'on' if on else 'off'}-{i}")], trace=on)[0]
                t = out.summary["totals"]
                rows.append({"tracing": on, "tokens_per_s": t["tokens_per_s"], "tokens": t["tokens"],
                             "completed": t["completed"], "requests": t["requests"],
                             "latency_p50_ms": t["latency_p50_ms"]})
    on = statistics.median(r["tokens_per_s"] for r in rows if r["tracing"])
    off = statistics.median(r["tokens_per_s"] for r in rows if not r["tracing"])
    cost = 1.0 - on / off if off else float("nan")
    print(f"workload {wl.name}: {sum(g.count for g in wl.devices)} devices, {wl.requests} requests x "
          f"{wl.max_new_tokens} tokens per device, {args.repeats} on/off pairs")
    for r in rows:
        print(f"  tracing {'on ' if r['tracing'] else 'off'}  {r['tokens_per_s']:8.1f} tok/s  "
              f"p50 {r['latency_p50_ms']:7.1f} ms  {r['completed']}/{r['requests']} done")
    print(f"median tokens/s on {on:.1f}, off {off:.1f}: tracing costs {100 * cost:.1f}% (target < 5%)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"benchmark": "tracing", "rows": rows, "tokens_per_s_on": on, "tokens_per_s_off": off,
                       "cost_fraction": cost}, f, indent=1)
    return 0
