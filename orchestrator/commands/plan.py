"""`slicer plan`: the split and codec a policy picks for a model, a device and a link.

Works from a model config alone (meta device, no weights), so it answers for models and
devices nobody here has, e.g.::

    slicer plan --model meta-llama/Meta-Llama-3-70B --device jetson-orin-agx \\
        --rate-mbps 20 --latency-ms 500 --memory-mib 32000 --tokens 256
"""
from __future__ import annotations

HELP = "the split, offload step and codec a policy picks for a model, device and link (no weights needed)"

import argparse
import json
import sys
from pathlib import Path


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="shipped config name, hub name, config.json/folder, or a profile .json "
                   "(a ModelProfile, or a measured profile from `slicer profile`)")
    p.add_argument("--device", required=True, help="device class from the catalog (policies/devices.yaml or --devices), "
                   "or a measured profile .json")
    p.add_argument("--devices", default=None, help="your own device catalog YAML (same fields as policies/devices.yaml)")
    p.add_argument("--server", default="h100", help="server device class for server time (default h100)")
    p.add_argument("--rate-mbps", type=float, required=True, help="link rate R in Mbit/s")
    from slicer.policies.link import (
        DEFAULT_BANDWIDTH_HZ,
        DEFAULT_EPSILON,
        DEFAULT_SNR,
        linear_to_db,
    )

    # the paper's defaults, from the one place the workload's link defaults come from too
    p.add_argument("--snr-db", type=float, default=linear_to_db(DEFAULT_SNR),
                   help=f"mean SNR γ in dB (default {linear_to_db(DEFAULT_SNR):g})")
    p.add_argument("--bandwidth-mhz", type=float, default=DEFAULT_BANDWIDTH_HZ / 1e6,
                   help=f"channel bandwidth W in MHz (default {DEFAULT_BANDWIDTH_HZ / 1e6:g})")
    p.add_argument("--epsilon", type=float, default=DEFAULT_EPSILON, help=f"outage target ε (default {DEFAULT_EPSILON:g})")
    p.add_argument("--latency-ms", type=float, required=True, help="latency budget D: per decode step (LLMs) or per inference")
    p.add_argument("--memory-mib", type=float, default=None, help="edge memory budget M in MiB (default: the device's memory)")
    p.add_argument("--tokens", type=int, default=128, help="tokens to generate (default 128)")
    p.add_argument("--prompt-tokens", type=int, default=0, help="prompt length (its features cross at the hand-off)")
    p.add_argument("--handoff-ms", type=float, default=None,
                   help="budget of the hand-off step, Eq. 5 (default: offload_step x --latency-ms)")
    p.add_argument("--ar-buffer-bytes", type=float, default=None, help="M_ar: cap on the hand-off payload in bytes (Eq. 6)")
    p.add_argument("--min-accuracy", type=float, default=None, help="lowest acceptable next-token agreement (with --accuracy)")
    p.add_argument("--accuracy", default=None, help="accuracy table JSON (rows: split, codec, next_token_agreement)")
    p.add_argument("--policy", default="slicer", help="slicer (default), opsc, cloud-only, edge-only, fixed-split, neurosurgeon, or all")
    p.add_argument("--front-precision", default=None,
                   help="edge weights precision (float16/bfloat16/int8/int4; default: the model's), or 'auto': "
                        "the model's, then int8, then int4 where the wider one meets no budget (Eq. 4)")
    p.add_argument("--opsc-objective", default="accuracy", choices=("accuracy", "edge"),
                   help="OPSC: most accurate front precision first (default) or deepest split over precisions")
    p.add_argument("--dtype", default=None, help="model dtype for a config (default: the config's own)")
    p.add_argument("--json", default=None, metavar="OUT", help="write the plan(s) as JSON to OUT ('-' for stdout)")


def load_model_profile(name: str, dtype: str | None = None):
    """A ``ModelProfile`` from a profile JSON or a config (via actors.models, meta device)."""
    from slicer.policies.profile import ModelProfile

    path = Path(name)
    if path.suffix == ".json" and path.is_file():
        doc = json.loads(path.read_text(encoding="utf-8"))
        if "model" in doc and "device" in doc:  # a measured profile from `slicer profile`
            return ModelProfile.from_json(json.dumps(doc["model"]))
        if "layers" in doc:
            return ModelProfile.from_json(json.dumps(doc))
    from slicer.actors.models import profile_from_config

    return profile_from_config(name, dtype=dtype)


def run(args: argparse.Namespace) -> int:
    from slicer.policies import (
        AccuracyTable,
        Budgets,
        LinkState,
        get_device,
        plan,
        policy_names,
    )

    try:
        device = get_device(args.device, args.devices)
        server = get_device(args.server, args.devices)
        model = load_model_profile(args.model, args.dtype)
        link = LinkState.from_mbps(args.rate_mbps, snr_db=args.snr_db, bandwidth_mhz=args.bandwidth_mhz, epsilon=args.epsilon)
        budgets = Budgets(
            latency_s=args.latency_ms / 1e3,
            memory_bytes=(args.memory_mib * 2**20) if args.memory_mib is not None else device.memory_bytes,
            new_tokens=args.tokens, prompt_tokens=args.prompt_tokens,
            ar_buffer_bytes=args.ar_buffer_bytes,
            handoff_latency_s=args.handoff_ms / 1e3 if args.handoff_ms is not None else None,
            min_accuracy=args.min_accuracy,
        )
        table = AccuracyTable.load(args.accuracy) if args.accuracy else None
        names = policy_names() if args.policy == "all" else [args.policy]
        opts = {"server": server}
        plans = []
        for name in names:
            kw = dict(opts)
            if args.front_precision and (name == "slicer" or (name in ("edge-only", "fixed-split", "neurosurgeon")
                                                              and args.front_precision.lower() != "auto")):
                kw["front_precision"] = args.front_precision
            if name == "opsc":
                kw["objective"] = args.opsc_objective
                if args.front_precision and args.front_precision.lower() != "auto":
                    kw["precisions"] = (args.front_precision,)
            plans.append(plan(name, model, device, link, budgets, table, **kw))
    except (ValueError, FileNotFoundError, OSError) as e:
        print(f"slicer plan: error: {e}", file=sys.stderr)
        return 2
    # --json -: stdout carries the JSON alone; the human-readable lines go to stderr
    out = sys.stderr if args.json == "-" else sys.stdout
    print(f"model {model.name} ({model.num_layers} units, {model.dtype}, {model.source}); device {device.name} "
          f"({device.kind}); server {server.name}; link {link.describe()} (P_o {link.outage_probability:.4f}, "
          f"{link.transmissions:g} transmissions for eps)", file=out)
    print(f"budgets: {args.latency_ms:g} ms per step, {budgets.memory_bytes / 2**20:,.0f} MiB, "
          f"{budgets.prompt_tokens} prompt + {budgets.new_tokens} new tokens", file=out)
    for p in plans:
        print(p.summary(), file=out)
    if args.json:
        doc = plans[0].to_dict() if len(plans) == 1 else [p.to_dict() for p in plans]
        text = json.dumps(doc, indent=1)
        if args.json == "-":
            print(text)
        else:
            Path(args.json).write_text(text + "\n", encoding="utf-8")
    return 0 if all(p.feasible for p in plans) or args.policy == "all" else 1
