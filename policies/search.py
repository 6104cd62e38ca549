"""Split selection (Eq. 3, Eq. 6) with SLICER-SEARCH (seed 001 §3.3), accuracy first.

Eq. 6 picks the deepest admissible split point ``(w*, ℓ*) = max {(w, ℓ)}``: the
lexicographic maximum, hand-off step w first (every step before w runs the whole model on
the edge), then the split ℓ. The search enumerates candidate points in that order and
stops at the first one where some setting meets the budgets, so the answer is the
lexicographic maximum of the feasible set. At each point it goes through the paper's tiers
("accuracy first": the gentlest distortion that meets the budgets):

0. **Edge-only** (w = ∞, Scenario #b-3): the whole model, its KV cache for the whole
   request and a decode step fit the budgets: nothing is offloaded.
1. **Tier 1, structure**: at the gentlest sparsity (lossless first if allowed), every block
   count (M+, M−) of the grid, unequal ones included, and every ATKF asymmetry λ; among
   those meeting the budgets the most accurate (B^UB does not depend on λ, so λ only
   moves with an accuracy table that measures it).
2. **Tier 2, distortion**: sparsity raised step by step (then narrower q_bit), blocks and λ
   tuned at each step; the first step where a setting meets the budgets, its most
   accurate one.
   **Precision (Eq. 4)**: when no codec setting at the front precision meets the budgets
   at this point, the next narrower precision of ``SearchSpace.precisions`` (int8, then
   int4) is tried with tiers 1-2 again; the plan says whether memory or latency made
   the step down. Compressing the front network is distortion, not retreat, so it comes
   before tier 3.
3. **Tier 3, retreat**: no setting meets the budgets at this point: lower w, then ℓ (the
   next point in Eq. 6's order). The plan records tier 3 when a deeper point passed the
   memory check and failed on latency, link, M_ar or the accuracy floor, and names what.

Every budget constraint is monotone in its budget, so feasible sets are nested: a larger
latency or memory budget never lowers (w, ℓ), and a better link never does (tested in
tests/policies). Only ``CostModel`` evaluates; nothing here measures or writes files.
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
from slicer.policies.schema import (
    PRECISION_BYTES,
    Budgets,
    SplitPlan,
    canonical_precision,
)

#: Front precisions ordered from the most to the least accurate (the prior of
#: ``policies.accuracy``: 16-bit 1, int8 0.995, int4 0.97).
PRECISION_ORDER = ("float32", "bfloat16", "float16", "int8", "int4")


@dataclass(frozen=True)
class SearchSpace:
    """The codec settings and front precisions SLICER-SEARCH may choose from."""

    method: str = "slicer"
    """Codec method of the feature."""
    sparsities: tuple[float, ...] = (0.0, 0.25, 0.5, 0.625, 0.75, 0.875, 0.9, 0.95)
    """Grid of s, ascending; the first is tier 1's gentlest setting."""
    blocks: tuple[tuple[int, int], ...] = ((1, 1), (2, 1), (1, 2), (2, 2), (3, 2), (2, 3), (3, 3), (4, 4), (6, 6), (8, 8))
    """Grid of (M+, M−) tuned in tier 1 (and at each sparsity of tier 2); unequal counts
    fit features whose kept values lean to one sign."""
    asymmetries: tuple[float, ...] = (0.0,)
    """Grid of ATKF's λ tuned with the blocks (τ+ = (1+λ)τ, τ− = −(1−λ)τ). B^UB does not
    depend on λ; a λ > 0 wins only where an accuracy table scores it higher."""
    bits: tuple[int, ...] = (8,)
    """q_bit values, widest first (narrower ones are tried in tier 2 after each sparsity)."""
    delta: float | None = 0.01
    """ABQ distortion threshold δ (SLICER §4.1); None = fixed bits."""
    index: str = "auto"
    """Index coding of the codec (``auto``: the fewest bytes)."""
    lossless_first: bool = True
    """Try the lossless codec first in tier 1 (a fast link then sends exact features)."""
    precisions: tuple[str, ...] | None = None
    """Front precisions, most accurate first (Eq. 4), each tried at a point only where the
    wider ones meet no budget. None: the model's own precision alone (``front_precision
    ="auto"`` gives it, then int8, then int4). A ladder that does not depend on the
    budgets keeps the feasible sets nested, so (w, ℓ) stays monotone in them."""

    def __post_init__(self) -> None:
        if not self.sparsities or list(self.sparsities) != sorted(self.sparsities) \
                or not all(0.0 <= s < 1.0 for s in self.sparsities):
            raise ValueError(f"SearchSpace.sparsities={self.sparsities!r} is invalid: allowed a non-empty ascending grid in [0, 1)")
        if not self.blocks or not self.bits:
            raise ValueError("SearchSpace.blocks and SearchSpace.bits must be non-empty")
        if not self.asymmetries or not all(0.0 <= a < 1.0 for a in self.asymmetries):
            raise ValueError(f"SearchSpace.asymmetries={self.asymmetries!r} is invalid: allowed a non-empty grid in [0, 1)")
        if self.precisions is not None:
            if not self.precisions:
                raise ValueError("SearchSpace.precisions=() is invalid: allowed None or a non-empty list of precisions")
            for p in self.precisions:
                canonical_precision(p)

    def config(self, sparsity: float, blocks: tuple[int, int], bits: int, asymmetry: float = 0.0) -> CodecConfig:
        return CodecConfig(method=self.method, sparsity=sparsity, blocks=blocks, bits=bits, delta=self.delta,
                           index=self.index, asymmetry=asymmetry)

    def levels(self) -> list[tuple[int, list[CodecConfig]]]:
        """[(tier, candidate settings)] in search order; one level per (s, q_bit) step."""
        bits = sorted(self.bits, reverse=True)
        out: list[tuple[int, list[CodecConfig]]] = []
        first = [CodecConfig(method="raw")] if self.lossless_first else []
        if self.method in ("slicer",):
            for i, s in enumerate(self.sparsities):
                for j, q in enumerate(bits):
                    cands = [self.config(s, b, q, a) for b in self.blocks for a in self.asymmetries]
                    if i == 0 and j == 0:
                        out.append((1, first + cands))
                    else:
                        out.append((2, cands))
        else:  # dense methods: one setting per bit width, blocks do not apply
            for j, q in enumerate(bits):
                cands = [CodecConfig(method=self.method, bits=q, delta=self.delta)]
                out.append((1 if j == 0 else 2, (first if j == 0 else []) + cands))
        return out

    def precision_ladder(self, model: ModelProfile, front_precision: str | None = None) -> tuple[str, ...]:
        """Precisions to try, most accurate first: ``front_precision`` alone when given."""
        base = default_precision(model)
        if front_precision and str(front_precision).lower() == "auto":
            rank = PRECISION_ORDER.index(base)
            return (base,) + tuple(p for p in ("int8", "int4") if PRECISION_ORDER.index(p) > rank)
        if front_precision:
            return (canonical_precision(front_precision),)
        if self.precisions is not None:
            return tuple(dict.fromkeys(canonical_precision(p) for p in self.precisions))
        return (base,)


def default_precision(model: ModelProfile) -> str:
    return model.dtype if model.dtype in PRECISION_BYTES else "float32"


def w_ladder(new_tokens: int) -> list[int]:
    """Hand-off steps tried for local-then-offload, latest first: N, then powers of two
    below it, down to 1. Fixed (independent of the budgets) so feasible sets stay nested
    across budgets."""
    out, w = {new_tokens}, 1
    while w < new_tokens:
        out.add(w)
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
    """Deepest split the memory budget alone allows at the chosen hand-off step (0: none)."""
    deeper_failure: Estimate | None
    """Best-effort estimate of the point just above the chosen one in Eq. 6's order (why not deeper)."""
    edge_only: Estimate | None = None
    notes: list[str] = field(default_factory=list)
    top_w: int | None = None
    """Latest hand-off step whose local phase fits the memory (the first w tried)."""
    retreat: str = ""
    """What the tier-3 retreat gave up (``w``, ``split``, ``w and split``), empty if none."""
    precision_step: str = ""
    """Why a narrower front precision was taken (Eq. 4), empty if the widest one served."""


def _best(cands: list[tuple[Estimate, CodecConfig, float, str]]) -> tuple[Estimate, CodecConfig, float, str]:
    # Most accurate; ties: fewer bytes per token, then the lower latency, then the first
    # in grid order (λ = 0 before λ > 0: max keeps the first of equal keys).
    return max(cands, key=lambda c: (round(c[2], 9), -c[0].bytes_per_token, -c[0].step_latency_s))


def _effort_rank(est: Estimate) -> tuple:
    # The "closest to feasible" failure: fewest violations, then the lowest latency.
    return (len(est.violations), est.step_latency_s, est.handoff_latency_s)


def _search_point(cm: CostModel, ell: int, w: int, precision: str, levels, table: AccuracyTable | None):
    """Tiers 1-2 at one point (ℓ, w, precision): (choice or None, best-effort failure)."""
    b = cm.budgets
    # The most compressing setting holds the smallest codec buffers and sends the fewest
    # bytes: when it misses the memory budget, every setting does.
    lossy = [c for c in levels[-1][1] if c.method != "raw"] or levels[-1][1]
    aggressive = cm.evaluate(ell, w, precision, lossy[0])
    if "memory" in aggressive.violations:
        return None, aggressive
    best_effort: Estimate | None = None
    for tier, cands in levels:
        feasible: list[tuple[Estimate, CodecConfig, float, str]] = []
        for cfg in cands:
            acc, src = accuracy_of(ell, cfg, precision, table)
            if b.min_accuracy is not None and acc < b.min_accuracy:
                continue
            est = cm.evaluate(ell, w, precision, cfg)
            if est.feasible:
                feasible.append((est, cfg, acc, src))
            elif best_effort is None or _effort_rank(est) < _effort_rank(best_effort):
                best_effort = est
        if feasible:
            est, cfg, acc, src = _best(feasible)
            return _Choice(est, cfg, tier, acc, src), None
    if best_effort is None:  # every setting is below the accuracy floor
        best_effort = aggressive
        if not aggressive.violations:
            aggressive.violations.append("accuracy")
    return None, best_effort


def search_split(cm: CostModel, precision, space: SearchSpace, table: AccuracyTable | None,
                 min_split: int = 1) -> SearchResult:
    """The lexicographically deepest feasible (w, ℓ) of Eq. 6 and its setting by the tiers.
    ``precision``: one front precision, or a tuple tried most accurate first (Eq. 4)."""
    model, b = cm.model, cm.budgets
    precisions = (precision,) if isinstance(precision, str) else tuple(precision)
    n = model.num_layers
    edge = None
    for p in precisions:
        est = cm.evaluate(n, None, p, None)
        acc, src = accuracy_of(n, None, p, table)
        edge = edge or est
        if est.feasible and (b.min_accuracy is None or acc >= b.min_accuracy):
            step = "" if p == precisions[0] else (
                f"front at {p} (Eq. 4): at {precisions[0]} edge-only "
                f"{describe_violation(edge, b, cm.link, 'edge-only')[1]}")
            return SearchResult(_Choice(est, None, 0, acc, "lossless" if p in ("float32", "float16", "bfloat16") else src),
                                n, None, est, precision_step=step)
    levels = space.levels()
    ladder = w_ladder(b.new_tokens) if cm.ar else [1]
    # Hand-off steps whose local phase (whole model + KV) cannot fit at any precision are
    # never feasible, whatever the split: drop them once.
    ladder = [w for w in ladder if w == 1 or min(cm.local_phase_memory_bytes(w, p) for p in precisions) <= b.memory_bytes]
    top_w = ladder[0]
    deeper_failure: Estimate | None = edge
    failures: dict[tuple[int, int], Estimate] = {}
    passed_memory: set[tuple[int, int]] = set()  # points some precision had the memory for
    prev_w: int | None = None
    for w in ladder:
        memory_split = 0
        for ell in range(n - 1, min_split - 1, -1):
            fail_at_point: Estimate | None = None
            wider_fail: Estimate | None = None
            for p in precisions:
                if w > 1 and cm.local_phase_memory_bytes(w, p) > b.memory_bytes:
                    continue
                choice, failure = _search_point(cm, ell, w, p, levels, table)
                if choice is not None:
                    if memory_split == 0:
                        memory_split = ell
                    deeper = [pt for pt in passed_memory if pt > (w, ell)]
                    retreat = ""
                    if deeper:
                        lost_w = any(pw > w for pw, _ in deeper)
                        lost_l = any(pw == w and pl > ell for pw, pl in deeper)
                        retreat = " and ".join(x for x, on in (("w", lost_w), ("split", lost_l)) if on)
                    decided = 3 if retreat else choice.tier
                    step = ""
                    if p != precisions[0] and wider_fail is not None:
                        what = describe_violation(wider_fail, b, cm.link, f"at {precisions[0]}, split {ell}")[1]
                        step = f"front at {p} (Eq. 4): {what}"
                    why = failures.get((w, ell + 1)) if ell + 1 < n else None
                    if why is None:
                        why = failures.get((prev_w, ell)) if prev_w is not None else edge
                    res = SearchResult(_Choice(choice.est, choice.cfg, decided, choice.accuracy, choice.accuracy_source),
                                       memory_split, why or deeper_failure, edge, top_w=top_w, retreat=retreat,
                                       precision_step=step)
                    if why is not None and prev_w is not None and (w, ell + 1) in failures \
                            and (prev_w, ell) in failures:
                        res.notes.append(describe_violation(failures[(prev_w, ell)], b, cm.link,
                                                            f"hand-off step {prev_w}")[1])
                    return res
                if wider_fail is None:
                    wider_fail = failure
                if "memory" not in failure.violations:
                    passed_memory.add((w, ell))
                    if memory_split == 0:
                        memory_split = ell
                if fail_at_point is None or _effort_rank(failure) < _effort_rank(fail_at_point):
                    fail_at_point = failure
            if fail_at_point is not None:
                deeper_failure = failures[(w, ell)] = fail_at_point
        prev_w = w
    return SearchResult(None, 1 if passed_memory else 0, deeper_failure, edge, top_w=top_w)


# -- plans ------------------------------------------------------------------------------------

def _fmt_ms(s: float) -> str:
    return "inf" if not math.isfinite(s) else f"{s * 1e3:,.1f} ms"


def _mib(x: float) -> str:
    return f"{x / 2**20:,.1f} MiB"


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
        return "memory", f"{what} needs {_mib(est.memory_bytes)} > memory budget {_mib(b.memory_bytes)}"
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
    if v == "accuracy":
        return "accuracy", f"{what}: no setting reaches the accuracy floor {b.min_accuracy:g}"
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
        codec=cfg if spec not in ("tokens", "none") else None,
    )


def slicer_plan(model: ModelProfile, device: DeviceProfile, link: LinkState, budgets: Budgets,
                accuracy: AccuracyTable | None = None, *, server: DeviceProfile | None = None,
                space: SearchSpace | None = None, front_precision: str | None = None,
                codec_time=None, payload_bytes=None, policy: str = "slicer", min_split: int = 1) -> SplitPlan:
    """SLICER's policy: deepest feasible split, three-tier codec search, accuracy first.
    ``min_split``: shallowest split allowed (default 1: the embedding alone)."""
    space = space or SearchSpace()
    precisions = space.precision_ladder(model, front_precision)
    cm = CostModel(model, device, link, budgets, server=server, codec_time=codec_time, payload_bytes=payload_bytes)
    res = search_split(cm, precisions, space, accuracy, min_split=min_split)
    return result_to_plan(policy, cm, res, space)


def result_to_plan(policy: str, cm: CostModel, res: SearchResult, space: SearchSpace) -> SplitPlan:
    b, link, n = cm.budgets, cm.link, cm.n
    if res.choice is None:
        return infeasible_plan(policy, cm, res)
    c = res.choice
    est = c.est
    step_txt = f" {res.precision_step}." if res.precision_step else ""
    search = {"tier": c.tier, "retreat": res.retreat, "precision_step": res.precision_step,
              "top_offload_step": res.top_w}
    if c.tier == 0:
        kv = f" with its KV cache for {est.context_tokens} tokens" if cm.ar else ""
        step = "a step" if cm.ar else "an inference"
        reason = (f"the whole model at {est.precision} ({_mib(est.memory_bytes)}{kv}) fits {_mib(b.memory_bytes)} "
                  f"and {step} takes {_fmt_ms(est.step_latency_s)} <= {_fmt_ms(b.latency_s)}: nothing to offload "
                  f"(server spared).{step_txt}")
        return plan_from_estimate(policy, cm, est, None, tier=0, accuracy=c.accuracy, accuracy_source=c.accuracy_source,
                                  binding="", reason=reason, extra={"search": search})
    why_not_deeper = ""
    binding = ""
    if res.deeper_failure is not None and res.deeper_failure.violations:
        f = res.deeper_failure
        what = "edge-only" if f.offload_step is None else (
            f"split {f.split}" if f.offload_step == est.offload_step else f"split {f.split} with hand-off at step {f.offload_step}")
        binding, why_not_deeper = describe_violation(f, b, link, what)
    for note in res.notes:
        why_not_deeper += f"; {note}"
    w_txt = "from the first step" if est.offload_step == 1 else f"after {est.offload_step - 1} local steps"
    where = f"split {est.split}" + (f", hand-off step {est.offload_step}" if cm.ar else "")
    setting = describe_setting(c.cfg)
    if c.tier == 1:
        how = f"tier 1: the gentlest setting fits, blocks tuned ({setting})"
    elif c.tier == 2:
        if space.method == "slicer":
            how = f"tier 2: s={space.sparsities[0]:g} misses the budgets at {where}, sparsity raised ({setting})"
        else:
            how = f"tier 2: q_bit={max(space.bits)} misses the budgets at {where}, bits lowered ({setting})"
    else:
        grid = (f"sparsity up to {space.sparsities[-1]:g}" if space.method == "slicer"
                else f"setting of {space.method} (q_bit {', '.join(str(q) for q in space.bits)})")
        how = (f"tier 3: every deeper point the memory allows misses the budgets at every {grid}; "
               f"retreated ({res.retreat} lowered) to {where} ({setting})")
    reason = (f"split {est.split}/{n}, offload {w_txt}; {how}.{step_txt} Not deeper: {why_not_deeper or 'n/a'}. "
              f"Predicted {_fmt_ms(est.step_latency_s)}/step, {_mib(est.memory_bytes)}, "
              f"{est.bytes_per_token:,.0f} B/token.")
    return plan_from_estimate(policy, cm, est, c.cfg, tier=c.tier, accuracy=c.accuracy,
                              accuracy_source=c.accuracy_source, binding=binding, reason=reason,
                              extra={"search": search})


def infeasible_plan(policy: str, cm: CostModel, res: SearchResult) -> SplitPlan:
    """No setting meets the budgets: name the binding constraint (memory of the first
    unit, or latency of the shallowest split at this rate)."""
    b, link = cm.budgets, cm.link
    if res.memory_split == 0:
        est = res.deeper_failure
        binding = "memory"
        reason = (f"infeasible: even the first unit ({cm.model.layers[0].name}) with its KV cache and codec buffers needs "
                  f"{_mib(est.memory_bytes)} > memory budget {_mib(b.memory_bytes)}")
    else:
        est = res.deeper_failure
        binding, sentence = describe_violation(est, b, link, f"the shallowest split ({est.split})")
        if b.min_accuracy is not None and not binding:
            binding, sentence = "accuracy", f"no setting reaches the accuracy floor {b.min_accuracy:g}"
        reason = f"infeasible: {sentence or 'no setting meets the budgets'} even at the most aggressive codec setting"
    return plan_from_estimate(policy, cm, est, est.cfg, tier=3, accuracy=None, accuracy_source="prior",
                              binding=binding, reason=reason, feasible=False)
