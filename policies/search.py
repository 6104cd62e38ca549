"""Split selection (Eq. 3, Eq. 6) with SLICER-SEARCH (seed 001 §3.3), accuracy first.

Order of the search, for one front precision:

0. **Edge-only**: when the whole model, its KV cache for the whole request and a decode
   step fit the budgets, nothing is offloaded (Scenario #b-3) and the search stops.
1. From the deepest split ℓ down to 1 (Eq. 3 / Eq. 6: the deepest feasible split wins,
   and for it the latest feasible hand-off step w), at each split:

   - **Tier 1, tune blocks**: the gentlest setting (lossless if allowed, then the lowest
     sparsity of the grid at the widest bits) with every block count (M+, M−) of the
     grid; among those meeting the budgets, the most accurate one;
   - **Tier 2, raise sparsity**: the sparsity grid (then narrower bits) step by step;
     the first step where some block count meets the budgets, its most accurate one;
   - **Tier 3, retreat**: when no setting meets the budgets at this split, try the next
     shallower split.

   The plan records tier 3 when the chosen split is shallower than the deepest split the
   memory budget alone allows (latency forced the retreat), else the tier that decided
   at that split.

Feasible sets shrink when the rate drops or the memory budget shrinks, so a lower rate
never gives a deeper split (nor, at the same split, a lower sparsity), and a larger memory
budget never gives a shallower split (tested in tests/policies).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

from slicer.codec import CodecConfig
from slicer.policies.accuracy import AccuracyTable, accuracy_of
from slicer.policies.devices import DeviceProfile
from slicer.policies.link import LinkState
from slicer.policies.models import CostModel, Estimate
from slicer.policies.profile import ModelProfile
from slicer.policies.schema import PRECISION_BYTES, Budgets, SplitPlan, canonical_precision


@dataclass(frozen=True)
class SearchSpace:
    """The codec settings SLICER-SEARCH may choose from."""

    method: str = "slicer"
    """Codec method of the feature."""
    sparsities: tuple[float, ...] = (0.0, 0.25, 0.5, 0.625, 0.75, 0.875, 0.9, 0.95)
    """Grid of s, ascending; the first is tier 1's gentlest setting."""
    blocks: tuple[tuple[int, int], ...] = ((1, 1), (2, 2), (3, 3), (4, 4), (6, 6), (8, 8))
    """Grid of (M+, M−) tuned in tier 1 (and at each sparsity of tier 2)."""
    bits: tuple[int, ...] = (8,)
    """q_bit values, widest first (narrower ones are tried in tier 2 after each sparsity)."""
    delta: float | None = 0.01
    """ABQ distortion threshold δ (SLICER §4.1); None = fixed bits."""
    index: str = "auto"
    """Index coding of the codec (``auto``: the fewest bytes)."""
    lossless_first: bool = True
    """Try the lossless codec first in tier 1 (a fast link then sends exact features)."""

    def __post_init__(self) -> None:
        if not self.sparsities or list(self.sparsities) != sorted(self.sparsities):
            raise ValueError(f"SearchSpace.sparsities={self.sparsities!r} is invalid: allowed a non-empty ascending grid in [0, 1)")
        if not self.blocks or not self.bits:
            raise ValueError("SearchSpace.blocks and SearchSpace.bits must be non-empty")

    def config(self, sparsity: float, blocks: tuple[int, int], bits: int) -> CodecConfig:
        return CodecConfig(method=self.method, sparsity=sparsity, blocks=blocks, bits=bits, delta=self.delta, index=self.index)

    def levels(self) -> list[tuple[int, list[CodecConfig]]]:
        """[(tier, candidate settings)] in search order; one level per (s, q_bit) step."""
        bits = sorted(self.bits, reverse=True)
        out: list[tuple[int, list[CodecConfig]]] = []
        first = [CodecConfig(method="raw")] if self.lossless_first else []
        if self.method in ("slicer",):
            for i, s in enumerate(self.sparsities):
                for j, q in enumerate(bits):
                    cands = [self.config(s, b, q) for b in self.blocks]
                    if i == 0 and j == 0:
                        out.append((1, first + cands))
                    else:
                        out.append((2, cands))
        else:  # dense methods: one setting per bit width, blocks do not apply
            for j, q in enumerate(bits):
                cands = [CodecConfig(method=self.method, bits=q, delta=self.delta)]
                out.append((1 if j == 0 else 2, (first if j == 0 else []) + cands))
        return out


def default_precision(model: ModelProfile) -> str:
    return model.dtype if model.dtype in PRECISION_BYTES else "float32"


def w_ladder(new_tokens: int) -> list[int]:
    """Hand-off steps tried for local-then-offload, latest first: 1 and powers of two up to
    N. Fixed (independent of the budgets) so feasible sets stay nested across budgets."""
    out, w = [], 1
    while w <= new_tokens:
        out.append(w)
        w *= 2
    return sorted(out, reverse=True)


@dataclass
class _Choice:
    est: Estimate
    cfg: CodecConfig | None
    tier: int
    accuracy: float
    accuracy_source: str


@dataclass
class SearchResult:
    """What the search found, before it becomes a ``SplitPlan``."""

    choice: _Choice | None
    memory_split: int
    """Deepest split the memory budget alone allows (0: none)."""
    deeper_failure: Estimate | None
    """Best-effort estimate at the split just deeper than the chosen one (why not deeper)."""
    edge_only: Estimate | None = None
    notes: list[str] = field(default_factory=list)


def _best(cands: list[tuple[Estimate, CodecConfig, float, str]]) -> tuple[Estimate, CodecConfig, float, str]:
    # Most accurate; ties: fewer bytes per token, then the lower latency.
    return max(cands, key=lambda c: (round(c[2], 9), -c[0].bytes_per_token, -c[0].step_latency_s))


def _gentlest_estimate(cm: CostModel, ell: int, precision: str, space: SearchSpace) -> Estimate:
    """The cheapest-memory estimate at ``ell`` (w = 1, the most compressing setting):
    tells whether memory alone rules this split out."""
    lv = space.levels()
    cfg = lv[-1][1][0]
    return cm.evaluate(ell, 1, precision, cfg)


def search_split(cm: CostModel, precision: str, space: SearchSpace, table: AccuracyTable | None,
                 min_split: int = 1) -> SearchResult:
    """The deepest feasible (ℓ, w) and its codec setting by the three tiers."""
    model, b = cm.model, cm.budgets
    n = model.num_layers
    edge = cm.evaluate(n, None, precision, None)
    acc, src = accuracy_of(n, None, precision, table)
    if edge.feasible and (b.min_accuracy is None or acc >= b.min_accuracy):
        return SearchResult(_Choice(edge, None, 0, acc, "lossless" if precision in ("float32", "float16", "bfloat16") else src),
                            n, None, edge)
    levels = space.levels()
    ladder = w_ladder(b.new_tokens) if cm.ar else [1]
    # Hand-off steps whose local phase (whole model + KV) cannot fit are never feasible,
    # whatever the split: drop them once instead of evaluating them at every split.
    ladder = [w for w in ladder if w == 1 or cm.local_phase_memory_bytes(w, precision) <= b.memory_bytes]
    memory_split = 0
    deeper_failure: Estimate | None = edge
    for ell in range(n - 1, min_split - 1, -1):
        gentle = _gentlest_estimate(cm, ell, precision, space)
        if "memory" in gentle.violations:
            deeper_failure = gentle
            continue
        if memory_split == 0:
            memory_split = ell
        best_effort: Estimate | None = None
        for tier, cands in levels:
            feasible: list[tuple[Estimate, CodecConfig, float, str]] = []
            for cfg in cands:
                acc, src = accuracy_of(ell, cfg, precision, table)
                if b.min_accuracy is not None and acc < b.min_accuracy:
                    continue
                for w in ladder:
                    est = cm.evaluate(ell, w, precision, cfg)
                    if est.feasible:
                        feasible.append((est, cfg, acc, src))
                        break
                    if w == 1 and (best_effort is None or _effort_rank(est) < _effort_rank(best_effort)):
                        best_effort = est
            if feasible:
                est, cfg, acc, src = _best(feasible)
                decided = 3 if ell < memory_split else tier
                return SearchResult(_Choice(est, cfg, decided, acc, src), memory_split, deeper_failure, edge)
        deeper_failure = best_effort or gentle
    return SearchResult(None, memory_split, deeper_failure, edge)


def _effort_rank(est: Estimate) -> tuple:
    # The "closest to feasible" failure: fewest violations, then the lowest latency.
    return (len(est.violations), est.step_latency_s, est.handoff_latency_s)


# -- plans ------------------------------------------------------------------------------------

def _fmt_ms(s: float) -> str:
    return "inf" if not math.isfinite(s) else f"{s * 1e3:,.1f} ms"


def _mb(x: float) -> str:
    return f"{x / 1e6:,.1f} MB"


def describe_setting(cfg) -> str:
    if cfg is None:
        return "no codec"
    if cfg.method == "raw":
        return "lossless"
    if cfg.method == "slicer":
        return f"slicer s={cfg.sparsity:g} blocks={cfg.blocks} q_bit={cfg.bits}"
    return f"{cfg.method} q_bit={cfg.bits}"


def describe_violation(est: Estimate, b: Budgets, link: LinkState, what: str) -> tuple[str, str]:
    """(binding constraint, sentence) for the first violation of ``est``."""
    v = est.violations[0] if est.violations else ""
    if v == "memory":
        return "memory", f"{what} needs {_mb(est.memory_bytes)} > memory budget {_mb(b.memory_bytes)}"
    if v == "link":
        return "link", (f"the link cannot meet outage eps={link.epsilon:g} at {link.describe()} "
                        f"(rate above the capacity W·log2(1+γ) = {link.capacity_bps / 1e6:.1f} Mbit/s, "
                        f"P_o = {link.outage_probability:.4f}; a rate below the capacity is needed)")
    if v == "latency":
        return "latency", (f"{what} takes {_fmt_ms(est.step_latency_s)} per step > latency budget "
                           f"{_fmt_ms(b.latency_s)} at {link.rate_bps / 1e6:g} Mbit/s")
    if v == "handoff-latency":
        return "latency", (f"{what}: hand-off (Eq. 5) takes {_fmt_ms(est.handoff_latency_s)} > "
                           f"{_fmt_ms(est.handoff_budget_s)} at {link.rate_bps / 1e6:g} Mbit/s")
    if v == "ar-buffer":
        return "ar-buffer", f"{what}: hand-off payload {est.handoff_bytes:,.0f} B > M_ar {b.ar_buffer_bytes:,.0f} B"
    return "", ""


def plan_from_estimate(policy: str, cm: CostModel, est: Estimate, cfg, *, tier: int, accuracy: float | None,
                       accuracy_source: str, binding: str, reason: str, feasible: bool = True,
                       extra: dict | None = None) -> SplitPlan:
    method = "tokens" if est.split == 0 else ("none" if est.offload_step is None else (cfg.method if cfg else "raw"))
    if cfg is not None and est.offload_step is not None and est.split > 0:
        spec = cfg.spec()
        s = float(cfg.sparsity) if cfg.method == "slicer" else 0.0
        blocks = tuple(cfg.blocks) if cfg.method == "slicer" else (1, 1)
        if cfg.method == "raw":
            bits = int(PRECISION_BYTES.get(cm.feature_dtype, 4) * 8)
        else:
            bits = cfg.bits
    else:
        spec, s, blocks, bits = ("tokens" if est.split == 0 else "none"), 0.0, (1, 1), 0
    return SplitPlan(
        policy=policy, feasible=feasible, split=est.split, offload_step=est.offload_step, num_layers=cm.n,
        method=method, codec_spec=spec, sparsity=s, blocks=blocks, bits=bits, front_precision=est.precision,
        tokens=est.context_tokens, predicted_latency_s=est.step_latency_s,
        predicted_e2e_latency_s=est.step_latency_s + est.server_step_s,
        predicted_handoff_latency_s=est.handoff_latency_s, predicted_memory_bytes=est.memory_bytes,
        bytes_per_token=est.bytes_per_token if est.offload_step is not None else 0.0,
        handoff_bytes=est.handoff_bytes, server_time_s=est.server_time_s,
        cloud_server_time_s=cm.cloud_server_time_s(), accuracy=accuracy, accuracy_source=accuracy_source,
        tier=tier, binding=binding, reason=reason, device=cm.device.name, link=cm.link.describe(),
        extra=dict(extra or {}),
    )


def slicer_plan(model: ModelProfile, device: DeviceProfile, link: LinkState, budgets: Budgets,
                accuracy: AccuracyTable | None = None, *, server: DeviceProfile | None = None,
                space: SearchSpace | None = None, front_precision: str | None = None,
                codec_time=None, payload_bytes=None, policy: str = "slicer", min_split: int = 1) -> SplitPlan:
    """SLICER's policy: deepest feasible split, three-tier codec search, accuracy first.
    ``min_split``: shallowest split allowed (default 1: the embedding alone)."""
    precision = canonical_precision(front_precision or default_precision(model))
    space = space or SearchSpace()
    cm = CostModel(model, device, link, budgets, server=server, codec_time=codec_time, payload_bytes=payload_bytes)
    res = search_split(cm, precision, space, accuracy, min_split=min_split)
    return result_to_plan(policy, cm, res, space)


def result_to_plan(policy: str, cm: CostModel, res: SearchResult, space: SearchSpace) -> SplitPlan:
    b, link, n = cm.budgets, cm.link, cm.n
    if res.choice is None:
        return infeasible_plan(policy, cm, res)
    c = res.choice
    est = c.est
    if c.tier == 0:
        kv = f" with its KV cache for {est.context_tokens} tokens" if cm.ar else ""
        step = "a step" if cm.ar else "an inference"
        reason = (f"the whole model at {est.precision} ({_mb(est.memory_bytes)}{kv}) fits {_mb(b.memory_bytes)} "
                  f"and {step} takes {_fmt_ms(est.step_latency_s)} <= {_fmt_ms(b.latency_s)}: nothing to offload "
                  f"(server spared)")
        return plan_from_estimate(policy, cm, est, None, tier=0, accuracy=c.accuracy, accuracy_source=c.accuracy_source,
                                  binding="", reason=reason)
    why_not_deeper = ""
    binding = ""
    if res.deeper_failure is not None and res.deeper_failure.violations:
        what = "edge-only" if res.deeper_failure.offload_step is None else f"split {res.deeper_failure.split}"
        binding, why_not_deeper = describe_violation(res.deeper_failure, b, link, what)
    w_txt = "from the first step" if est.offload_step == 1 else f"after {est.offload_step - 1} local steps"
    setting = describe_setting(c.cfg)
    if c.tier == 1:
        how = f"tier 1: the gentlest setting fits, blocks tuned ({setting})"
    elif c.tier == 2:
        if space.method == "slicer":
            how = f"tier 2: s={space.sparsities[0]:g} misses the budgets at split {est.split}, sparsity raised ({setting})"
        else:
            how = f"tier 2: q_bit={max(space.bits)} misses the budgets at split {est.split}, bits lowered ({setting})"
    else:
        grid = (f"sparsity up to {space.sparsities[-1]:g}" if space.method == "slicer"
                else f"setting of {space.method} (q_bit {', '.join(str(q) for q in space.bits)})")
        how = (f"tier 3: split {res.memory_split} (deepest the memory allows) misses the budgets at every "
               f"{grid}; retreated to split {est.split} ({setting})")
    reason = (f"split {est.split}/{n}, offload {w_txt}; {how}. Not deeper: {why_not_deeper or 'n/a'}. "
              f"Predicted {_fmt_ms(est.step_latency_s)}/step, {_mb(est.memory_bytes)}, "
              f"{est.bytes_per_token:,.0f} B/token.")
    return plan_from_estimate(policy, cm, est, c.cfg, tier=c.tier, accuracy=c.accuracy,
                              accuracy_source=c.accuracy_source, binding=binding, reason=reason)


def infeasible_plan(policy: str, cm: CostModel, res: SearchResult) -> SplitPlan:
    """No setting meets the budgets: name the binding constraint (memory of the first
    unit, or latency of the shallowest split at this rate)."""
    b, link = cm.budgets, cm.link
    if res.memory_split == 0:
        est = res.deeper_failure
        binding = "memory"
        reason = (f"infeasible: even the first unit ({cm.model.layers[0].name}) with its KV cache and codec buffers needs "
                  f"{_mb(est.memory_bytes)} > memory budget {_mb(b.memory_bytes)}")
    else:
        est = res.deeper_failure
        binding, sentence = describe_violation(est, b, link, f"the shallowest split ({est.split})")
        if b.min_accuracy is not None and not binding:
            binding, sentence = "accuracy", f"no setting reaches the accuracy floor {b.min_accuracy:g}"
        reason = f"infeasible: {sentence or 'no setting meets the budgets'} even at the most aggressive codec setting"
    return plan_from_estimate(policy, cm, est, est.cfg, tier=3, accuracy=None, accuracy_source="prior",
                              binding=binding, reason=reason, feasible=False)
