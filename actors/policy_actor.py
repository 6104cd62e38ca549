"""`Policy`: the central planner's state. Devices register and report (link, memory,
measured times); it asks ``slicer.policies.plan`` (pure functions over snapshots) for each
device's ``SplitPlan`` and re-plans a device when its link or memory changes. Every
decision is logged with its tier and reason (``decisions()`` -> ``policy.jsonl``).

Plans travel as ``SplitPlan.to_dict()`` dicts (plain data: keys ``split``,
``offload_step``, ``codec_spec``, ``front_precision``, ``tier``, ``reason``...).
"""
from __future__ import annotations

import math
import threading
from dataclasses import dataclass, field
from typing import Any, Callable

from slicer.actors import telemetry as tel
from slicer.actors.fields import spec_field
from slicer.actors.protocol import now_s


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
    """Re-plan a device when its reported link or memory changes."""
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
    link: dict
    budgets: dict
    memory_cap_mib: float | None
    node: str = ""
    emulated: bool = False
    plan: dict | None = None
    measured: list = field(default_factory=list)
    state: Any = None
    """The planner's own per-device state (``policies.PolicyState``: hysteresis)."""


def _link_state(link: dict):
    from slicer.policies.link import LinkState

    return LinkState.from_spec(link)


def _budgets_of(cfg: PolicyConfig, device: Any, dev: "_Device"):
    from slicer.policies.schema import Budgets

    mem_bytes = float(device.memory_bytes)
    if dev.budgets.get("memory_mib") is not None:
        mem_bytes = min(mem_bytes, float(dev.budgets["memory_mib"]) * 2**20)
    if dev.memory_cap_mib is not None:
        mem_bytes = min(mem_bytes, float(dev.memory_cap_mib) * 2**20)
    lat_ms = dev.budgets.get("latency_ms") or cfg.default_latency_ms
    handoff_ms, ar_bytes = dev.budgets.get("handoff_ms"), dev.budgets.get("ar_buffer_bytes")
    return Budgets(latency_s=float(lat_ms) / 1e3, memory_bytes=mem_bytes,
                   new_tokens=int(cfg.new_tokens), prompt_tokens=int(cfg.prompt_tokens),
                   handoff_latency_s=None if handoff_ms is None else float(handoff_ms) / 1e3,
                   ar_buffer_bytes=None if ar_bytes is None else float(ar_bytes),
                   min_accuracy=dev.budgets.get("min_accuracy"))


def default_planner(cfg: PolicyConfig, profile: Any, dev: "_Device") -> dict:
    """``policies.PolicyState.update`` (``slicer.policies.plan`` with hysteresis) on this
    device's snapshot; returns ``SplitPlan.to_dict()``."""
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
    plan = dev.state.update(link=_link_state(dev.link), budgets=budgets)
    d = plan.to_dict()
    if cfg.name == "fixed" and cfg.offload_step is not None and d.get("offload_step") is not None:
        d["offload_step"] = cfg.offload_step  # the workload's fixed hand-off step
    d["device"] = dev.device_id
    return d


class Policy:
    """The policy actor's plain class (see the module docstring)."""

    def __init__(self, cfg: PolicyConfig, profile: Any, planner: Callable[[PolicyConfig, Any, _Device], dict] | None = None):
        self.cfg = cfg
        self.profile = profile
        self.planner = planner or default_planner
        self._devices: dict[str, _Device] = {}
        self._log: list[dict] = []
        self._lock = threading.Lock()

    def _decide(self, dev: _Device, reason: str, trigger: str) -> dict:
        old = dev.plan
        t0 = now_s()
        plan = self.planner(self.cfg, self.profile, dev)
        dev.plan = plan
        changed = old is None or any(old.get(k) != plan.get(k) for k in ("split", "offload_step", "codec_spec", "front_precision"))
        self._log.append({
            "t": t0, "decide_s": round(now_s() - t0, 6), "device": dev.device_id, "device_class": dev.device_class,
            "trigger": trigger, "reason": reason, "policy": self.cfg.name, "tier": plan.get("tier"),
            "binding": plan.get("binding"), "plan_reason": plan.get("reason"), "feasible": plan.get("feasible"),
            "split": plan.get("split"), "offload_step": plan.get("offload_step"), "codec": plan.get("codec_spec"),
            "sparsity": plan.get("sparsity"), "front_precision": plan.get("front_precision"),
            "predicted_latency_ms": plan.get("predicted_latency_ms"), "predicted_memory_mib": plan.get("predicted_memory_mib"),
            "link": dict(dev.link), "memory_cap_mib": dev.memory_cap_mib, "changed": changed,
            "previous": None if old is None else {k: old.get(k) for k in ("split", "offload_step", "codec_spec", "sparsity")},
        })
        return plan

    def register(self, device_id: str, info: dict, trace_ctx: dict | None = None) -> dict:
        """A device announces itself (class, link, budgets, memory cap, node); returns its plan."""
        with tel.span("policy.decide", carrier=trace_ctx or None, **{tel.ATTR_DEVICE: device_id, "slicer.call": "register"}) as sp:
            return _traced_plan(sp, self._register(device_id, info))

    def _register(self, device_id: str, info: dict) -> dict:
        with self._lock:
            dev = _Device(device_id, info["device_class"], dict(info.get("link") or {}), dict(info.get("budgets") or {}),
                          info.get("memory_cap_mib"), info.get("node", ""), bool(info.get("emulated", False)))
            self._devices[device_id] = dev
            return self._decide(dev, "first plan of the device", "register")

    def report(self, device_id: str, report: dict, trace_ctx: dict | None = None) -> dict:
        """A device reports ``link`` (dict), ``memory_cap_mib`` and/or ``measured``
        figures; a changed link or memory re-plans it. Returns its (new) plan."""
        with tel.span("policy.decide", carrier=trace_ctx or None, **{tel.ATTR_DEVICE: device_id, "slicer.call": "report"}) as sp:
            return _traced_plan(sp, self._report(device_id, report))

    def _report(self, device_id: str, report: dict) -> dict:
        with self._lock:
            dev = self._devices.get(device_id)
            if dev is None:
                raise KeyError(f"device {device_id!r} never registered with the policy")
            if report.get("measured"):
                dev.measured.append({"t": now_s(), **report["measured"]})
                del dev.measured[:-64]  # the latest figures are what a planner would use
                if self.cfg.adapt and self.cfg.replan and dev.state is not None and hasattr(dev.state, "observe"):
                    adapted = self._observe(dev, report["measured"])
                    if adapted is not None:
                        return adapted
            triggers = []
            if report.get("link") is not None and report["link"] != dev.link:
                old = dev.link
                dev.link = dict(report["link"])
                triggers.append(("link", "link changed: " + ", ".join(
                    f"{k} {old.get(k)} -> {v}" for k, v in dev.link.items() if old.get(k) != v)))
            if "memory_cap_mib" in report and report["memory_cap_mib"] != dev.memory_cap_mib:
                triggers.append(("memory", f"memory cap changed: {dev.memory_cap_mib} -> {report['memory_cap_mib']} MiB"))
                dev.memory_cap_mib = report["memory_cap_mib"]
            if triggers and self.cfg.replan:
                return self._decide(dev, "; ".join(r for _, r in triggers), "+".join(t for t, _ in triggers))
            return dict(dev.plan or {})

    def _observe(self, dev: _Device, m: dict) -> dict | None:
        """Measured goodput / compute of a device into its planner state; a re-plan is
        logged with the figure that caused it (trigger ``measured``)."""
        g, c, b, t = (float(m[k]) if _pos_finite(m.get(k)) else None
                      for k in ("goodput_bps", "compute_s", "payload_bytes", "transfer_s"))
        if b is None or t is None:
            b = t = None
        if g is None and c is None and b is None:
            return None
        ctx = m.get("context")
        ctx = int(ctx) if isinstance(ctx, int) and not isinstance(ctx, bool) and 0 <= ctx <= 10**7 else None
        state = dev.state
        t0 = now_s()
        plan, event = state.observe(goodput_bps=g, compute_s=c, context=ctx, payload_bytes=b, transfer_s=t)
        if event is None:
            return None
        old = dev.plan
        d = plan.to_dict()
        d["device"] = dev.device_id
        dev.plan = d
        why = (f"measured goodput {g / 1e6:.3g} Mbit/s (fit {event['goodput_est_mbps']:.3g} Mbit/s + "
               f"{event['overhead_est_ms']:.2f} ms per message)" if g is not None and event["goodput_est_mbps"]
               else "measured compute") + (f", compute x{event['compute_scale']:.2f} of predicted"
                                           if event.get("compute_scale") else "") + f" at step {m.get('step')}: {event['why']}"
        self._log.append({
            "t": t0, "decide_s": round(now_s() - t0, 6), "device": dev.device_id, "device_class": dev.device_class,
            "trigger": "measured", "reason": why, "policy": self.cfg.name, "tier": d.get("tier"),
            "binding": d.get("binding"), "plan_reason": d.get("reason"), "feasible": d.get("feasible"),
            "split": d.get("split"), "offload_step": d.get("offload_step"), "codec": d.get("codec_spec"),
            "sparsity": d.get("sparsity"), "front_precision": d.get("front_precision"),
            "predicted_latency_ms": d.get("predicted_latency_ms"), "predicted_memory_mib": d.get("predicted_memory_mib"),
            "link": dict(dev.link), "memory_cap_mib": dev.memory_cap_mib, "changed": True,
            "measured": {"goodput_mbps": event["goodput_mbps"], "goodput_est_mbps": event["goodput_est_mbps"],
                         "overhead_est_ms": event["overhead_est_ms"], "payload_bytes": b, "transfer_s": t,
                         "compute_scale": event["compute_scale"], "request_id": m.get("request_id"), "step": m.get("step")},
            "previous": None if old is None else {k: old.get(k) for k in ("split", "offload_step", "codec_spec", "sparsity")},
        })
        return {**d, "replanned": {"trigger": "measured", "goodput_mbps": event["goodput_mbps"],
                                   "goodput_est_mbps": event["goodput_est_mbps"], "step": m.get("step")}}

    def plan_for(self, device_id: str, trace_ctx: dict | None = None) -> dict:
        with self._lock:
            return dict(self._devices[device_id].plan or {})

    def decisions(self) -> list[dict]:
        """Every decision so far, oldest first (``policy.jsonl``)."""
        with self._lock:
            return [dict(d) for d in self._log]

    def devices(self) -> dict[str, dict]:
        with self._lock:
            return {k: {"device_class": d.device_class, "node": d.node, "link": d.link, "plan": d.plan,
                        "measured": d.measured[-1] if d.measured else None} for k, d in self._devices.items()}


def _traced_plan(sp: Any, plan: dict) -> dict:
    """Put the plan's split, sparsity and deciding tier on the policy span."""
    if sp is not None:
        for key, val in ((tel.ATTR_SPLIT, plan.get("split")), (tel.ATTR_SPARSITY, plan.get("sparsity")),
                         (tel.ATTR_TIER, plan.get("tier")), ("slicer.reason", plan.get("reason")),
                         ("slicer.replan_measured_goodput_mbps", (plan.get("replanned") or {}).get("goodput_est_mbps"))):
            if val is not None:
                sp.set_attribute(key, val)
    return plan


def _pos_finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and 0 < v < math.inf


def finite(v: float) -> float | None:
    return v if isinstance(v, (int, float)) and math.isfinite(v) else None
