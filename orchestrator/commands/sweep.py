"""`slicer sweep`: run a grid of plans on one model; CSV, Pareto front and plot.

    slicer sweep --model examples/models/slicer-tiny --out runs/sweep
    slicer sweep --model M --splits 1,3,5 --sparsities 0.5,0.75,0.9 --bits "8;4;8/2" \\
                 --codecs lossless,int8,fp16 --modes split,local-then-offload --offload-steps 2,8 \\
                 --devices raspberry-pi-5,jetson-orin-nano --link-mbps 20 [--task FILE]

Fidelity (next-token agreement with the unsplit model, perplexity) and bits per element
are measured here; latency is predicted per device class by the policies' cost model and
also measured on this machine (edge and server halves, per token). See
``slicer.orchestrator.evaluation.sweep``.
"""
from __future__ import annotations

HELP = "sweep splits x codec settings x AR modes on one model: CSV, Pareto front, plot"

import argparse
import json
import sys
from pathlib import Path

DEFAULT_MODEL = "examples/models/slicer-tiny"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=DEFAULT_MODEL, help=f"model folder or hub name (default {DEFAULT_MODEL})")
    p.add_argument("--tokenizer", help="tokenizer folder (default: the model's; without one, text is sampled from the model)")
    p.add_argument("--text", help="held-out text for fidelity (default: the model folder's heldout.txt, else sampled)")
    p.add_argument("--task", help="task file: score task accuracy instead of fidelity")
    p.add_argument("--limit", type=int, help="task items to use")
    p.add_argument("--splits", help="split units, comma separated (default: 1, middle, last block)")
    p.add_argument("--codecs", default="lossless,int8,fp16", help="codec specs run as given, comma separated")
    p.add_argument("--sparsities", default="0.5,0.75,0.9", help="SLICER sparsities crossed with --bits")
    p.add_argument("--bits", default="8;4", help="SLICER q_bit values or fixed lists (8/2), ';' separated")
    p.add_argument("--modes", default="split,local-then-offload", help="AR modes: split, local-then-offload")
    p.add_argument("--offload-steps", default="8", help="offload steps w (offload mode), comma separated")
    p.add_argument("--front-bits", default="none", help="edge weight precisions: none (model dtype), 8, 4; comma separated")
    p.add_argument("--devices", default="raspberry-pi-5,jetson-orin-nano", help="device classes for predicted latency")
    p.add_argument("--link-mbps", default="20", help="link rates for predicted latency, comma separated")
    p.add_argument("--snr-db", type=float, default=10.0, help="mean link SNR (Rayleigh ε-outage model)")
    p.add_argument("--bandwidth-mhz", type=float, default=10.0,
                   help="channel bandwidth; rates well above W*log2(1+SNR) never meet the outage target (inf latency)")
    p.add_argument("--predict-only", action="store_true",
                   help="run nothing: plans of a model not at hand (e.g. llama-3-70b, codestral-22b) from its config, "
                        "fidelity from --accuracy or the policies' prior")
    p.add_argument("--accuracy", help="JSONL of measured agreement rows (accuracy.jsonl of an earlier sweep) for --predict-only")
    p.add_argument("--latency-budget-ms", type=float, default=100.0, help="per-token budget D (feasibility column)")
    p.add_argument("--prompt-tokens", type=int, default=32, help="prefill tokens per window")
    p.add_argument("--score-tokens", type=int, default=32, help="scored tokens per window")
    p.add_argument("--windows", type=int, default=2, help="text windows per configuration")
    p.add_argument("--objectives", default="fidelity:max,bits_per_element:min,predicted_step_ms:min",
                   help="Pareto objectives NAME:max|min (fields of the CSV)")
    p.add_argument("--out", default=None,
                   help="output folder (sweep.csv, front.csv, sweep.png, sweep.json; default runs/<time>-sweep)")
    p.add_argument("--force", action="store_true", help="write into an existing, non-empty --out folder")


def _list(s: str, cast, name: str, sep: str = ","):
    try:
        return tuple(cast(x.strip()) for x in s.split(sep) if x.strip())
    except ValueError:
        raise SystemExit(f"slicer sweep: --{name} {s!r} is not a {sep!r}-separated list of {cast.__name__}")


def _front_bits(s: str) -> int | None:
    if s.lower() in ("none", "fp", "model"):
        return None
    if s in ("8", "4"):
        return int(s)
    raise ValueError(s)


def run(args: argparse.Namespace) -> int:
    import time

    from slicer.orchestrator import results as R

    refused = R.refuse_existing(args.out, args.force)
    if refused:
        print(f"slicer sweep: {refused}", file=sys.stderr)
        return 2
    if args.out is None:
        args.out = f"runs/{time.strftime('%Y%m%d-%H%M%S')}-sweep"
    return _run(args)


def _run(args: argparse.Namespace) -> int:
    import torch

    from slicer.actors.models import load_model
    from slicer.codec import CodecConfig, CodecError
    from slicer.orchestrator.evaluation.pareto import parse_objectives
    from slicer.orchestrator.evaluation.scorers import load_tokenizer
    from slicer.orchestrator.evaluation.sweep import (
        SweepGrid,
        SweepSettings,
        plot,
        run_sweep,
        sampled_ids,
        write_csv,
    )
    from slicer.orchestrator.evaluation.tasks import TaskFormatError, load_task

    torch.set_num_threads(1)  # the machine's cores are shared; timings are per token anyway
    if args.predict_only:
        return _predict_only(args)
    model_path = Path(args.model)
    if args.model == DEFAULT_MODEL and not model_path.exists():
        print(f"slicer sweep: {DEFAULT_MODEL} does not exist; train it (python examples/train_tiny_llama.py) "
              "or pass --model", file=sys.stderr)
        return 2
    model = load_model(args.model)
    n = model.num_units
    splits = _list(args.splits, int, "splits") if args.splits else tuple(sorted({1, n // 2, n - 2}))
    grid = SweepGrid(splits=splits, codecs=_list(args.codecs, str, "codecs"),
                     sparsities=_list(args.sparsities, float, "sparsities"), bits=_list(args.bits, str, "bits", ";"),
                     modes=_list(args.modes, str, "modes"), offload_steps=_list(args.offload_steps, int, "offload-steps"),
                     front_bits=_list(args.front_bits, _front_bits, "front-bits"))
    for m in grid.modes:
        if m not in ("split", "local-then-offload"):
            print(f"slicer sweep: --modes has {m!r}: allowed split, local-then-offload", file=sys.stderr)
            return 2
    try:
        from slicer import codec

        probe = torch.randn(1, 4, int(getattr(model.config, "hidden_size", 64)))  # (1, T, H): fail before the long run
        for spec in grid.codec_specs():
            codec.encode(probe, CodecConfig.parse(spec))
        objectives = parse_objectives(args.objectives)
    except (CodecError, ValueError) as e:
        print(f"slicer sweep: {e}", file=sys.stderr)
        return 2
    settings = SweepSettings(devices=_list(args.devices, str, "devices"), links_mbps=_list(args.link_mbps, float, "link-mbps"),
                             snr_db=args.snr_db, bandwidth_mhz=args.bandwidth_mhz,
                             latency_budget_ms=args.latency_budget_ms, prompt_tokens=args.prompt_tokens,
                             score_tokens=args.score_tokens, windows=args.windows, objectives=objectives)
    tokenizer = None
    try:
        tokenizer = load_tokenizer(args.tokenizer or args.model)
    except ValueError as e:
        if args.task or args.text:
            print(f"slicer sweep: {e}", file=sys.stderr)
            return 2
    task = text_ids = None
    source = ""
    if args.task:
        try:
            task = load_task(args.task)
        except (TaskFormatError, FileNotFoundError) as e:
            print(f"slicer sweep: {e}", file=sys.stderr)
            return 2
        source = f"task {task.name}"
    else:
        need = settings.windows * (settings.prompt_tokens + settings.score_tokens)
        text = Path(args.text) if args.text else model_path / "heldout.txt"
        if tokenizer is not None and text.exists():
            text_ids = tokenizer.encode(text.read_text(encoding="utf-8"))
            source = f"held-out text {text}"
        else:
            text_ids = sampled_ids(model, need, seed=0)
            source = "text sampled from the unsplit model (no tokenizer or text given)"
    print(f"sweep of {model.name} ({n} units) on {source}: {len(grid.configs())} configurations x "
          f"{len(settings.devices)} device classes")
    rows = run_sweep(model, grid, settings, text_ids=text_ids, task=task, tokenizer=tokenizer, task_limit=args.limit)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    write_csv(rows, out / "sweep.csv")
    write_csv([r for r in rows if r.on_front], out / "front.csv")
    plot(rows, out / "sweep.png", title=f"{model.name}: {metric_note(rows)} measured on {source}; latency predicted")
    from slicer.orchestrator.evaluation.sweep import accuracy_rows

    acc = accuracy_rows(rows, model.num_units)
    if acc:
        (out / "accuracy.jsonl").write_text("".join(json.dumps(r) + "\n" for r in acc), encoding="utf-8")
    meta = {"model": model.name, "source": source, "grid": grid.__dict__, "settings": settings.__dict__,
            "measured": ["fidelity", "perplexity", "bits_per_element", "payload_bytes_per_token",
                         "measured_edge_ms_per_token", "measured_server_ms_per_token"],
            "predicted": ["predicted_step_ms", "predicted_handoff_ms", "predicted_server_ms",
                          "predicted_payload_bytes_per_token", "feasible"]}
    (out / "sweep.json").write_text(json.dumps(meta, indent=2, default=str) + "\n", encoding="utf-8")
    _print_fronts(rows, settings)
    print(f"wrote {out / 'sweep.csv'}, {out / 'front.csv'}, {out / 'sweep.png'}")
    return 0


def metric_note(rows) -> str:
    return rows[0].metric if rows else "fidelity"


def _print_fronts(rows, settings) -> None:
    import math

    for link in settings.links_mbps:
        if any(r.link_mbps == link and math.isinf(r.predicted_step_ms) for r in rows):
            print(f"note: at {link:g} Mbit/s some plans have infinite predicted latency: the rate is beyond what a "
                  f"{settings.bandwidth_mhz:g} MHz channel at {settings.snr_db:g} dB carries within the outage "
                  "target (raise --bandwidth-mhz or --snr-db)")
    for dev in settings.devices:
        for link in settings.links_mbps:
            sub = [r for r in rows if r.device == dev and r.link_mbps == link]
            n_bad = sum(not r.feasible for r in sub)
            if sub and n_bad == len(sub):
                binding = sorted({v for r in sub for v in r.violations.split(";") if v})
                print(f"no front on {dev} at {link:g} Mbit/s: all {len(sub)} plans are infeasible "
                      f"(budgets missed: {', '.join(binding) or '?'})")
                continue
            print(f"front on {dev} at {link:g} Mbit/s ({n_bad} of {len(sub)} plans infeasible, never on a front):")
            for r in sub:
                if not r.on_front:
                    continue
                print(f"  split={r.split} {r.mode}{'' if r.offload_step is None else f' w={r.offload_step}'} "
                      f"{r.codec} front={r.front_precision}: {r.metric}={r.fidelity:.3f} bits={r.bits_per_element:.2f} "
                      f"step={r.predicted_step_ms:.2f} ms (predicted)"
                      + ("" if r.fidelity_source == "measured" else f" [fidelity: {r.fidelity_source}]"))


def _predict_only(args) -> int:
    from slicer.actors.models import profile_from_config
    from slicer.orchestrator.evaluation.pareto import parse_objectives
    from slicer.orchestrator.evaluation.sweep import (
        SweepGrid,
        SweepSettings,
        plot,
        predict_sweep,
        write_csv,
    )

    try:
        profile = profile_from_config(args.model)
    except Exception as e:  # noqa: BLE001 - unknown name, unsupported architecture, no network for a hub name
        print(f"slicer sweep: no profile for {args.model!r}: {type(e).__name__}: {e}", file=sys.stderr)
        return 2
    n = profile.num_layers
    splits = (_list(args.splits, int, "splits") if args.splits
              else tuple(sorted({min(n - 1, max(1, round(n * f))) for f in (0.05, 0.125, 0.25, 0.5, 0.75, 0.95)})))
    grid = SweepGrid(splits=splits, codecs=_list(args.codecs, str, "codecs"),
                     sparsities=_list(args.sparsities, float, "sparsities"), bits=_list(args.bits, str, "bits", ";"),
                     modes=_list(args.modes, str, "modes"), offload_steps=_list(args.offload_steps, int, "offload-steps"),
                     front_bits=_list(args.front_bits, _front_bits, "front-bits"))
    table = []
    if args.accuracy:
        table = [json.loads(l) for l in Path(args.accuracy).read_text(encoding="utf-8").splitlines() if l.strip()]
    try:
        settings = SweepSettings(devices=_list(args.devices, str, "devices"), links_mbps=_list(args.link_mbps, float, "link-mbps"),
                             snr_db=args.snr_db, bandwidth_mhz=args.bandwidth_mhz,
                                 latency_budget_ms=args.latency_budget_ms, prompt_tokens=args.prompt_tokens,
                                 score_tokens=args.score_tokens, windows=args.windows,
                                 objectives=parse_objectives(args.objectives))
        rows = predict_sweep(profile, grid, settings, table)
    except ValueError as e:
        print(f"slicer sweep: {e}", file=sys.stderr)
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    write_csv(rows, out / "sweep.csv")
    write_csv([r for r in rows if r.on_front], out / "front.csv")
    src = f"fidelity from {args.accuracy}" if args.accuracy else "fidelity from the policies' prior"
    plot(rows, out / "sweep.png", title=f"{profile.name} (planned from its config, not run): {src}; latency predicted")
    meta = {"model": profile.name, "predict_only": True, "source": src, "grid": grid.__dict__,
            "settings": settings.__dict__, "measured": [],
            "predicted": ["bits_per_element (codec bound B^UB for one token)", "predicted_step_ms",
                          "predicted_handoff_ms", "predicted_server_ms", "predicted_payload_bytes_per_token", "feasible"],
            "fidelity": "per row in fidelity_source: 'table: <model> split k/m' (measured on that model, matched by "
                        "codec setting and relative depth) or 'prior' (policies.accuracy.prior_accuracy)"}
    (out / "sweep.json").write_text(json.dumps(meta, indent=2, default=str) + "\n", encoding="utf-8")
    print(f"planned {profile.name} ({n} units) from its config: {len(grid.configs())} configurations x "
          f"{len(settings.devices)} device classes x {len(settings.links_mbps)} links; {src}")
    _print_fronts(rows, settings)
    print(f"wrote {out / 'sweep.csv'}, {out / 'front.csv'}, {out / 'sweep.png'}")
    return 0
