"""One entry for every policy, and the small stateful wrapper the policy actor holds.

    plan(policy_name, model_profile, device, link, budgets, accuracy=None, ...) -> SplitPlan

``PolicyState`` keeps the latest plan and re-plans when a device reports a new link or
memory budget, with hysteresis: a plan that still meets the budgets is kept until a
better (deeper) one has been proposed ``patience`` times in a row; a plan that no longer
meets them is replaced at once. "Better" = more work on the edge, then more accurate.

``PolicyState.observe`` adapts to what the edge measures: goodput (payload bits over the
measured transfer time) and edge compute per token. Each is smoothed (EWMA, weight
``alpha`` on the newest sample); the planner then sees a link whose payloads take
``B / goodput`` and a device whose compute is scaled by measured / predicted. Hysteresis:
nothing is re-planned while the current plan still meets the budgets under the estimates
and the goodput estimate stays within ``dead_band`` of the one the plan was made for.
"""
from __future__ import annotations

import inspect
import math
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from slicer.codec import CodecConfig
from slicer.policies.accuracy import AccuracyTable
from slicer.policies.baselines import (
    cloud_only_plan,
    edge_only_plan,
    fixed_split_plan,
    neurosurgeon_plan,
)
from slicer.policies.devices import DeviceProfile
from slicer.policies.link import LinkState
from slicer.policies.models import CostModel
from slicer.policies.opsc import opsc_plan
from slicer.policies.profile import ModelProfile
from slicer.policies.schema import Budgets, SplitPlan
from slicer.policies.search import slicer_plan

POLICIES: dict[str, Callable[..., SplitPlan]] = {
    "slicer": slicer_plan,
    "opsc": opsc_plan,
    "cloud-only": cloud_only_plan,
    "edge-only": edge_only_plan,
    "fixed-split": fixed_split_plan,
    "neurosurgeon": neurosurgeon_plan,
}
ALIASES = {"ec": "cloud-only", "cloud": "cloud-only", "edge": "edge-only", "fixed-shallow": "fixed-split",
           "fixed": "fixed-split", "min-latency": "neurosurgeon"}


def policy_names() -> list[str]:
    return list(POLICIES)


def plan(policy_name: str, model_profile: ModelProfile, device: DeviceProfile, link: LinkState, budgets: Budgets,
         accuracy: AccuracyTable | None = None, **options: Any) -> SplitPlan:
    """The plan of ``policy_name`` for one device at one moment. ``options`` go to the
    policy: ``server`` (a ``DeviceProfile``; default: the edge device itself),
    ``front_precision``, ``space`` (slicer), ``split``/``codec`` (fixed-split),
    ``precisions``/``objective`` (opsc), ``codec_time`` and ``payload_bytes`` (injected
    models). Never raises for budgets it cannot meet: the plan says ``feasible=False``."""
    name = ALIASES.get(policy_name, policy_name)
    if name not in POLICIES:
        raise ValueError(f"policy {policy_name!r} is unknown: allowed {', '.join(POLICIES)}")
    fn = POLICIES[name]
    params = inspect.signature(fn).parameters
    if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        unknown = sorted(set(options) - set(params))
        if unknown:
            allowed = sorted(k for k, p in params.items() if p.kind is inspect.Parameter.KEYWORD_ONLY)
            raise ValueError(f"policy {name!r} takes no option(s) {unknown}: allowed {allowed}")
    return fn(model_profile, device, link, budgets, accuracy, **options)


def reassess(p: SplitPlan, model: ModelProfile, device: DeviceProfile, link: LinkState, budgets: Budgets,
             **options: Any) -> bool:
    """Does the plan ``p`` (same split, hand-off step, precision and codec) still meet
    ``budgets`` over ``link``?"""
    if not p.feasible:
        return False
    cm = CostModel(model, device, link, budgets, server=options.get("server"), codec_time=options.get("codec_time"),
                   payload_bytes=options.get("payload_bytes"))
    cfg = None
    if p.offload_step is not None and p.split > 0:
        cfg = p.codec if p.codec is not None else CodecConfig.parse(p.codec_spec)
    w = p.offload_step
    if cm.ar and w is not None:
        w = min(w, budgets.new_tokens)
    est = cm.evaluate(p.split, w, p.front_precision, cfg)
    return est.feasible


def _rank(p: SplitPlan) -> tuple:
    # Better = feasible, then more edge work (edge-only, deeper split, later hand-off),
    # then more accurate (e.g. lossless again once the link recovers).
    return (p.feasible, p.offload_step is None, p.split, p.offload_step or 0, p.accuracy or 0.0)


@dataclass
class PolicyState:
    """Holds one device's latest plan; call ``update`` on every device report."""

    policy: str
    model: ModelProfile
    device: DeviceProfile
    budgets: Budgets
    accuracy: AccuracyTable | None = None
    patience: int = 2
    """Consecutive proposals of a better plan needed before switching to it (upgrades
    wait; downgrades, when the current plan stops meeting the budgets, are immediate)."""
    options: dict | None = None
    current: SplitPlan | None = None
    link: LinkState | None = None
    _pending: SplitPlan | None = None
    _pending_count: int = 0
    switches: int = 0
    alpha: float = 0.5
    """Weight of the newest measurement in the smoothed estimates (EWMA)."""
    dead_band: float = 0.2
    """Hysteresis of ``observe``: a goodput estimate within this fraction of the one the
    plan was made for re-plans only if the plan breaks a budget."""
    goodput_est: float | None = None
    """Measured goodput in bit/s, fitted (None before the first measurement)."""
    overhead_est: float = 0.0
    """Measured per-message transfer time in seconds, fitted with the goodput."""
    window: int = 16
    """Payloads the link fit keeps."""
    planned_token_s: float | None = None
    _samples: list = field(default_factory=list)
    compute_scale: float | None = None
    """Smoothed measured / predicted edge compute (None before the first measurement)."""
    base_device: DeviceProfile | None = None
    _base_cm: CostModel | None = None
    """The cost model of ``base_device`` (``observe`` predicts compute with it every
    measured step; its range cache makes repeats free)."""

    def update(self, link: LinkState | None = None, memory_bytes: float | None = None,
               budgets: Budgets | None = None) -> SplitPlan:
        """Re-plan for a new link state and/or memory budget; returns the plan to use."""
        if budgets is not None:
            self.budgets = budgets
        if memory_bytes is not None:
            self.budgets = replace(self.budgets, memory_bytes=memory_bytes)
        if link is not None:
            self.link = link
        if self.link is None:
            raise ValueError("PolicyState.update needs a link the first time")
        opts = self.options or {}
        proposal = plan(self.policy, self.model, self.device, self.link, self.budgets, self.accuracy, **opts)
        cur = self.current
        if cur is None or not reassess(cur, self.model, self.device, self.link, self.budgets, **opts):
            return self._adopt(proposal)
        if _same(proposal, cur):
            self._pending, self._pending_count = None, 0
            return cur
        if _rank(proposal) > _rank(cur):
            if self._pending is not None and _same(self._pending, proposal):
                self._pending_count += 1
            else:
                self._pending, self._pending_count = proposal, 1
            if self._pending_count >= self.patience:
                return self._adopt(proposal)
            return cur
        # A worse proposal while the current plan still fits: keep the current one.
        self._pending, self._pending_count = None, 0
        return cur

    def observe(self, goodput_bps: float | None = None, compute_s: float | None = None,
                context: int | None = None, payload_bytes: float | None = None,
                transfer_s: float | None = None) -> tuple[SplitPlan, dict | None]:
        """Feed one measurement; returns (plan to use, event or None).

        ``payload_bytes`` and ``transfer_s``: one payload and its measured transfer. The
        link is fitted as ``t = t0 + B / goodput`` over the recent payloads (weighted least
        squares, weight ``(1 - alpha)^age``): a per-message time ``t0`` (protocol, wake-ups)
        and the goodput. Without the per-message term, small payloads measure a low
        goodput, the planner compresses harder, payloads shrink and the measured goodput
        falls further (seen on an emulated 20 Mbit/s link: 2.7 -> 0.3 Mbit/s). With only
        ``goodput_bps`` (no payload size), it is smoothed alone (EWMA).
        ``compute_s``: the edge's measured compute of one decode step of the current plan's
        front segment at ``context`` tokens. The event says what was measured and why."""
        if self.current is None or self.link is None:
            raise ValueError("PolicyState.observe needs a first plan (call update first)")
        for name, v in (("goodput_bps", goodput_bps), ("compute_s", compute_s), ("payload_bytes", payload_bytes),
                        ("transfer_s", transfer_s)):
            if v is not None and not (isinstance(v, (int, float)) and not isinstance(v, bool) and 0 < v < math.inf):
                raise ValueError(f"measured {name}={v!r} is invalid: allowed a finite number > 0")
        if self.base_device is None:
            self.base_device = self.device
        cur = self.current
        if payload_bytes is not None and transfer_s is not None:
            self._samples.append((float(payload_bytes) * 8.0, float(transfer_s)))
            del self._samples[:-self.window]
            self.goodput_est, self.overhead_est = _fit_link(self._samples, self.alpha)
        elif goodput_bps is not None:
            g = float(goodput_bps)
            self.goodput_est = g if self.goodput_est is None else self.alpha * g + (1 - self.alpha) * self.goodput_est
        if compute_s is not None and cur.split > 0:
            ctx = context if context is not None else self.budgets.context_tokens
            if self._base_cm is None:  # range_s reads neither the link nor the budgets
                self._base_cm = CostModel(self.model, self.base_device, self.link, self.budgets)
            predicted = self._base_cm.range_s(self.base_device, 0, cur.split if cur.offloads else self.model.num_layers,
                                   cur.front_precision, int(ctx), 1)
            if predicted > 0:
                r = float(compute_s) / predicted
                self.compute_scale = r if self.compute_scale is None else self.alpha * r + (1 - self.alpha) * self.compute_scale
                self.device = self.base_device.replace(slowdown=self.base_device.slowdown * self.compute_scale)
        link = self.link
        if self.goodput_est is not None:
            link = self.link.replace(goodput_bps=self.goodput_est, rtt_s=self.overhead_est)
        opts = self.options or {}
        holds = reassess(cur, self.model, self.device, link, self.budgets, **opts)
        per_token = self._token_time(cur)
        moved = per_token is not None and (self.planned_token_s is None or
                                           abs(per_token / self.planned_token_s - 1) > self.dead_band)
        if holds and not moved:
            return cur, None
        if not holds and not cur.feasible:
            # Nothing met the budgets before either: do not churn between best-effort
            # plans on every sample; a feasible plan replaces it at once.
            proposal = plan(self.policy, self.model, self.device, link, self.budgets, self.accuracy, **opts)
            if not proposal.feasible:
                self.link = link
                return cur, None
        new = self.update(link=link)
        if _same(new, cur):
            return new, None
        self.planned_token_s = self._token_time(new)
        event = {
            "trigger": "measured", "goodput_mbps": None if goodput_bps is None else goodput_bps / 1e6,
            "goodput_est_mbps": None if self.goodput_est is None else self.goodput_est / 1e6,
            "overhead_est_ms": self.overhead_est * 1e3, "compute_scale": self.compute_scale, "plan_held": holds,
            "why": ("the current plan breaks a budget under the measured figures" if not holds else
                    f"the measured link moved the plan's transfer time beyond the ±{self.dead_band:.0%} dead band "
                    f"and a better plan held for {self.patience} reports"),
        }
        return new, event

    def _token_time(self, p: SplitPlan) -> float | None:
        """Transfer seconds of one decode payload of ``p`` under the link estimate."""
        if self.goodput_est is None or not p.offloads:
            return None
        return self.overhead_est + max(p.bytes_per_token, 1.0) * 8.0 / self.goodput_est

    def _adopt(self, p: SplitPlan) -> SplitPlan:
        if self.current is not None and not _same(self.current, p):
            self.switches += 1
        self.current = p
        self._pending, self._pending_count = None, 0
        return p


def _fit_link(samples: list[tuple[float, float]], alpha: float) -> tuple[float, float]:
    """(goodput bit/s, per-message s) from (bits, seconds) samples, newest last: weighted
    least squares of ``t = t0 + bits / g`` with weight ``(1 - alpha)^age``; where the sizes
    do not spread (or the fit is not positive), ``t0 = 0`` and ``g = Σw·bits / Σw·t``."""
    n = len(samples)
    w = [(1.0 - alpha) ** (n - 1 - i) for i in range(n)]
    sw = sum(w)
    mb = sum(wi * b for wi, (b, _) in zip(w, samples)) / sw
    mt = sum(wi * t for wi, (_, t) in zip(w, samples)) / sw
    var = sum(wi * (b - mb) ** 2 for wi, (b, _) in zip(w, samples)) / sw
    if n >= 3 and var > (0.25 * mb) ** 2:
        cov = sum(wi * (b - mb) * (t - mt) for wi, (b, t) in zip(w, samples)) / sw
        slope = cov / var  # seconds per bit
        t0 = mt - slope * mb
        if slope > 0 and t0 >= 0:
            return 1.0 / slope, t0
    # too few or too alike payloads, a negative intercept or a non-positive slope: no
    # measurable per-message time
    return mb / mt, 0.0


def _same(a: SplitPlan, b: SplitPlan) -> bool:
    return a.key == b.key and a.feasible == b.feasible
