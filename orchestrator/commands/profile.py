"""`slicer profile`: time a model's units and the codec on this machine; cache the result.

The result is a measured ``DeviceProfile`` (with the model's ``ModelProfile``) in one JSON
file, ``~/.cache/slicer/profiles/<model>-<device>-<dtype>-v1.json``; `slicer plan
--device <that file> --model <that file>` then plans from measured times. The measuring
itself is ``slicer.orchestrator.profiler``.
"""
from __future__ import annotations

HELP = "time each unit and the codec of a model on this machine; cache the measured device profile"

import argparse
import platform
import sys
import time
from pathlib import Path

from slicer.orchestrator.profiler import CLOCKS, DEFAULT_CODECS, measure_profile


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="model folder, hub name or shipped config (random weights)")
    p.add_argument("--device", default=None, help="name of this device class (default: this-machine-<host>)")
    p.add_argument("--dtype", default="float32", help="float32 (default), bfloat16 or float16")
    p.add_argument("--contexts", default="16,64,256", help="context lengths of the timed decode steps (comma list)")
    p.add_argument("--prefill-tokens", type=int, default=32, help="tokens of the timed prefill (default 32)")
    p.add_argument("--reps", type=int, default=15, help="timed rounds per point; the median is kept (default 15)")
    p.add_argument("--codecs", default=";".join(DEFAULT_CODECS),
                   help="codec specs to time, separated by ';'")
    p.add_argument("--threads", type=int, default=None, help="torch threads while timing (default: torch's own)")
    p.add_argument("--clock", default="wall", choices=sorted(CLOCKS),
                   help="wall (default: elapsed time) or cpu (CPU time of the timing thread; use with --threads 1 on a shared machine)")
    p.add_argument("--out", default=None, help="output JSON (default: the cache path)")
    p.add_argument("--force", action="store_true", help="re-measure even when a cached profile exists")


def run(args: argparse.Namespace) -> int:
    import torch

    from slicer.actors.models import load_model
    from slicer.actors.models.profiling import dtype_of
    from slicer.policies.devices import measured_path, save_measured

    try:
        dt = dtype_of(args.dtype)
        contexts = tuple(int(c) for c in args.contexts.split(",") if c.strip())
        specs = tuple(s.strip() for s in args.codecs.split(";") if s.strip())
    except ValueError as e:
        print(f"slicer profile: error: {e}", file=sys.stderr)
        return 2
    device = args.device or f"this-machine-{platform.node() or 'host'}"
    out = Path(args.out) if args.out else measured_path(args.model, device, str(dt).replace("torch.", ""))
    if out.exists() and not args.force:
        print(f"cached profile: {out} (use --force to re-measure)")
        return 0
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        model = load_model(args.model, dtype=dt)
    except Exception as e:  # noqa: BLE001 - unsupported architecture, missing folder, hub errors: one clear line
        print(f"slicer profile: cannot load {args.model!r}: {e}", file=sys.stderr)
        return 2
    t0 = time.perf_counter()
    print(f"slicer profile: timing {model.num_units} units at contexts {', '.join(map(str, contexts))} and "
          f"{len(specs)} codec setting(s), {args.reps} reps each (tens of seconds)...", file=sys.stderr, flush=True)
    prof, dev = measure_profile(model, device_name=device, contexts=contexts, prefill_tokens=args.prefill_tokens,
                                reps=args.reps, codec_specs=specs, model_name=args.model, clock=args.clock,
                                progress=lambda line: print(f"slicer profile: {line}", file=sys.stderr, flush=True))
    save_measured(out, prof, dev)
    m = dev.measured
    print(f"profiled {args.model} ({prof.num_layers} units, {prof.dtype}) on {device} in {time.perf_counter() - t0:.1f} s")
    for c, row in zip(m.contexts, m.unit_s):
        print(f"  decode step at context {c}: {sum(row) * 1e3:.3f} ms (units: " + ", ".join(f"{t * 1e3:.3f}" for t in row) + " ms)")
    for spec, n, t in m.codec:
        print(f"  encode {spec} {n} elements: {t * 1e3:.3f} ms")
    if m.codec_stages:
        print("  codec stages (s per 1, N, k, M...): " + "; ".join(f"{k} {v}" for k, v in m.codec_stages.items()))
        print(f"  {dev.description.rpartition('; ')[2]}")
    print(f"wrote {out}")
    return 0
