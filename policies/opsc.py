"""OPSC joint optimisation (seed 002): split point, front-segment precision and sequence
length chosen together under the memory and latency budgets.

OPSC runs the front segment at a lower precision than the back (mixed precision, "one-
point split compression") and ships the feature with threshold splitting + token-wise
adaptive bits (``CodecConfig(method="opsc")``). The front precision trades accuracy for
memory, and memory buys depth (weights) or context (KV cache). The joint choice here:

1. the longest sequence length of the grid (the requested context first, then halves)
   that some (precision, split) can serve;
2. at that length, the most accurate front precision (float16/bfloat16 > int8 > int4,
   or the accuracy table) that has a feasible split (``objective="accuracy"``), or the
   deepest split over all precisions (``objective="edge"``: most work on the edge);
3. the deepest feasible split and latest hand-off for it (Eq. 6).
"""
from __future__ import annotations

from slicer.codec import CodecConfig, CodecError
from slicer.policies.accuracy import AccuracyTable, accuracy_of
from slicer.policies.devices import DeviceProfile
from slicer.policies.link import LinkState
from slicer.policies.models import CostModel
from slicer.policies.profile import ModelProfile
from slicer.policies.schema import Budgets, SplitPlan, canonical_precision
from slicer.policies.search import (
    SearchSpace,
    default_precision,
    infeasible_plan,
    result_to_plan,
    search_split,
)

OPSC_PRECISIONS = ("float16", "int8", "int4")


def _opsc_space(bits: tuple[int, ...]) -> SearchSpace:
    return SearchSpace(method="opsc", bits=bits, lossless_first=False)


def _codec_available(method: str) -> bool:
    from slicer import codec

    try:
        codec.predict_bytes((1, 64), CodecConfig(method=method))
        return True
    except (CodecError, ImportError, AttributeError, NotImplementedError):
        return False


def seq_grid(budgets: Budgets, min_new_tokens: int = 16) -> list[int]:
    """Context lengths tried, longest first: the requested one, then halves of the new tokens."""
    out, new = [], budgets.new_tokens
    while True:
        out.append(budgets.prompt_tokens + new)
        if new <= min_new_tokens:
            break
        new //= 2
    return out


def opsc_plan(model: ModelProfile, device: DeviceProfile, link: LinkState, budgets: Budgets,
              accuracy: AccuracyTable | None = None, *, server: DeviceProfile | None = None,
              precisions: tuple[str, ...] | None = None, bits: tuple[int, ...] = (8, 6, 4),
              objective: str = "accuracy", method: str = "opsc", codec_time=None, payload_bytes=None,
              min_split: int = 1, **_: object) -> SplitPlan:
    """``min_split``: the fewest units the edge must run (e.g. to keep raw tokens private,
    or because the deployment wants a share of the work on the edge); with it, a long
    context's KV cache can rule out every split, and the sequence length gives way."""
    if objective not in ("accuracy", "edge"):
        raise ValueError(f"objective={objective!r} is invalid: allowed accuracy, edge")
    base = default_precision(model)
    precisions = tuple(canonical_precision(p) for p in (precisions or OPSC_PRECISIONS))
    # The profile's own 16-bit type stands for "16-bit" (bf16 models stay bf16).
    precisions = tuple(base if p in ("float16", "bfloat16") and base in ("float16", "bfloat16") else p for p in precisions)
    note = ""
    if payload_bytes is None and not _codec_available(method):
        note = f" (codec {method!r} unavailable here: int8 per-token used instead)"
        method = "int8"
    space = _opsc_space(bits)
    if method != "opsc":
        space = SearchSpace(method=method, bits=(8,), lossless_first=False)
    last = None
    grid = seq_grid(budgets) if model.kind == "causal_lm" else [budgets.context_tokens]
    for ctx in grid:
        b = budgets.replace(new_tokens=ctx - budgets.prompt_tokens)
        found = []
        for p in precisions:
            cm = CostModel(model, device, link, b, server=server, codec_time=codec_time, payload_bytes=payload_bytes)
            res = search_split(cm, p, space, accuracy, min_split=min_split)
            last = (cm, res)
            if res.choice is not None:
                acc, _ = accuracy_of(res.choice.est.split, res.choice.cfg, p, accuracy)
                found.append((acc, res.choice.est.split, cm, res, p))
                if objective == "accuracy":
                    break  # precisions are in accuracy order: the first feasible wins
        if found:
            if objective == "edge":
                found.sort(key=lambda f: (f[1], f[0]), reverse=True)
            acc, ell, cm, res, p = found[0]
            plan = result_to_plan("opsc", cm, res, space)
            shorter = "" if ctx == budgets.context_tokens else (
                f" The requested {budgets.context_tokens} tokens do not fit any precision/split; longest feasible context {ctx}.")
            ctx_txt = f"context {ctx} tokens, " if model.kind == "causal_lm" else ""
            reason = (f"OPSC joint choice: {ctx_txt}front {p}, split {ell}/{cm.n}"
                      f" ({'most accurate feasible precision' if objective == 'accuracy' else 'deepest split over precisions'})."
                      f"{shorter}{note} " + plan.reason)
            from dataclasses import replace

            return replace(plan, reason=reason, extra={**plan.extra, "objective": objective,
                                                       "requested_tokens": budgets.context_tokens})
    cm, res = last
    plan = infeasible_plan("opsc", cm, res)
    from dataclasses import replace

    return replace(plan, reason=plan.reason + f" (at every precision {', '.join(precisions)} and context down to {cm.budgets.context_tokens}){note}")
