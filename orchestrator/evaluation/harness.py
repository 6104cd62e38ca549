"""Run a task through a ``Scorer``: the unsplit model and the split one under a plan.

Per task kind (``tasks.Task.kind``):

- ``perplexity``: windows of at most ``window`` tokens (the first conditioned on BOS when
  the tokenizer has one, else on the first token), later windows conditioned on the last
  half of the previous; metrics ``perplexity``, ``nll_per_token``, ``tokens``;
- ``multiple_choice``: log-likelihood of each choice after the context; ``accuracy``
  (argmax of the sum) and ``accuracy_norm`` (per byte of the choice, as lm-eval's
  ``acc_norm``);
- ``exact_match``: greedy answer to ``Question: ...\\nAnswer:``, the last number (or the
  text after ``####``) against the gold; ``exact_match``;
- ``code``: completions of the prompt (greedy, or ``n_samples`` draws at ``temperature``
  seeded per problem and sample, identically for the split and unsplit runs), cut at the
  usual HumanEval stop sequences, run in the sandbox against the test (``sandbox.Sandbox``: the
  verdict comes from a process that never runs the completion); ``pass_at_1`` and
  ``pass_at_k`` (unbiased estimator) for each k <= ``n_samples``.

Split against unsplit: ``next_token_agreement`` (teacher-forced argmax equal, over every
scored position; perplexity and multiple choice) and ``output_agreement`` (same choice /
same generated text per item).
"""
from __future__ import annotations

import math
import sys
import time
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from slicer.actors.protocol import Mode
from slicer.orchestrator.evaluation.sandbox import Sandbox, SandboxLimits
from slicer.orchestrator.evaluation.tasks import (
    AnswerItem,
    ChoiceItem,
    CodeItem,
    Task,
    extract_answer,
)

#: Where a HumanEval completion ends (the Codex paper's stop sequences).
CODE_STOPS = ("\nclass", "\ndef", "\n#", "\nif", "\nprint")
ANSWER_STOPS = ("\n\n", "\nQuestion:")


@dataclass
class TaskRun:
    """One scorer's run over a task."""

    name: str
    """The scorer's label (``unsplit``, ``split``)."""
    metrics: dict[str, float] = field(default_factory=dict)
    """Task metrics (see the module docstring)."""
    outputs: list[Any] = field(default_factory=list)
    """Per item: chosen index (multiple choice), generated text (exact match, code)."""
    greedy: list[int] = field(default_factory=list)
    """Teacher-forced argmax at every scored position, in order (perplexity, multiple choice)."""
    items: list[dict] = field(default_factory=list)
    """Per-item details for the JSON report."""
    wall_s: float = 0.0
    """Wall time of the run."""


def _cut(text: str, stops: Sequence[str]) -> str:
    idx = [text.find(s) for s in stops if s in text]
    return text[: min(idx)] if idx else text


def evaluate_task(task: Task, scorer, tokenizer, *, limit: int | None = None, max_new_tokens: int = 128,
                  window: int = 128, max_tokens: int = 2048, sandbox: SandboxLimits | None = None,
                  n_samples: int = 1, temperature: float = 0.0, ks: Sequence[int] = (1,),
                  progress: bool | None = None) -> TaskRun:
    """Run ``task`` through ``scorer`` (see the module docstring). ``progress``: a bar of
    items on stderr (None: only when stderr is a terminal)."""
    from tqdm.auto import tqdm

    run = TaskRun(scorer.name)
    t0 = time.perf_counter()
    prefix = [tokenizer.bos_id] if tokenizer.bos_id is not None else []
    items = task.items if limit is None else task.items[:limit]
    items = tqdm(items, desc=f"{task.name} ({scorer.name})", unit="item", file=sys.stderr,
                 disable=None if progress is None else not progress)
    if task.kind == "perplexity":
        _perplexity(run, items, scorer, tokenizer, prefix, window, max_tokens)
    elif task.kind == "multiple_choice":
        _choices(run, items, scorer, tokenizer, prefix)
    elif task.kind == "exact_match":
        _answers(run, items, scorer, tokenizer, prefix, max_new_tokens)
    elif task.kind == "code":
        _code(run, items, scorer, tokenizer, prefix, max_new_tokens, sandbox, n_samples, temperature, ks)
    else:
        raise ValueError(f"task kind {task.kind!r} is not one of perplexity, multiple_choice, exact_match, code")
    run.wall_s = time.perf_counter() - t0
    return run


def _perplexity(run, docs, scorer, tok, prefix, window, max_tokens) -> None:
    window = max(4, min(window, getattr(scorer, "max_len", window)))
    nll, n = 0.0, 0
    for doc in docs:
        ids = tok.encode(doc)[: max(0, max_tokens - n)]
        ctx, start = (prefix, 0) if prefix else (ids[:1], 1)
        while start < len(ids):
            cont = ids[start : start + window - len(ctx)]
            s = scorer.score(ctx, cont)
            nll -= sum(s.logprobs)
            n += len(cont)
            run.greedy += s.greedy
            start += len(cont)
            ctx = ids[max(0, start - window // 2) : start]
        if n >= max_tokens:
            break
    if n == 0:
        raise ValueError("the text has fewer than two tokens: nothing to score")
    run.metrics.update(perplexity=math.exp(nll / n), nll_per_token=nll / n, tokens=float(n))


def _choices(run, items: list[ChoiceItem], scorer, tok, prefix) -> None:
    right = right_norm = 0
    for it in items:
        ctx = prefix + tok.encode(it.context)
        lls = []
        for choice in it.choices:
            s = scorer.score(ctx, tok.encode(choice))
            lls.append(sum(s.logprobs))
            run.greedy += s.greedy
        norm = [ll / max(1, len(c.encode("utf-8"))) for ll, c in zip(lls, it.choices)]
        pick, pick_norm = max(range(len(lls)), key=lls.__getitem__), max(range(len(norm)), key=norm.__getitem__)
        right += pick == it.label
        right_norm += pick_norm == it.label
        run.outputs.append(pick)
        run.items.append({"task_id": it.task_id, "pick": pick, "pick_norm": pick_norm, "label": it.label,
                          "loglikelihoods": lls})
    run.metrics.update(accuracy=right / len(items), accuracy_norm=right_norm / len(items), items=float(len(items)))


def _answers(run, items: list[AnswerItem], scorer, tok, prefix, max_new_tokens) -> None:
    right = 0
    for it in items:
        ids = prefix + tok.encode(f"Question: {it.question}\nAnswer:")
        text = _cut(tok.decode(scorer.generate(ids, max_new_tokens)), ANSWER_STOPS)
        got = extract_answer(text)
        right += got == it.answer
        run.outputs.append(text)
        run.items.append({"task_id": it.task_id, "answer": got, "gold": it.answer, "passed": got == it.answer})
    run.metrics.update(exact_match=right / len(items), items=float(len(items)))


def _code(run, items: list[CodeItem], scorer, tok, prefix, max_new_tokens, sandbox, n_samples: int = 1,
          temperature: float = 0.0, ks: Sequence[int] = (1,)) -> None:
    from slicer.orchestrator.evaluation.passk import SampleResult, aggregate, check_code

    results = []
    with Sandbox(sandbox) as sb:
        for it in items:
            ids = prefix + tok.encode(it.prompt)
            for j in range(n_samples):
                # Seed per (problem, sample): the split and unsplit runs draw the same stream.
                seed = (zlib.crc32(it.task_id.encode()) * 1000 + j) % 2**63
                gen = scorer.generate(ids, max_new_tokens, temperature=temperature, seed=seed)
                completion = _cut(tok.decode(gen), CODE_STOPS)
                r = check_code(sb, it, completion)
                results.append(SampleResult(it.task_id, j, r.passed, r.error, r.duration_s))
                run.outputs.append(completion)
                run.items.append({"task_id": it.task_id, "completion_id": j, "passed": r.passed, "error": r.error,
                                  "completion": completion})
    agg = aggregate(results, sorted(set(ks) | {1}))
    run.metrics.update(pass_at_1=agg["pass@1"], items=float(len(items)), samples_per_item=float(n_samples))
    run.metrics.update({k.replace("@", "_at_"): v for k, v in agg.items() if k != "pass@1"})


def agreement(reference: TaskRun, other: TaskRun) -> dict[str, float]:
    """How often ``other`` (split) does what ``reference`` (unsplit) does."""
    out: dict[str, float] = {}
    if reference.greedy and len(reference.greedy) == len(other.greedy):
        same = sum(a == b for a, b in zip(reference.greedy, other.greedy))
        out["next_token_agreement"] = same / len(reference.greedy)
    if reference.outputs and len(reference.outputs) == len(other.outputs):
        out["output_agreement"] = sum(a == b for a, b in zip(reference.outputs, other.outputs)) / len(reference.outputs)
    return out


@dataclass(frozen=True)
class EvalSetting:
    """What ``slicer eval`` runs: split, codec spec, mode, offload step, front bits."""

    split: int
    codec: str
    mode: Mode
    offload_step: int | None
    front_bits: int | None = None
    note: str = ""


def plan_from_policy(args, model) -> tuple[EvalSetting, Any]:
    """``--policy``: the plan a policy picks for this model on ``--device`` over
    ``--link-mbps`` (``slicer.policies.plan``), as (settings for the run, the SplitPlan)."""
    from slicer.policies import Budgets, LinkState, get_device, plan

    dev = get_device(args.device)
    budgets = Budgets(latency_s=args.latency_budget_ms / 1e3, memory_bytes=dev.memory_bytes,
                      new_tokens=args.max_new_tokens, prompt_tokens=args.prompt_tokens)
    p = plan(args.policy, model.profile, dev, LinkState.from_mbps(args.link_mbps), budgets)
    n = model.num_units
    front_bits = {"int8": 8, "int4": 4}.get(p.front_precision)
    if p.split in (0, n) or p.offload_step is None:
        # Cloud-only (token ids on the wire) and edge-only (no wire): the whole model's
        # outputs; only a quantized edge-only model would differ, which is run as a
        # split at n - 1 losslessly below.
        settings = EvalSetting(split=n - 1, codec="lossless", mode=Mode.SPLIT, offload_step=None,
                               front_bits=front_bits if p.split == n else None,
                               note=f"{'edge-only' if p.split == n else 'cloud-only'} plan: run as a lossless split "
                                    f"at {n - 1} (the whole model's outputs); the payload figures do not apply to it")
    else:
        settings = EvalSetting(split=p.split, codec=p.codec_spec, mode=p.mode, offload_step=p.offload_step,
                               front_bits=front_bits)
    return settings, p


def run_model_eval(args, task: Task, limits: SandboxLimits, ks: Sequence[int] = (1,)) -> dict:
    """``slicer eval --model``: the task under the plan and unsplit, one report."""
    import torch

    from slicer.actors.models import load_model
    from slicer.codec import CodecConfig
    from slicer.orchestrator.evaluation.scorers import (
        HFScorer,
        SplitScorer,
        edge_copy,
        load_tokenizer,
    )

    torch.manual_seed(0)
    model = load_model(args.model)
    tokenizer = load_tokenizer(args.tokenizer or args.model)
    policy_plan = None
    if getattr(args, "policy", None):
        settings, policy_plan = plan_from_policy(args, model)
    else:
        settings = EvalSetting(split=args.split if args.split is not None else model.num_units // 2, codec=args.codec,
                               mode=Mode(args.mode), front_bits=getattr(args, "front_bits", None),
                               offload_step=args.offload_step if args.mode == Mode.LOCAL_THEN_OFFLOAD else None)
    split, mode, w = settings.split, settings.mode, settings.offload_step
    cfg = CodecConfig.parse(settings.codec)
    common = dict(limit=args.limit, max_new_tokens=args.max_new_tokens, sandbox=limits,
                  window=getattr(args, "window", 128), max_tokens=getattr(args, "max_tokens", 2048),
                  n_samples=getattr(args, "n_samples", 1), temperature=getattr(args, "temperature", 0.0), ks=ks)
    split_scorer = SplitScorer(model, split, cfg, mode=mode, offload_step=w, eos_id=tokenizer.eos_id,
                               edge_model=edge_copy(model, split, mode, settings.front_bits))
    runs = []
    ref = None
    if not args.no_unsplit:
        ref = evaluate_task(task, HFScorer(model.hf, eos_id=tokenizer.eos_id), tokenizer, **common)
        runs.append(ref)
    split_run = evaluate_task(task, split_scorer, tokenizer, **common)
    st = split_scorer.stats
    bpe = st.bits_per_element
    split_run.metrics.update(bits_per_element=None if math.isnan(bpe) else bpe, payload_bytes=float(st.payload_bytes),
                             payloads=float(st.payloads), server_s=st.server_s, edge_s=st.edge_s)
    runs.append(split_run)
    plan = {"split": split, "num_units": model.num_units, "codec": cfg.spec(), "mode": str(mode), "offload_step": w,
            "front_bits": settings.front_bits, "note": settings.note}
    report = {
        "task": task.name,
        "kind": task.kind,
        "shape": task.shape,
        "model": str(args.model),
        "plan": plan,
        "policy_plan": policy_plan.to_dict() if policy_plan is not None else None,
        "runs": [{"name": r.name, "metrics": r.metrics, "wall_s": r.wall_s, "items": r.items} for r in runs],
        "agreement": None,
    }
    if ref is not None:
        agr = agreement(ref, split_run)
        report["agreements"] = agr
        report["agreement"] = agr.get("next_token_agreement", agr.get("output_agreement"))
    if task.kind == "code":
        report["pass_at_1"] = split_run.metrics["pass_at_1"]
        report["pass_at_k"] = {k: v for k, v in split_run.metrics.items() if k.startswith("pass_at_")}
        report["results"] = [{"task_id": i["task_id"], "completion_id": i["completion_id"], "passed": i["passed"],
                              "error": i["error"]} for i in split_run.items]
    return report
