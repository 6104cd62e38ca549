"""Reproduce SLICER's Fig. 2 (right): server time against the number of edge devices,
the SLICER policy against cloud-only, on the same requests.

For each device count (default 1, 2, 4, 8, 16) two workloads run one after the other on
ONE local Ray cluster (``slicer.orchestrator.runner.run_many``: a server node and one node per
edge class, actors placed by labels): the same devices, prompts, request count and tokens,
once planned by ``slicer`` and once by ``cloud-only``. The server's compute seconds
(``Server.stats()['compute_s_total']``: decode + its units for every batched step) are
measured per run; the figure is their ratio cloud-only / SLICER per device count, with
the plans the policy chose.

The devices are heterogeneous classes from the catalog (raspberry-pi-5, jetson-orin-nano)
with memory budgets below the model's size, standing in for edge devices that cannot hold
a Llama-2-7B (the paper's setting): the policy then splits as deep as the budget allows.
All processes share this machine's CPU, so the budgets are stated, not real, and the
server's seconds are this CPU's. ``--backend inprocess`` runs the same plain classes in
this process without Ray (one request at a time: no cross-device batching); ``--quick``
uses it.

    python examples/repro_server_time.py            # Ray, 1-16 devices (several minutes)
    python examples/repro_server_time.py --quick    # in-process, 1-2 devices (seconds)
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import repro_common as C

NAME = "server_time"
PROMPTS = ["def __init__(self, name):", "import os\nimport sys\n\n\ndef main(",
           "class Queue:\n    def put(self, item", "    for i in range(len(",
           "def parse_args(argv=None):\n    parser = ", "    return self._"]
#: Device groups (class, per-token latency budget ms, memory budget as a fraction of the
#: model's weight bytes, link Mbit/s, SNR dB). Neither class may hold the whole model (as an
#: edge device cannot hold Llama-2-7B in the paper's Fig. 2): the policy splits as deep as
#: the budget allows (KV cache and codec buffers count too).
GROUPS = (
    ("raspberry-pi-5", 200.0, 0.45, 20.0, 15.0),
    ("jetson-orin-nano", 100.0, 0.75, 50.0, 20.0),
)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="in-process, 1 and 2 devices, short requests")
    p.add_argument("--devices", default=None, help="device counts (default 1,2,4,8,16; quick 1,2)")
    p.add_argument("--backend", choices=("ray", "inprocess"), default=None, help="default ray (quick: inprocess)")
    p.add_argument("--model", default=None, help="model folder (default examples/models/slicer-tiny, else stories260k)")
    p.add_argument("--requests", type=int, default=None, help="requests per device (default 2; quick 1)")
    p.add_argument("--max-new-tokens", type=int, default=None, help="tokens per request (default 24; quick 8)")
    p.add_argument("--groups", default=None,
                   help="device classes to use, comma-separated, from: " + ", ".join(g[0] for g in GROUPS)
                   + " (default all; one class = one split point, so the server's batches are not split by ℓ)")
    p.add_argument("--replot", action="store_true", help="re-render README.md and the PNG from OUT/results.json")
    p.add_argument("--out", type=Path, default=None,
                   help=f"results folder (default examples/results/{NAME}; with --quick, {NAME}-quick)")
    return p.parse_args(argv)


def weights_mib(model: str) -> float:
    from slicer.actors.models import profile_from_config

    prof = profile_from_config(model)
    return prof.front_param_bytes(prof.num_layers) / 2**20


def base_workload(model: str, prompts, requests: int, tokens: int, groups=GROUPS):
    from slicer.orchestrator.workload import parse_workload

    w = weights_mib(model)
    devices = [{"class": cls, "count": 1, "link": {"rate_mbps": rate, "snr_db": snr},
                "budgets": {"latency_ms": lat, "memory_mib": round(frac * w, 3)}}
               for cls, lat, frac, rate, snr in groups]
    raw = {"name": "fig2-right", "model": model, "inputs": {"prompts": prompts}, "devices": devices,
           "policy": "slicer", "requests": requests, "max_new_tokens": tokens, "seed": 0,
           "server": {"max_batch": 16, "batch_window_ms": 2}}
    return parse_workload(raw, base_dir=str(C.REPO))


def pick_model(arg: str | None):
    """(folder, prompts): text prompts when the model has a tokenizer, else token ids."""
    folder = Path(arg) if arg else (C.SLICER_TINY if (C.SLICER_TINY / "config.json").exists() else C.STORIES260K)
    if (folder / "tokenizer.json").exists() or (folder / "tokenizer_config.json").exists():
        return folder, PROMPTS
    # stories260k ships no tokenizer: prompts are id sequences (BOS = 1, then ids < 512).
    return folder, [[1, 30, 40 + i, 80 + 7 * i, 200 + i] for i in range(len(PROMPTS))]


def run_all(args, folder: Path, prompts) -> tuple[list[dict], dict]:
    from slicer.actors.policy_actor import PolicyConfig
    from slicer.orchestrator.runner import (
        run_inprocess,
        run_many,
        scale_devices,
        variant,
    )

    base = base_workload(str(folder), prompts, args.requests, args.max_new_tokens, args.group_specs)
    runs = []
    for n in args.counts:
        wl = scale_devices(base, n)
        for pol in ("slicer", "cloud-only"):
            runs.append((n, pol, variant(wl, name=f"fig2-{pol}-{n}", policy=PolicyConfig(name=pol))))
    t0 = time.perf_counter()
    if args.backend == "ray":
        outs = run_many([wl for _, _, wl in runs], progress=sys.stderr)
    else:
        from slicer.actors.models import load_model

        model = load_model(str(folder))
        # One discarded run first: the first forward passes of a fresh process pay lazy
        # initialisation, which would be charged to whichever policy ran first.
        run_inprocess(variant(scale_devices(base, 1), name="warm-up", policy=PolicyConfig(name="cloud-only")), model=model)
        outs = [run_inprocess(wl, model=model) for _, _, wl in runs]
    wall = time.perf_counter() - t0
    rows = []
    for (n, pol, _), out in zip(runs, outs):
        s = out.summary
        plans = sorted({json.dumps(d["plan"], sort_keys=True) for d in s["devices"].values()})
        classes = {}
        for d in s["devices"].values():
            p = d["plan"] or {}
            classes.setdefault(d["class"], f"{p.get('mode')} l={p.get('split')} {p.get('codec')} {p.get('front_precision')}")
        rows.append({"devices": n, "policy": pol, "server_compute_s": s["server"]["compute_s_total"],
                     "completed": s["totals"]["completed"], "requests": s["totals"]["requests"],
                     "tokens": s["totals"]["tokens"], "bytes_sent": s["totals"]["bytes_sent"],
                     "batch_size_mean": s["server"]["batch_size_mean"], "wall_s": s["wall_s"],
                     "plans": "; ".join(f"{k}: {v}" for k, v in sorted(classes.items())),
                     "plan_dicts": [json.loads(p) for p in plans]})
    return rows, {"wall_s": wall}


def ratios(rows: list[dict]) -> list[dict]:
    out = []
    for n in sorted({r["devices"] for r in rows}):
        a = next(r for r in rows if r["devices"] == n and r["policy"] == "slicer")
        c = next(r for r in rows if r["devices"] == n and r["policy"] == "cloud-only")
        out.append({"devices": n, "slicer_server_s": a["server_compute_s"], "cloud_server_s": c["server_compute_s"],
                    "ratio_cloud_over_slicer": (c["server_compute_s"] / a["server_compute_s"]
                                                if a["server_compute_s"] > 0 else float("inf")),
                    "tokens_slicer": a["tokens"], "tokens_cloud": c["tokens"],
                    "batch_mean_slicer": a["batch_size_mean"], "batch_mean_cloud": c["batch_size_mean"],
                    "all_completed": a["completed"] == a["requests"] and c["completed"] == c["requests"],
                    "slicer_plans": a["plans"]})
    return out


def plot(rat: list[dict], path: Path, backend: str, model: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    n = [r["devices"] for r in rat]
    ax.plot(n, [r["cloud_server_s"] for r in rat], "-o", label="cloud-only (EC)")
    ax.plot(n, [r["slicer_server_s"] for r in rat], "-s", label="SLICER policy")
    ax.set_xscale("log", base=2)
    ax.set_xticks(n, [str(x) for x in n])
    ax.set_xlabel("edge devices")
    ax.set_ylabel("server compute, s (MEASURED, this CPU)")
    ax.set_title("cumulative server time, same requests", fontsize=9)
    ax.legend(fontsize=8)
    ax2.bar([str(x) for x in n], [r["ratio_cloud_over_slicer"] for r in rat], color="C2")
    for i, r in enumerate(rat):
        ax2.text(i, r["ratio_cloud_over_slicer"], f"{r['ratio_cloud_over_slicer']:.2f}x", ha="center", va="bottom", fontsize=8)
    ax2.set_xlabel("edge devices")
    ax2.set_ylabel("cloud-only / SLICER server time (MEASURED)")
    ax2.set_title("server time spared (paper: up to 4.4x, Llama-2-7B)", fontsize=9)
    fig.suptitle(f"Fig. 2 right on {model} ({backend}); device memory budgets EMULATED", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def markdown(rows, rat, args, folder: Path, wall: float, env: str | None = None) -> str:
    w = weights_mib(str(folder))
    groups = "; ".join(f"{cls}: latency budget {lat:g} ms/token, memory budget {frac * w:.2f} MiB ({frac:g} of the "
                       f"model's {w:.2f} MiB of weights), link {rate:g} Mbit/s at {snr:g} dB"
                       for cls, lat, frac, rate, snr in args.group_specs)
    backend = ("the local Ray cluster (orchestrator.runner.run_many: one embedded cluster, a server node and a node "
               "per edge class; edge, server and policy actors placed by labels)" if args.backend == "ray" else
               "the runtime's plain classes in this process (orchestrator.runner.run_inprocess; requests one at a "
               "time, so no cross-device batching)")
    return "\n".join([
        "# Server time against the number of edge devices (SLICER Fig. 2 right)\n",
        C.provenance(
            "server compute seconds of every run (decode + server units of every step, batched), tokens, bytes, "
            "batch sizes, on this machine's CPU",
            "the plans: the policy chose each device's split, codec and precision from the model's profile, the "
            "device catalog's analytic figures for each class and the budgets",
            "the devices' memory budgets (below the model's size, standing in for devices that cannot hold the "
            "model) and their classes: every device is a process on this CPU; links are not delayed (transfer "
            "time does not enter server compute)"),
        (f"\nModel {folder.name}; devices spread in turn over: {groups}. {args.requests} request(s) per device, "
        f"{args.max_new_tokens} new tokens each, greedy; the same prompts per device index under both policies. "
        f"Backend: {backend}. Environment: {env or C.environment()}; wall time {wall:.0f} s.\n"),
        C.md_table(rat, ["devices", "cloud_server_s", "slicer_server_s", "ratio_cloud_over_slicer", "tokens_cloud",
                         "tokens_slicer", "batch_mean_cloud", "batch_mean_slicer", "slicer_plans"],
                   ["devices", "cloud-only server s", "SLICER server s", "ratio", "tokens (cloud)", "tokens (SLICER)",
                    "mean batch (cloud)", "mean batch (SLICER)", "SLICER plans per class"]),
        ("\n**On one shared CPU** the edge actors compute (units [0, ℓ) and the encode) at the same time as the "
         "server, on the same two cores, while cloud-only edges only send token ids: the server's wall-clock compute "
         "seconds then include time its thread waits for the CPU, more so under SLICER, and the server groups a "
         "batch by split point (two classes, two splits: two forward calls per batch where cloud-only makes one). "
         "Where this table shows SLICER above cloud-only, compare the in-process run "
         "(`--backend inprocess`: edges and server never run at once, no batching), which measures the server's "
         "own work per step. On a real cluster the devices do not share the server's CPU.\n"
         if args.backend == "ray" else ""),
        ("\nThe paper reports up to 4.4x less server time for Llama-2-7B on BoolQ. Here the ratio is bounded by the "
        "share of the model's compute the devices' memory budgets leave to the server (units [ℓ, n) against all "
        "of them), plus the cloud-only server's share of the prompt; all processes share one CPU, so absolute "
        "seconds are not a GPU server's."),
        "",
    ])


def main(argv=None) -> int:
    args = parse_args(argv)
    args.backend = args.backend or ("inprocess" if args.quick else "ray")
    args.out = args.out or C.RESULTS / (NAME + ("-quick" if args.quick else "-inprocess" if args.backend == "inprocess" else ""))
    args.counts = [int(x) for x in (args.devices or ("1,2" if args.quick else "1,2,4,8,16")).split(",") if x.strip()]
    args.requests = args.requests or (1 if args.quick else 2)
    args.max_new_tokens = args.max_new_tokens or (8 if args.quick else 24)
    import torch

    torch.set_num_threads(1)
    names = [g.strip() for g in (args.groups or ",".join(g[0] for g in GROUPS)).split(",") if g.strip()]
    unknown = [g for g in names if g not in {x[0] for x in GROUPS}]
    if unknown or not names:
        print(f"--groups {args.groups!r}: allowed {', '.join(g[0] for g in GROUPS)}", file=sys.stderr)
        return 2
    args.group_specs = tuple(g for g in GROUPS if g[0] in names)
    folder, prompts = pick_model(args.model)
    if args.replot:
        saved = json.loads((args.out / "results.json").read_text())
        args.backend, args.counts = saved["backend"], saved["counts"]
        args.group_specs = tuple(g for g in GROUPS if g[0] in saved.get("groups", names))
        args.requests = saved.get("requests", args.requests)
        args.max_new_tokens = saved.get("max_new_tokens", args.max_new_tokens)
        text = markdown(saved["runs"], saved["ratios"], args, folder, saved["wall_s"], saved.get("environment"))
        (args.out / "README.md").write_text(text, encoding="utf-8")
        plot(saved["ratios"], args.out / "server_time.png", args.backend, folder.name)
        print(f"re-rendered {args.out}/README.md and server_time.png from results.json")
        return 0
    if not (folder / "config.json").exists():
        print(f"no model at {folder} (train slicer-tiny: python examples/train_tiny_llama.py)", file=sys.stderr)
        return 2
    print(f"server time vs devices {args.counts} on {folder.name}, backend {args.backend}", flush=True)
    rows, info = run_all(args, folder, prompts)
    rat = ratios(rows)
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    C.write_csv([{k: v for k, v in r.items() if k != "plan_dicts"} for r in rows], out / "runs.csv")
    C.write_csv(rat, out / "server_time.csv")
    (out / "results.json").write_text(json.dumps({"quick": args.quick, "backend": args.backend, "model": folder.name,
                                                   "counts": args.counts, "groups": [g[0] for g in args.group_specs],
                                                   "environment": C.environment(),
                                                   "requests": args.requests,
                                                   "max_new_tokens": args.max_new_tokens, "labels": C.LABELS, "runs": rows,
                                                   "ratios": rat, **info}, indent=1, default=str))
    (out / "README.md").write_text(markdown(rows, rat, args, folder, info["wall_s"]), encoding="utf-8")
    plot(rat, out / "server_time.png", args.backend, folder.name)
    print(f"{'devices':>7} {'cloud s':>9} {'SLICER s':>9} {'ratio':>6}  plans")
    for r in rat:
        print(f"{r['devices']:>7} {r['cloud_server_s']:>9.3f} {r['slicer_server_s']:>9.3f} "
              f"{r['ratio_cloud_over_slicer']:>5.2f}x  {r['slicer_plans']}")
    print(f"\nwrote {out}/README.md, server_time.csv, runs.csv, results.json, server_time.png "
          f"({info['wall_s']:.0f} s). Server seconds MEASURED; plans PREDICTED by the policy; device memory budgets "
          "EMULATED.")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
