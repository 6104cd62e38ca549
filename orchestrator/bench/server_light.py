"""`slicer bench server-light`: server compute seconds under a split policy (SLICER by
default) against cloud-only on the same requests, for 1, 4 and 8 devices."""
from __future__ import annotations

HELP = "server compute seconds: SLICER policy vs cloud-only on the same requests, 1/4/8 devices (ratio, plans)"

import argparse  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402

from slicer.orchestrator.bench import add_workload_overrides, workload_overrides  # noqa: E402


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("workload", nargs="?", default=None, help="base workload (default: examples/multi_client.yaml)")
    p.add_argument("--devices", default="1,4,8", help="device counts, comma-separated (default 1,4,8)")
    p.add_argument("--policy", default="slicer", help="the policy compared with cloud-only (default slicer)")
    add_workload_overrides(p)
    p.add_argument("--scale-hidden", type=int, default=None,
                   help="run a random-weight copy of the model with this hidden size (intermediate scaled "
                        "alike) and memory budgets scaled by its size: a model whose compute, not per-call "
                        "overhead, dominates the server's time")
    p.add_argument("--address", default=None, help="an existing cluster instead of the embedded one")
    p.add_argument("--json", default=None, help="write the results as JSON here")


def run(args: argparse.Namespace) -> int:
    from slicer.actors.policy_actor import PolicyConfig
    from slicer.orchestrator.runner import run_many, scale_devices, variant
    from slicer.orchestrator.workload import REPO_ROOT, load_workload

    base = load_workload(args.workload or REPO_ROOT / "examples" / "multi_client.yaml")
    changes = workload_overrides(args)
    base = variant(base, codec=None, **changes)
    tmp = None
    if args.scale_hidden:
        import tempfile

        tmp = tempfile.TemporaryDirectory(prefix="slicer-scaled-")
        base = scaled_model_workload(base, args.scale_hidden, tmp.name)
    counts = [int(x) for x in args.devices.split(",") if x.strip()]
    runs = []
    for n in counts:
        wl = scale_devices(base, n)
        runs.append((n, args.policy, variant(wl, name=f"sl-{args.policy}-{n}", policy=PolicyConfig(name=args.policy))))
        runs.append((n, "cloud-only", variant(wl, name=f"sl-cloud-{n}", policy=PolicyConfig(name="cloud-only"))))
    outs = run_many([wl for _, _, wl in runs], address=args.address)
    rows = []
    for (n, pol, _), out in zip(runs, outs):
        s = out.summary
        plans = sorted({json.dumps(d["plan"], sort_keys=True) for d in s["devices"].values()})
        rows.append({"devices": n, "policy": pol, "server_compute_s": s["server"]["compute_s_total"],
                     "server_decode_s": s["server"].get("decode_s_total", 0.0),
                     "server_compute_cpu_s": s["server"].get("compute_cpu_s_total", 0.0),
                     "completed": s["totals"]["completed"], "requests": s["totals"]["requests"],
                     "tokens": s["totals"]["tokens"], "bytes_sent": s["totals"]["bytes_sent"],
                     "plans": [json.loads(p) for p in plans]})
    result = {"benchmark": "server-light", "model": base.model, "policy": args.policy, "rows": rows, "ratios": {}}
    print(f"server compute seconds, {args.policy} vs cloud-only, same requests (model {base.model}):")
    print(f"{'devices':>7}  {args.policy + ' s':>12}  {'cloud-only s':>12}  {'ratio':>6}  "
          f"{'+decode':>8}  {'CPU-s ratio':>11}  plans of {args.policy}")
    for n in counts:
        a = next(r for r in rows if r["devices"] == n and r["policy"] == args.policy)
        c = next(r for r in rows if r["devices"] == n and r["policy"] == "cloud-only")
        ratio = c["server_compute_s"] / a["server_compute_s"] if a["server_compute_s"] > 0 else float("inf")
        # With the payload decode counted as server work too (the split policy pays it).
        a_all = a["server_compute_s"] + a["server_decode_s"]
        c_all = c["server_compute_s"] + c["server_decode_s"]
        ratio_all = c_all / a_all if a_all > 0 else float("inf")
        # CPU seconds of the server's compute thread: robust when other processes load the cores.
        ratio_cpu = (c["server_compute_cpu_s"] / a["server_compute_cpu_s"]) if a["server_compute_cpu_s"] > 0 else float("inf")
        result["ratios"][str(n)] = ratio
        result.setdefault("ratios_with_decode", {})[str(n)] = ratio_all
        result.setdefault("ratios_cpu", {})[str(n)] = ratio_cpu
        plans = "; ".join(f"{p['mode']} l={p['split']} w={p['offload_step']} {p['codec']}" for p in a["plans"])
        print(f"{n:>7}  {a['server_compute_s']:>12.4f}  {c['server_compute_s']:>12.4f}  {ratio:>5.2f}x  "
              f"{ratio_all:>7.2f}x  {ratio_cpu:>10.2f}x  {plans}")
        if a["completed"] != a["requests"] or c["completed"] != c["requests"]:
            print(f"  WARNING: not every request completed ({a['completed']}/{a['requests']}, "
                  f"{c['completed']}/{c['requests']})", file=sys.stderr)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1, default=str)
    if tmp is not None:
        tmp.cleanup()
    return 0


def scaled_model_workload(wl, hidden: int, folder: str):
    """``wl`` on a random-weight copy of its model with ``hidden`` width (same layers,
    vocabulary and tokenizer), memory budgets scaled by the parameter ratio so the
    policy faces the same fraction of the model on each device."""
    import dataclasses
    import shutil
    from pathlib import Path

    from slicer.actors.models import load_model
    from slicer.actors.models.loading import resolve_config

    src = wl.model_ref()
    cfg = resolve_config(src).to_dict()
    old = load_model(src)
    ratio_int = cfg.get("intermediate_size", 4 * cfg["hidden_size"]) / cfg["hidden_size"]
    heads = cfg.get("num_attention_heads", 4)
    cfg.update(hidden_size=hidden, intermediate_size=int(round(hidden * ratio_int / 8)) * 8,
               head_dim=hidden // heads)
    new = load_model(cfg, seed=wl.seed)
    new.hf.save_pretrained(folder)
    for f in Path(src).glob("tokenizer*"):
        shutil.copy(f, folder)
    scale = sum(p.numel() for p in new.hf.parameters()) / sum(p.numel() for p in old.hf.parameters())
    groups = []
    for g in wl.devices:
        b = g.budgets
        if b.memory_mib is not None:
            b = dataclasses.replace(b, memory_mib=b.memory_mib * scale)
        groups.append(dataclasses.replace(g, budgets=b))
    print(f"scaled model: hidden {hidden}, {scale:.1f}x the parameters of {wl.model}; memory budgets x{scale:.1f}")
    return dataclasses.replace(wl, model=folder, devices=tuple(groups))
