"""Baseline policies for comparison, on the same cost model as SLICER's.

- ``cloud-only``: the papers' EC baseline; token ids (or the raw image) go to the
  server, which runs every unit.
- ``edge-only``: the edge runs everything; infeasible when it does not fit.
- ``fixed-split``: a fixed shallow split (default: after the first decoder block, unit 2)
  with a fixed codec (default lossless), as early split-computing systems did.
- ``neurosurgeon``: Kang et al. 2017: the split that minimises end-to-end latency (edge
  compute + uncompressed transfer + server compute), no compression.
"""
from __future__ import annotations

import math

from slicer.codec import CodecConfig
from slicer.policies.accuracy import AccuracyTable, accuracy_of
from slicer.policies.devices import DeviceProfile
from slicer.policies.link import LinkState
from slicer.policies.models import CostModel, Estimate
from slicer.policies.profile import ModelProfile
from slicer.policies.schema import Budgets, SplitPlan, canonical_precision
from slicer.policies.search import default_precision, describe_violation, plan_from_estimate


def _finish(policy: str, cm: CostModel, est: Estimate, cfg, table, what: str, why: str) -> SplitPlan:
    acc, src = accuracy_of(est.split, cfg, est.precision, table) if est.split > 0 else (1.0, "lossless")
    if est.feasible:
        binding, reason = "", f"{why}; meets the budgets"
    else:
        binding, sentence = describe_violation(est, cm.budgets, cm.link, what)
        reason = f"{why}; infeasible: {sentence}"
    return plan_from_estimate(policy, cm, est, cfg, tier=0, accuracy=acc, accuracy_source=src, binding=binding,
                              reason=reason, feasible=est.feasible)


def cloud_only_plan(model: ModelProfile, device: DeviceProfile, link: LinkState, budgets: Budgets,
                    accuracy: AccuracyTable | None = None, *, server: DeviceProfile | None = None, **kw) -> SplitPlan:
    cm = CostModel(model, device, link, budgets, server=server, codec_time=kw.get("codec_time"), payload_bytes=kw.get("payload_bytes"))
    est = cm.evaluate(0, 1, default_precision(model), None)
    return _finish("cloud-only", cm, est, None, accuracy, "cloud-only",
                   "cloud-only (EC baseline): raw input to the server, which runs every unit")


def edge_only_plan(model: ModelProfile, device: DeviceProfile, link: LinkState, budgets: Budgets,
                   accuracy: AccuracyTable | None = None, *, server: DeviceProfile | None = None,
                   front_precision: str | None = None, **kw) -> SplitPlan:
    cm = CostModel(model, device, link, budgets, server=server, codec_time=kw.get("codec_time"), payload_bytes=kw.get("payload_bytes"))
    precision = canonical_precision(front_precision or default_precision(model))
    est = cm.evaluate(cm.n, None, precision, None)
    return _finish("edge-only", cm, est, None, accuracy, "edge-only", f"edge-only at {precision}: the edge runs every unit")


def fixed_split_plan(model: ModelProfile, device: DeviceProfile, link: LinkState, budgets: Budgets,
                     accuracy: AccuracyTable | None = None, *, server: DeviceProfile | None = None,
                     split: int | None = None, codec: CodecConfig | None = None,
                     front_precision: str | None = None, **kw) -> SplitPlan:
    cm = CostModel(model, device, link, budgets, server=server, codec_time=kw.get("codec_time"), payload_bytes=kw.get("payload_bytes"))
    ell = min(2, cm.n - 1) if split is None else int(split)
    if not 1 <= ell <= cm.n - 1:
        raise ValueError(f"split={split!r} is invalid for fixed-split: allowed 1..{cm.n - 1}")
    cfg = codec or CodecConfig(method="raw")
    precision = canonical_precision(front_precision or default_precision(model))
    est = cm.evaluate(ell, 1, precision, cfg)
    return _finish("fixed-split", cm, est, cfg, accuracy, f"split {ell}",
                   f"fixed split at {ell}/{cm.n} with codec {cfg.spec()}")


def neurosurgeon_plan(model: ModelProfile, device: DeviceProfile, link: LinkState, budgets: Budgets,
                      accuracy: AccuracyTable | None = None, *, server: DeviceProfile | None = None,
                      front_precision: str | None = None, **kw) -> SplitPlan:
    """Minimum end-to-end latency per step over every split (0..n), lossless transfer."""
    cm = CostModel(model, device, link, budgets, server=server, codec_time=kw.get("codec_time"), payload_bytes=kw.get("payload_bytes"))
    precision = canonical_precision(front_precision or default_precision(model))
    raw = CodecConfig(method="raw")
    ctx = budgets.context_tokens if cm.ar else 0
    server_prec = default_precision(model)
    best = None
    for ell in range(cm.n + 1):
        if ell == cm.n:
            est = cm.evaluate(ell, None, precision, None)
        else:
            est = cm.evaluate(ell, 1, precision, raw if ell > 0 else None)
        srv_step = cm.range_s(cm.server, ell, cm.n, server_prec, ctx, 1) if ell < cm.n else 0.0
        e2e = est.step_latency_s + srv_step
        # Neurosurgeon's goal is latency; splits the edge cannot hold are out of reach.
        key = ("memory" in est.violations, e2e if math.isfinite(e2e) else math.inf, -ell)
        if best is None or key < best[0]:
            best = (key, est, e2e)
    _, est, e2e = best
    cfg = raw if 0 < est.split < cm.n else None
    plan = _finish("neurosurgeon", cm, est, cfg, accuracy, f"split {est.split}",
                   f"Neurosurgeon: split {est.split}/{cm.n} minimises edge + lossless transfer + server time "
                   f"({e2e * 1e3:,.1f} ms per step)")
    plan.extra["e2e_step_ms"] = e2e * 1e3 if math.isfinite(e2e) else None
    return plan
