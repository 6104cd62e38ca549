"""`Policy`: the central planner's state. Devices register (class, link, budgets, memory
cap) and report (link, measured times); it asks ``slicer.policies.plan`` (pure functions
over snapshots) for each device's ``SplitPlan`` and re-plans a device when its link changes. Every
decision is logged with its tier and reason (``decisions()`` -> ``policy.jsonl``).

Devices register with a ``DeviceInfo`` and report with a ``Report``; plans travel as
``Plan`` objects (``slicer.actors.protocol``). Decisions are JSON rows (``policy.jsonl``).
"""
from __future__ import annotations

import math
import threading
from dataclasses import dataclass, replace
from typing import Any, Callable

from slicer.actors import telemetry as tel
from slicer.actors.fields import spec_field
from slicer.actors.protocol import (
    BudgetSpec,
    DeviceInfo,
    LinkSpec,
    Measured,
    Plan,
    Report,
    now_s,
    to_json,
)
from slicer.policies.schema import to_ms

#: The policies a workload may name (``slicer.policies.plan``'s, ``fixed`` for ``fixed-split``).
POLICIES = ("slicer", "cloud-only", "edge-only", "fixed", "neurosurgeon", "opsc")


@dataclass(frozen=True)
class PolicyConfig:
    """What the policy plans with: the workload's ``policy:`` section (its YAML fields,
    declared once with their bounds, ``slicer.actors.fields``) and the run's figures the
    runner fills in (``yaml=False``; ``slicer.orchestrator.runner.policy_config``)."""

    name: str = spec_field("slicer", choices=POLICIES)
    """One of ``slicer``, ``cloud-only``, ``edge-only``, ``fixed``, ``neurosurgeon``, ``opsc``."""
    split: int | None = spec_field(None, lo=0, hi=10000, integer=True)
    """``fixed`` only: the split layer ℓ (0..10000, then checked against the model: 1..n-1)."""
    offload_step: int | None = spec_field(None, lo=1, hi=100000, integer=True)
    """``fixed`` only: the offload step w (1 = per-token split from the first step; 1..100000)."""
    replan: bool = spec_field(True)
    """Re-plan a device when its reported link changes."""
    adapt: bool = spec_field(False)
    """Re-plan from what the devices measure (goodput, compute per token), smoothed with
    hysteresis (``policies.PolicyState.observe``), also between two steps of a request
    (codec) or two requests (split)."""
    codec: str | None = spec_field(None, yaml=False)
    """A codec spec forced by the workload (the plan is then made for it); None: chosen."""
    new_tokens: int = spec_field(8, yaml=False)
    """Tokens each request generates (sizes KV caches and Eq. 5)."""
    prompt_tokens: int = spec_field(16, yaml=False)
    """Largest prompt length of the workload."""
    front_precision: str | None = spec_field(None, yaml=False)
    """A front precision forced by the workload; None: the policy's."""
    default_latency_ms: float = spec_field(1000.0, yaml=False)
    """Per-token latency budget of a device whose workload gives none."""
    extra: dict = spec_field(default_factory=dict, yaml=False)
    """Further keyword arguments for ``slicer.policies.plan``."""


@dataclass
class _Device:
    device_id: str
    device_class: str
    link: LinkSpec
    budgets: BudgetSpec
    memory_cap_mib: float | None
    plan: Plan | None = None
    state: Any = None
    """The planner's own per-device state (``policies.PolicyState``: hysteresis)."""


def _budgets_of(cfg: PolicyConfig, device: Any, dev: "_Device"):
    from slicer.policies.schema import Budgets

    mem_bytes = float(device.memory_bytes)
    if dev.budgets.memory_mib is not None:
        mem_bytes = min(mem_bytes, float(dev.budgets.memory_mib) * 2**20)
    if dev.memory_cap_mib is not None:
        mem_bytes = min(mem_bytes, float(dev.memory_cap_mib) * 2**20)
    lat_ms = dev.budgets.latency_ms or cfg.default_latency_ms
    handoff_ms, ar_bytes = dev.budgets.handoff_ms, dev.budgets.ar_buffer_bytes
    return Budgets(latency_s=float(lat_ms) / 1e3, memory_bytes=mem_bytes,
                   new_tokens=int(cfg.new_tokens), prompt_tokens=int(cfg.prompt_tokens),
                   handoff_latency_s=None if handoff_ms is None else float(handoff_ms) / 1e3,
                   ar_buffer_bytes=None if ar_bytes is None else float(ar_bytes),
                   min_accuracy=dev.budgets.min_accuracy)


def default_planner(cfg: PolicyConfig, profile: Any, dev: "_Device") -> Plan:
    """``policies.PolicyState.update`` (``slicer.policies.plan`` with hysteresis) on this
    device's snapshot."""
    from slicer.codec import CodecConfig
    from slicer.policies.api import PolicyState
    from slicer.policies.devices import get_device

    device = get_device(dev.device_class)
    budgets = _budgets_of(cfg, device, dev)
    if dev.state is None:
        opts: dict[str, Any] = dict(cfg.extra)
        name = cfg.name
        if name == "fixed":
            name = "fixed-split"
            opts["split"] = cfg.split
            if cfg.codec is not None:
                opts["codec"] = CodecConfig.parse(cfg.codec)
        if cfg.front_precision is not None:
            opts["front_precision"] = cfg.front_precision
        dev.state = PolicyState(name, profile, device, budgets, options=opts)
    return _for_device(cfg, dev, dev.state.update(link=dev.link.state(), budgets=budgets))


def _for_device(cfg: PolicyConfig, dev: "_Device", plan: Plan) -> Plan:
    if cfg.name == "fixed" and cfg.offload_step is not None and plan.offload_step is not None:
        plan = replace(plan, offload_step=cfg.offload_step)  # the workload's fixed hand-off step
    return replace(plan, device=dev.device_id)


class Policy:
    """The policy actor's plain class (see the module docstring)."""

    def __init__(self, cfg: PolicyConfig, profile: Any, planner: Callable[[PolicyConfig, Any, _Device], Plan] | None = None):
        self.cfg = cfg
        self.profile = profile
        self.planner = planner or default_planner
        self._devices: dict[str, _Device] = {}
        self._log: list[dict] = []
        self._lock = threading.Lock()

    def _log_decision(self, dev: _Device, old: Plan | None, plan: Plan, t0: float, trigger: str, reason: str,
                      changed: bool | None = None, measured: dict | None = None) -> None:
        """One ``policy.jsonl`` row: what was decided, why, and what it replaced."""
        row = {
            "t": t0, "decide_s": round(now_s() - t0, 6), "device": dev.device_id, "device_class": dev.device_class,
            "trigger": trigger, "reason": reason, "policy": self.cfg.name, "tier": plan.tier,
            "binding": plan.binding, "plan_reason": plan.reason, "feasible": plan.feasible,
            "split": plan.split, "offload_step": plan.offload_step, "codec": plan.codec_spec,
            "sparsity": plan.sparsity, "front_precision": plan.front_precision,
            "predicted_latency_ms": to_ms(plan.predicted_latency_s),
            "predicted_memory_mib": plan.predicted_memory_bytes / 2**20,
            "link": to_json(dev.link), "memory_cap_mib": dev.memory_cap_mib,
            "changed": (old is None or old.key != plan.key) if changed is None else changed,
            "previous": None if old is None else {"split": old.split, "offload_step": old.offload_step,
                                                  "codec_spec": old.codec_spec, "sparsity": old.sparsity},
        }
        if measured is not None:
            row["measured"] = measured
        self._log.append(row)

    def _decide(self, dev: _Device, reason: str, trigger: str) -> Plan:
        old = dev.plan
        t0 = now_s()
        plan = self.planner(self.cfg, self.profile, dev)
        dev.plan = plan
        self._log_decision(dev, old, plan, t0, trigger, reason)
        return plan

    def register(self, device_id: str, info: DeviceInfo, trace_ctx: dict | None = None) -> Plan:
        """A device announces itself (class, link, budgets, memory cap, node); returns its plan."""
        with tel.span("policy.decide", carrier=trace_ctx or None, **{tel.ATTR_DEVICE: device_id, "slicer.call": "register"}) as sp:
            return _traced_plan(sp, self._register(device_id, info))

    def _register(self, device_id: str, info: DeviceInfo) -> Plan:
        with self._lock:
            dev = _Device(device_id, info.device_class, info.link, info.budgets, info.memory_cap_mib)
            self._devices[device_id] = dev
            return self._decide(dev, "first plan of the device", "register")

    def report(self, device_id: str, report: Report, trace_ctx: dict | None = None) -> Plan:
        """A device reports a new link and/or measured figures; a changed link re-plans
        it (and measured figures, with ``adapt``). Returns its (new) plan."""
        with tel.span("policy.decide", carrier=trace_ctx or None, **{tel.ATTR_DEVICE: device_id, "slicer.call": "report"}) as sp:
            return _traced_plan(sp, self._report(device_id, report))

    def _report(self, device_id: str, report: Report) -> Plan:
        with self._lock:
            dev = self._devices.get(device_id)
            if dev is None:
                raise KeyError(f"device {device_id!r} never registered with the policy")
            if report.measured is not None:
                if self.cfg.adapt and self.cfg.replan and dev.state is not None and hasattr(dev.state, "observe"):
                    adapted = self._observe(dev, report.measured)
                    if adapted is not None:
                        return adapted
            if report.link is not None and report.link != dev.link:
                old, dev.link = dev.link, report.link
                if self.cfg.replan:
                    return self._decide(dev, "link changed: " + dev.link.changed(old), "link")
            return dev.plan

    def _observe(self, dev: _Device, m: Measured) -> Plan | None:
        """Measured goodput / compute of a device into its planner state; a re-plan is
        logged with the figure that caused it (trigger ``measured``)."""
        g, c, b, t = (float(v) if _pos_finite(v) else None
                      for v in (m.goodput_bps, m.compute_s, m.payload_bytes, m.transfer_s))
        if b is None or t is None:
            b = t = None
        if g is None and c is None and b is None:
            return None
        ctx = m.context
        ctx = int(ctx) if isinstance(ctx, int) and not isinstance(ctx, bool) and 0 <= ctx <= 10**7 else None
        t0 = now_s()
        plan, event = dev.state.observe(goodput_bps=g, compute_s=c, context=ctx, payload_bytes=b, transfer_s=t)
        if event is None:
            return None
        old = dev.plan
        dev.plan = _for_device(self.cfg, dev, plan)
        why = (f"measured goodput {g / 1e6:.3g} Mbit/s (fit {event['goodput_est_mbps']:.3g} Mbit/s + "
               f"{event['overhead_est_ms']:.2f} ms per message)" if g is not None and event["goodput_est_mbps"]
               else "measured compute") + (f", compute x{event['compute_scale']:.2f} of predicted"
                                           if event.get("compute_scale") else "") + f" at step {m.step}: {event['why']}"
        self._log_decision(dev, old, dev.plan, t0, "measured", why, changed=True, measured={
            "goodput_mbps": event["goodput_mbps"], "goodput_est_mbps": event["goodput_est_mbps"],
            "overhead_est_ms": event["overhead_est_ms"], "payload_bytes": b, "transfer_s": t,
            "compute_scale": event["compute_scale"], "request_id": m.request_id, "step": m.step})
        # the answer (not the stored plan) says a measurement made it: its span shows the figure
        return replace(dev.plan, replanned_goodput_mbps=event["goodput_est_mbps"])

    def plan_for(self, device_id: str, trace_ctx: dict | None = None) -> Plan | None:
        with self._lock:
            return self._devices[device_id].plan

    def decisions(self) -> list[dict]:
        """Every decision so far, oldest first (``policy.jsonl``)."""
        with self._lock:
            return [dict(d) for d in self._log]



def _traced_plan(sp: Any, plan: Plan) -> Plan:
    """Put the plan's split, sparsity and deciding tier on the policy span."""
    if sp is not None:
        for key, val in ((tel.ATTR_SPLIT, plan.split), (tel.ATTR_SPARSITY, plan.sparsity),
                         (tel.ATTR_TIER, plan.tier), ("slicer.reason", plan.reason),
                         ("slicer.replan_measured_goodput_mbps", plan.replanned_goodput_mbps)):
            if val is not None:
                sp.set_attribute(key, val)
    return plan


def _pos_finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and 0 < v < math.inf


def finite(v: float) -> float | None:
    return v if isinstance(v, (int, float)) and math.isfinite(v) else None
