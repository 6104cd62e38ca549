"""The protocol: the typed values that cross between driver, edge, server and policy,
and their one serialisation.

Every value here is a frozen (or, for a record being filled in, plain) dataclass passed
through Ray as it is: Ray pickles it, and it is a trusted cluster-internal value. What a
*device* sends the server is never one of these: features travel as the codec's wire
format (``slicer.codec.encode``: versioned, checksummed, never pickle) and cloud-only
token ids as ``slicer.actors.models.generate.encode_ids`` (magic, version, count, int32
ids); the server checks every byte of those.

The path of a request::

    Workload (YAML) ─ parse ─► DeviceGroup{LinkSpec, BudgetSpec, EmulationSpec}, Request
    edge ── DeviceInfo ─► policy ── Plan (SplitPlan: split, offload step, CodecConfig,
                                          front precision, Mode) ─► edge
    edge ── payload bytes ─► server ── StepResult ─► edge  (one per step: StepRecord)
    edge ── Report{Measured} ─► policy ── Plan ─► edge
    edge ── RequestRecord ─► driver ── to_json ─► requests.jsonl

``to_json`` / ``from_json`` are the only place these become dicts with string keys
(the run folder's JSON, read back by ``slicer show``/``compare``).

This module imports no torch (the workload parser uses its specs).
"""
from __future__ import annotations

import dataclasses
import enum
import functools
import math
import sys
import time
import types
import typing
from dataclasses import dataclass, field
from typing import Any

from slicer.actors.fields import spec_field
from slicer.policies.link import (
    DEFAULT_BANDWIDTH_HZ,
    DEFAULT_EPSILON,
    DEFAULT_SNR,
    LinkState,
    db_to_linear,
    linear_to_db,
)
from slicer.policies.schema import Budgets, Mode, PlanKey, SplitPlan

#: The policy's answer for one device (``slicer.policies.schema.SplitPlan``: split,
#: offload step, ``codec`` (a ``CodecConfig``), front precision, ``mode``...).
Plan = SplitPlan

__all__ = [
    "AdmissionError", "BudgetSpec", "Budgets", "DeviceInfo", "EmulationSpec", "LinkChange", "LinkSpec", "LinkState",
    "Measured", "Mode", "Plan", "Replan", "Report", "Request", "RequestRecord", "SessionRebuild", "StepRecord",
    "StepResult",
    "from_json", "now_s", "to_json",
]


class AdmissionError(RuntimeError):
    """The server refused a session or a step (limits, a bad payload, an unknown
    session). The message names the device, the limit or the defect."""


def now_s() -> float:
    """Wall-clock seconds (comparable across processes of one machine: per-hop
    timestamps in records use it, so the tracing view can order hops)."""
    return time.time()


def __getattr__(name: str) -> Any:  # PEP 562: the id codec without importing torch up front
    if name in ("encode_ids", "decode_ids"):
        from slicer.actors.models import generate

        return getattr(generate, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# ----------------------------------------------------------------------------- a device's setting


#: Bounds of the link's figures, shared by ``LinkSpec`` and ``LinkChange``.
_RATE: dict[str, Any] = {"lo": 0, "lo_open": True}
_SNR: dict[str, Any] = {"lo": -50, "hi": 100}
_EPSILON: dict[str, Any] = {"lo": 0, "hi": 1, "lo_open": True, "hi_open": True}
_BANDWIDTH: dict[str, Any] = {"lo": 0, "lo_open": True}
#: A positive figure (no tighter bound than ``slicer.actors.fields.MAX_NUMBER``).
_POSITIVE: dict[str, Any] = {"lo": 0, "lo_open": True}


@dataclass(frozen=True)
class LinkSpec:
    """A device's link to the server (SLICER Eq. 1 parameters, in the workload's units).
    The defaults are the paper's, the same ones ``slicer plan`` and ``slicer sweep`` use
    (``slicer.policies.link``)."""

    rate_mbps: float = spec_field(20.0, **_RATE)
    """Transmission rate R in megabits per second (20: below the default channel's
    capacity W·log2(1+γ) = 34.6 Mbit/s, so a device with no link given is feasible; > 0)."""
    snr_db: float = spec_field(linear_to_db(DEFAULT_SNR), **_SNR)
    """Average signal-to-noise ratio γ in dB (10 dB; -50..100)."""
    epsilon: float = spec_field(DEFAULT_EPSILON, **_EPSILON)
    """Outage probability target ε in (0, 1) of the ε-outage latency (0.001)."""
    bandwidth_hz: float = spec_field(DEFAULT_BANDWIDTH_HZ, **_BANDWIDTH)
    """Channel bandwidth W in hertz (10 MHz; > 0)."""

    def state(self) -> LinkState:
        """The planner's view (bit/s, linear SNR)."""
        return LinkState(rate_bps=self.rate_mbps * 1e6, bandwidth_hz=self.bandwidth_hz,
                         snr=db_to_linear(self.snr_db), epsilon=self.epsilon)

    def changed(self, other: LinkSpec) -> str:
        """``"rate_mbps 20 -> 2, ..."``: what differs from ``other`` (empty: nothing)."""
        return ", ".join(f"{f.name} {getattr(other, f.name)} -> {getattr(self, f.name)}"
                         for f in dataclasses.fields(self) if getattr(other, f.name) != getattr(self, f.name))


@dataclass(frozen=True)
class LinkChange:
    """A scripted change of a device's link, applied before one of its requests."""

    at_request: int = spec_field(lo=0, integer=True)
    """Index (0-based, >= 0) of the device's request before which the link changes."""
    rate_mbps: float | None = spec_field(None, **_RATE)
    """New rate (> 0); None keeps the current one."""
    snr_db: float | None = spec_field(None, **_SNR)
    """New SNR (-50..100 dB); None keeps the current one."""
    epsilon: float | None = spec_field(None, **_EPSILON)
    """New outage target (in (0, 1)); None keeps the current one."""
    bandwidth_hz: float | None = spec_field(None, **_BANDWIDTH)
    """New bandwidth (> 0); None keeps the current one."""

    def apply(self, link: LinkSpec) -> LinkSpec:
        changes = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                   if f.name != "at_request" and getattr(self, f.name) is not None}
        return dataclasses.replace(link, **changes)


@dataclass(frozen=True)
class BudgetSpec:
    """What a device may spend per request."""

    latency_ms: float | None = spec_field(None, **_POSITIVE)
    """Latency budget D per output token in milliseconds (the planner's per-step budget,
    Eq. 2; the hand-off step gets w times it, Eq. 5; > 0); None: the policy's default (1 s)."""
    memory_mib: float | None = spec_field(None, **_POSITIVE)
    """Memory budget M of the device for weights + KV cache in MiB (> 0); None: unconstrained."""
    handoff_ms: float | None = spec_field(None, **_POSITIVE)
    """Budget of the hand-off step L_AR(ℓ, w, R) (Eq. 5) in milliseconds; None: w times
    ``latency_ms`` (the average per-token latency up to the hand-off meets D). > 0."""
    ar_buffer_bytes: float | None = spec_field(None, **_POSITIVE)
    """M_ar: cap on the hand-off payload B(x_ℓ^w) in bytes (Eq. 6; > 0); None: no cap."""
    min_accuracy: float | None = spec_field(None, lo=0, hi=1)
    """Accuracy floor in [0, 1]: settings the accuracy table (or the prior) scores below it
    are never chosen; None: no floor."""


@dataclass(frozen=True)
class EmulationSpec:
    """Emulation of a device class and its link on one machine. Figures that depend on
    it are labelled ``emulated`` in every record."""

    slowdown: float = spec_field(1.0, lo=1, hi=1000)
    """The device computes this many times slower than this machine: after each measured
    compute interval it sleeps ``(slowdown - 1) ×`` that interval. 1 = no emulation (1..1000)."""
    memory_mib: float | None = spec_field(None, **_POSITIVE)
    """Emulated memory cap in MiB: a plan whose front segment and KV cache exceed it is
    refused by the device (and the policy is told; > 0). None: no cap."""
    link: bool = spec_field(False)
    """Delay each payload by Eq. 1's ε-outage latency of its real size over ``link``
    (the wire is loopback otherwise)."""

    @property
    def active(self) -> bool:
        return self.slowdown != 1.0 or self.memory_mib is not None or self.link


# ----------------------------------------------------------------------------- edge <-> policy


@dataclass(frozen=True)
class DeviceInfo:
    """What a device tells the policy when it registers."""

    device_class: str
    link: LinkSpec = field(default_factory=LinkSpec)
    budgets: BudgetSpec = field(default_factory=BudgetSpec)
    memory_cap_mib: float | None = None
    """The emulated memory cap (``EmulationSpec.memory_mib``), if any."""


@dataclass(frozen=True)
class Measured:
    """What a device measured: after a step that sent (``step`` set: goodput, transfer,
    compute of that step) or after a request (totals)."""

    request_id: str = ""
    step: int | None = None
    context: int | None = None
    """Tokens on the server after this step."""
    goodput_bps: float | None = None
    """Payload bits over the measured transfer seconds."""
    payload_bytes: int | None = None
    transfer_s: float | None = None
    compute_s: float | None = None
    """The edge's compute of one decode step (emulated slowdown included)."""
    edge_compute_s: float | None = None
    """Totals of a request: edge compute, wire, bytes, latency."""
    bytes_sent: int | None = None
    latency_s: float | None = None


@dataclass(frozen=True)
class Report:
    """A device's report to the policy: a new link and/or measured figures."""

    link: LinkSpec | None = None
    """The device's link now (a scripted change): the policy re-plans when it differs."""
    measured: Measured | None = None


# ----------------------------------------------------------------------------- requests and steps


@dataclass(frozen=True)
class Request:
    """One request of one device."""

    request_id: str
    """``<device id>/r<index>``."""
    index: int
    """The device's 0-based request number (link changes key on it)."""
    prompt_ids: tuple[int, ...]
    max_new_tokens: int
    prompt_index: int = 0
    """Which of the workload's prompts it is."""


@dataclass(frozen=True)
class StepResult:
    """The server's answer to one step: the next token and what the step cost there."""

    token: int
    position: int
    """Server-side position of the payload's first token."""
    server_recv_t: float
    """Wall clock when the step reached the server."""
    decode_s: float
    server_compute_s: float
    """This step's share of its batch's compute (by new-token count)."""
    server_start_t: float
    server_done_t: float
    batch_size: int
    queue_s: float = 0.0


@dataclass(frozen=True)
class StepRecord:
    """One step of a request as the edge saw it (seconds; ``*_t`` wall-clock). A
    ``local`` step (the edge made the token itself) has no payload fields."""

    step: int
    kind: str
    """``local``, ``prefill``, ``decode`` or ``handoff``."""
    tokens: int
    """Tokens the step computed (the prompt's in a prefill, all so far in a hand-off)."""
    token: int
    edge_compute_s: float = 0.0
    edge_compute_emulated_s: float = 0.0
    encode_s: float = 0.0
    payload_bytes: int | None = None
    elements: int | None = None
    bits_per_element: float | None = None
    transfer_emulated_s: float = 0.0
    send_t: float | None = None
    server_recv_t: float | None = None
    queue_s: float = 0.0
    decode_s: float | None = None
    server_compute_s: float | None = None
    server_start_t: float | None = None
    batch_size: int | None = None
    server_done_t: float | None = None
    recv_t: float | None = None

    @property
    def sent(self) -> bool:
        return self.payload_bytes is not None


@dataclass(frozen=True)
class SessionRebuild:
    """A server session the edge rebuilt by replay after the server was lost
    (``slicer.actors.recovery``)."""

    request_id: str
    replayed_steps: int
    """Steps re-sent to the new session before the failed one."""
    at_position: int
    """Server-side position of the step that found the server gone."""
    seconds: float
    cause: str


@dataclass(frozen=True)
class Replan:
    """A re-plan during a request (the policy answered a measurement with a new plan)."""

    step: int
    goodput_mbps: float
    before: PlanKey
    """``Plan.key`` before: split, offload step, front precision, codec spec."""
    after: PlanKey
    applies: str
    """``next step`` (a codec change) or ``next request`` (a split change)."""


@dataclass
class RequestRecord:
    """What one request did: its plan, its tokens, its bytes and every step's hops."""

    request_id: str
    device: str
    index: int
    ok: bool = False
    error: str | None = None
    device_class: str | None = None
    node: str = ""
    prompt_tokens: int = 0
    mode: Mode | None = None
    split: int | None = None
    offload_step: int | None = None
    codec: str | None = None
    """The codec spec the features used (``tokens``: cloud-only, ``none``: edge-only)."""
    front_precision: str | None = None
    plan_tier: int | None = None
    plan_reason: str = ""
    plan_feasible: bool | None = None
    plan_binding: str | None = None
    link: LinkSpec | None = None
    link_changed: bool = False
    emulated: bool = False
    emulation: EmulationSpec | None = None
    predicted_memory_bytes: float = 0.0
    max_new_tokens_requested: int = 0
    capped: str | None = None
    """Why fewer tokens than asked were generated (the plan's context), or None."""
    replans: list[Replan] = field(default_factory=list)
    tokens: list[int] = field(default_factory=list)
    new_tokens: int = 0
    steps: list[StepRecord] = field(default_factory=list)
    t_start: float = 0.0
    t_end: float = 0.0
    latency_s: float = 0.0
    bytes_sent: int = 0
    payloads: int = 0
    bits_per_element: float | None = None
    edge_compute_s: float = 0.0
    edge_compute_emulated_s: float = 0.0
    encode_s: float = 0.0
    transfer_s: float = 0.0
    transfer_emulated_s: float = 0.0
    server_queue_s: float = 0.0
    server_compute_s: float = 0.0
    edge_rss_bytes: int | None = None
    """The edge process's resident memory after the request (measured)."""
    edge_weight_bytes: int | None = None
    """Bytes of the weights the edge loaded (segment-only: the units its plans ran)."""
    transport: str | None = None
    """How its steps reached the server: ``direct`` (the step channel), ``ray`` (actor
    calls; ``transport_note`` says why), ``in-process``; None when none was sent."""
    transport_note: str | None = None
    """Why a cluster edge's steps went as Ray calls."""
    server_recoveries: list[SessionRebuild] = field(default_factory=list)
    """Sessions the edge rebuilt by replay after a server restart (``actors.recovery``)."""
    attempts: int = 1
    """1 + how often the driver resubmitted the request after its actor died."""
    recovered_from: list[str] = field(default_factory=list)
    text: str | None = None
    """The generated tokens decoded, when the model has a tokenizer."""

    def add_totals(self) -> None:
        """Totals over ``steps`` (bytes, elements, compute, wire, server)."""
        sent = [s for s in self.steps if s.sent]
        self.bytes_sent = sum(s.payload_bytes for s in sent)
        elements = sum(s.elements or 0 for s in sent)
        wire = 0.0
        for s in sent:
            srv = (s.server_done_t or 0) - (s.server_recv_t or 0)
            wire += max(0.0, ((s.recv_t or 0) - (s.send_t or 0)) - srv)
        self.payloads = len(sent)
        self.bits_per_element = round(self.bytes_sent * 8 / elements, 4) if elements else None
        self.edge_compute_s = round(sum(s.edge_compute_s for s in self.steps), 6)
        self.edge_compute_emulated_s = round(sum(s.edge_compute_emulated_s for s in self.steps), 6)
        self.encode_s = round(sum(s.encode_s for s in sent), 6)
        self.transfer_s = round(wire, 6)
        self.transfer_emulated_s = round(sum(s.transfer_emulated_s for s in sent), 6)
        self.server_queue_s = round(sum(s.queue_s for s in sent), 6)
        self.server_compute_s = round(sum(s.server_compute_s or 0.0 for s in sent), 6)

    @classmethod
    def failed(cls, request: Request, device: str, device_class: str | None, error: str, node: str = "") -> RequestRecord:
        """The record of a request that produced nothing (its actor died for good, or the
        run stalled): ``ok`` False and the cause."""
        return cls(request_id=request.request_id, device=device, index=request.index, device_class=device_class,
                   error=error, node=node)


# ----------------------------------------------------------------------------- serialisation


def to_json(obj: Any) -> Any:
    """A protocol value as JSON-ready data: dataclasses become dicts (field names as
    keys), enums their value, tuples lists, non-finite floats None. The one place
    these values become dicts."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        if isinstance(obj, SplitPlan):
            return obj.to_dict()
        return {f.name: to_json(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, enum.Enum):
        return obj.value
    if isinstance(obj, (list, tuple)):
        return [to_json(x) for x in obj]
    if isinstance(obj, dict):
        return {str(k): to_json(v) for k, v in obj.items()}
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def from_json(cls: type, data: Any) -> Any:
    """The inverse of ``to_json`` for a protocol dataclass ``cls``: fields by name
    (unknown keys ignored: older or newer run folders read), nested dataclasses, enums
    and tuples rebuilt from the type hints."""
    return _from(cls, data)


@functools.cache
def _hints(tp: type) -> dict[str, Any]:
    """A protocol class's evaluated field types (once per class, not per row read)."""
    return typing.get_type_hints(tp, vars(sys.modules[tp.__module__]))


def _from(tp: Any, v: Any) -> Any:
    if v is None:
        return None
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        for a in args:
            try:
                return _from(a, v)
            except (TypeError, ValueError):
                continue
        return v
    if origin in (list, tuple):
        args = typing.get_args(tp)
        inner = args[0] if args else Any
        items = [_from(inner, x) for x in v] if isinstance(v, (list, tuple)) else v
        return tuple(items) if origin is tuple else list(items)
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        if not isinstance(v, dict):
            raise TypeError(f"{tp.__name__} from {type(v).__name__}")
        hints = _hints(tp)
        kw = {f.name: _from(hints.get(f.name, Any), v[f.name]) for f in dataclasses.fields(tp)
              if f.init and f.name in v}
        return tp(**kw)
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return tp(v)
    if tp in (int, float, str, bool) and not isinstance(v, tp):
        if tp is float and isinstance(v, int) and not isinstance(v, bool):
            return float(v)
        raise TypeError(f"{tp.__name__} from {type(v).__name__}")
    return v
