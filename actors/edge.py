"""`EdgeDevice`: one front-end device. Runs the front segment of each request in the
plan's mode, encodes the feature, sends it to the server, measures its compute and its
link, and reports them to the policy.

Modes (``slicer.actors.protocol.Mode.of``), for a plan with split ℓ and offload step w:

- ``split`` (w = 1): every step runs units ``[0, ℓ)`` here and ``[ℓ, n)`` on the
  server; the prompt's features go in the first step (prefill).
- ``local-then-offload`` (w > 1, SLICER Eq. 5-6): the first ``w - 1`` tokens come from
  the whole model run here; at step w the features of every token so far cross in one
  payload, the server builds its cache from them and the request goes on as a split.
- ``edge-only``: the whole request runs here; the server is never called.
- ``cloud-only`` (ℓ = 0): the edge sends token ids, the server runs everything.

Emulation (stated as such in every record): ``slowdown`` sleeps ``(slowdown - 1) ×``
each measured compute interval; ``link`` sleeps Eq. 1's ε-outage delay of the REAL
payload size before each send; ``memory_mib`` refuses plans that need more.

The server and the policy are reached through small client objects (``InProcessServer``
/ ``InProcessPolicy`` here, the Ray ones in ``slicer.actors.ray_actors``), so this class runs
the same in a unit test and in an actor.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

import torch

from slicer.actors import telemetry as tel
from slicer.actors.models.devices import DTYPES as _DTYPES
from slicer.actors.models.generate import EdgeSession
from slicer.actors.protocol import (
    BudgetSpec,
    DeviceInfo,
    EmulationSpec,
    LinkChange,
    LinkSpec,
    Measured,
    Mode,
    Plan,
    Replan,
    Report,
    Request,
    RequestRecord,
    StepRecord,
    StepResult,
    now_s,
)
from slicer.codec import CodecConfig
from slicer.policies.link import RateTrace


class _TimedEdgeSession(EdgeSession):
    """``EdgeSession`` that also times its encodes (so codec time is its own hop)."""

    encode_s = 0.0
    encode_t0 = 0.0  # wall-clock start of the last encode (for its span)

    def _encode(self, h: torch.Tensor) -> bytes:
        self.encode_t0 = now_s()
        t0 = time.perf_counter()
        out = super()._encode(h)
        self.encode_s += time.perf_counter() - t0
        return out


class ServerClient(Protocol):
    """The server as a device sees it. ``open_session`` returns the session's token (a
    capability: ``step`` and ``close_session`` take it); the client adds the device's
    driver-issued credential itself, so the edge's code never handles it."""

    def open_session(self, device_id: str, request_id: str, split: int, max_tokens: int, trace_ctx: dict,
                     supersedes: str | None = None) -> str: ...
    def step(self, session_id: str, payload: bytes, position: int, trace_ctx: dict) -> StepResult: ...
    def close_session(self, session_id: str, trace_ctx: dict) -> dict: ...


class PolicyClient(Protocol):
    def register(self, device_id: str, info: DeviceInfo, trace_ctx: dict) -> Plan: ...
    def report(self, device_id: str, report: Report, trace_ctx: dict) -> Plan: ...


class InProcessServer:
    """A ``Server`` called directly (unit tests, the in-process runner). ``credential``:
    the device's, when the server checks identities."""

    transport = ("in-process", None)

    def __init__(self, server, credential: str | None = None):
        self.server = server
        self.credential = credential

    def open_session(self, device_id, request_id, split, max_tokens, trace_ctx=None, supersedes=None):
        return self.server.open_session(device_id, request_id, split, max_tokens, trace_ctx or {},
                                        credential=self.credential, supersedes=supersedes)

    def step(self, session_id, payload, position, trace_ctx=None):
        return self.server.step_now(session_id, payload, position, trace_ctx or {})

    def close_session(self, session_id, trace_ctx=None):
        return self.server.close_session(session_id, trace_ctx or {})


class InProcessPolicy:
    """A ``Policy`` called directly."""

    def __init__(self, policy):
        self.policy = policy

    def register(self, device_id, info, trace_ctx=None):
        return self.policy.register(device_id, info, trace_ctx or {})

    def report(self, device_id, report, trace_ctx=None):
        return self.policy.report(device_id, report, trace_ctx or {})


@dataclass(frozen=True)
class EdgeConfig:
    """One device's identity, link, budgets and emulation (from a workload's group)."""

    device_id: str
    """Unique id, e.g. ``raspberry-pi-5-0``."""
    device_class: str
    """Device class (catalog name and node label)."""
    link: LinkSpec = field(default_factory=LinkSpec)
    budgets: BudgetSpec = field(default_factory=BudgetSpec)
    emulation: EmulationSpec = field(default_factory=EmulationSpec)
    link_schedule: tuple[LinkChange, ...] = ()
    """Scripted link changes, each before one request."""
    link_trace: RateTrace | None = None
    """Emulated rate over time, seconds since the device's first request. The edge sleeps
    as Eq. 1 says at the current rate; the policy only sees what is measured."""
    adapt: bool = False
    """Report measured goodput and compute after every step that sends (the policy may
    re-plan between two steps: a new codec setting applies from the next step, a new split
    from the next request)."""
    codec: CodecConfig | None = None
    """A codec forcing every feature's codec (the workload's, seeded by it); None: the plan's."""
    mode: Mode | None = None
    """A forced mode; None: the plan's."""
    precision: str | None = None
    """Front-segment precision forced by the workload; None: the plan's."""
    seed: int = 0
    """The workload's seed: the seed of the codecs the plans choose."""
    node: str = ""
    """Node id/ip the device runs on (filled in by its actor)."""
    device: str = "cpu"
    """Where this edge computes: ``cpu``, ``cuda`` or ``auto`` (CUDA where the node has
    it); its features are then encoded on that device (the Triton encoder on CUDA)."""


class EdgeDevice:
    """One device (see the module docstring)."""

    def __init__(self, cfg: EdgeConfig, model_ref: Any, server: ServerClient | None, policy: PolicyClient,
                 *, model: Any = None):
        """``model_ref``: what ``load_model`` takes; ``model``: an already loaded
        ``SplitModel`` to share (tests), used for float32 fronts."""
        from slicer.actors.models import load_model
        from slicer.actors.models.devices import resolve_device

        self.cfg = cfg
        self.device = resolve_device(cfg.device, "device.device")
        self.model_ref = model_ref
        self._load = load_model
        self._models: dict[str, Any] = {}
        if model is not None:
            self._models[str(model.dtype).replace("torch.", "")] = model
        self.server = server
        self.policy = policy
        self.link = cfg.link
        self.emu = cfg.emulation
        self.slowdown = float(self.emu.slowdown)
        self._trace_t0: float | None = None
        self._replans: list[Replan] = []
        # Shapes and profile only: weights load per plan, for the units it runs
        # (segment-only weights, slicer.actors.models.weights).
        base = self._models.get("float32") or self._models.setdefault(
            "float32", self._load(self.model_ref, dtype=_DTYPES["float32"], units=(0, 0), device=self.device))
        self.num_units = base.num_units
        self.profile = base.profile
        info = DeviceInfo(device_class=cfg.device_class, link=self.link, budgets=cfg.budgets,
                          memory_cap_mib=self.emu.memory_mib)
        self.plan: Plan = policy.register(cfg.device_id, info, {})

    @property
    def emulated(self) -> bool:
        return self.emu.active

    def _seeded(self, codec: CodecConfig) -> CodecConfig:
        """A plan's codec with the workload's seed (rotation, tie-breaks)."""
        return codec if codec.method == "raw" or codec.seed == self.cfg.seed else replace(codec, seed=int(self.cfg.seed))

    def model_for(self, precision: str, split: int | None = None) -> Any:
        """The model with its front at ``precision`` holding the weights of units
        ``[0, split)`` only (None: every unit): float32/float16/bfloat16 weights, or
        int8/int4 weight-only quantized units ``[0, split)``
        (``slicer.actors.models.quant.quantize_front``: dequantized on the fly). A
        quantized front is quantized in place from a segment-only float32 load: no
        float32 copy is kept beside it."""
        need = self.num_units if split is None else max(0, min(int(split), self.num_units))
        if precision in ("int8", "int4") and need:
            key = f"{precision}@{need}"
            if key not in self._models:
                from slicer.actors.models.quant import quantize_front

                bits = 8 if precision == "int8" else 4
                shared = self._models.get("float32")
                if shared is not None and shared._loader is None:  # a whole model handed in (tests)
                    q = quantize_front(shared, need, bits=bits)
                else:
                    q = quantize_front(self._load(self.model_ref, dtype=_DTYPES["float32"], units=(0, need),
                                                  device=self.device), need, bits=bits, inplace=True)
                for old in [k for k in self._models if k.startswith(f"{precision}@")]:
                    del self._models[old]  # a re-plan to another split replaces the old front
                self._models[key] = q
            return self._models[key]
        key = precision if precision in _DTYPES else "float32"
        if key not in self._models:
            self._models[key] = self._load(self.model_ref, dtype=_DTYPES[key], units=(0, 0), device=self.device)
        m = self._models[key]
        if need and m._loader is not None:
            m.ensure_units(0, need)
        return m

    def memory(self) -> tuple[int, int]:
        """What this process holds: resident memory (measured) and the bytes of the
        weights it loaded (segment-only: the units its plans ran)."""
        from slicer.actors.models.weights import process_rss_bytes

        seen: set[int] = set()
        weights = 0
        for m in self._models.values():
            if id(m.hf) not in seen:
                seen.add(id(m.hf))
                weights += m.weight_bytes
        return process_rss_bytes(), weights

    # ------------------------------------------------------------------ emulation
    def _link_delay_s(self, payload_bytes: int) -> float:
        if not self.emu.link:
            return 0.0
        from slicer.policies.link import comm_latency_s

        link = self.link
        if self.cfg.link_trace is not None:
            link = replace(link, rate_mbps=self.cfg.link_trace.rate_mbps_at(now_s() - (self._trace_t0 or now_s())))
        d = comm_latency_s(payload_bytes, link.state())
        return d if math.isfinite(d) else 60.0

    def _memory_check(self, plan: Plan, mode: Mode) -> None:
        need = float(plan.predicted_memory_bytes or 0.0)
        cap = self.emu.memory_mib
        if cap is not None and need > cap * 2**20:
            raise MemoryError(f"device {self.cfg.device_id}: plan needs {need / 2**20:.1f} MiB (split {plan.split}, "
                              f"{mode}), emulated memory cap is {cap} MiB")

    # ------------------------------------------------------------------ link schedule
    def _apply_schedule(self, request_index: int, trace_ctx: dict) -> bool:
        changes = [c for c in self.cfg.link_schedule if c.at_request == request_index]
        if not changes:
            return False
        for c in changes:
            self.link = c.apply(self.link)
        # the re-plan belongs to the request it happens before: its span joins that trace
        self.plan = self.policy.report(self.cfg.device_id, Report(link=self.link), trace_ctx)
        return True

    # ------------------------------------------------------------------ one request
    def generate(self, request: Request, trace_ctx: dict | None = None) -> RequestRecord:
        """Run one request; returns its record (tokens, plan, bytes, per-step hops, latency).

        One trace per request: its root span ``request`` lives here (a child of
        ``trace_ctx`` when the caller sent one), and its context travels in every call
        this request makes (server steps, policy report)."""
        attrs = {tel.ATTR_REQUEST: request.request_id, tel.ATTR_DEVICE: self.cfg.device_id,
                 tel.ATTR_DEVICE_CLASS: self.cfg.device_class, tel.ATTR_POLICY: self.plan.policy}
        with tel.span("request", carrier=trace_ctx or None, **attrs) as root:
            rec = self._generate(request, tel.inject() or dict(trace_ctx or {}))
            if root is not None:
                for key, val in ((tel.ATTR_SPLIT, rec.split), (tel.ATTR_BYTES, rec.bytes_sent),
                                 (tel.ATTR_BPE, rec.bits_per_element), (tel.ATTR_TIER, rec.plan_tier),
                                 ("slicer.mode", str(rec.mode)), ("slicer.codec", rec.codec),
                                 ("slicer.new_tokens", rec.new_tokens), ("slicer.ok", rec.ok)):
                    if val is not None:
                        root.set_attribute(key, val)
        return rec

    def _hop(self, name: str, end_s: float, **attrs: Any) -> None:
        """Span ``[cursor, end_s]`` and move the cursor: the edge's hops tile the request,
        each from where the last one ended to a measured event (the edge's own work in
        between counts where it happens), so a trace accounts for all of its time."""
        tel.record_span(name, self._cursor, end_s, **attrs)
        self._cursor = max(self._cursor, end_s)

    def _generate(self, request: Request, trace_ctx: dict) -> RequestRecord:
        t_start = now_s()
        self._cursor = t_start
        if self._trace_t0 is None:
            self._trace_t0 = t_start
        self._replans = []
        link_changed = self._apply_schedule(request.index, trace_ctx)
        plan = self.plan
        if self.cfg.mode is not None:
            plan = self._force_mode(self.cfg.mode, plan)
        mode = Mode.of(plan.split, plan.offload_step, self.num_units)
        n_new, capped = self._cap_new_tokens(plan, len(request.prompt_ids), request.max_new_tokens)
        if mode == Mode.LOCAL_THEN_OFFLOAD and (plan.offload_step or 0) > n_new:
            mode = Mode.EDGE_ONLY  # the hand-off step lies beyond this request: it never offloads
        if mode.sends_features:
            codec = self.cfg.codec or self._seeded(plan.codec or CodecConfig(method="raw"))
            codec_spec = codec.spec()
        else:  # no feature crosses: token ids (cloud-only) or nothing (edge-only)
            codec_spec, codec = ("tokens" if mode == Mode.CLOUD_ONLY else "none"), CodecConfig(method="raw")
        precision = self.cfg.precision or plan.front_precision or "float32"
        # edge-only and local steps run every unit here: quantize all of them then
        model = self.model_for(precision, self.num_units if mode in (Mode.EDGE_ONLY, Mode.LOCAL_THEN_OFFLOAD)
                               else plan.split)
        ids = torch.tensor([request.prompt_ids], dtype=torch.long)  # (1, T)
        rec = RequestRecord(
            request_id=request.request_id, device=self.cfg.device_id, index=request.index,
            device_class=self.cfg.device_class, node=self.cfg.node, prompt_tokens=int(ids.shape[1]),
            mode=mode, split=plan.split, offload_step=plan.offload_step, codec=codec_spec,
            front_precision=precision, plan_tier=plan.tier, plan_reason=plan.reason, plan_feasible=plan.feasible,
            plan_binding=plan.binding, link=self.link, link_changed=link_changed, emulated=self.emulated,
            emulation=self.emu, predicted_memory_bytes=float(plan.predicted_memory_bytes or 0.0), t_start=t_start,
            max_new_tokens_requested=request.max_new_tokens, capped=capped, replans=self._replans)
        steps: list[StepRecord] = []
        try:
            self._memory_check(plan, mode)
            tokens = self._run(mode, plan, model, codec, ids, n_new, request, steps, trace_ctx)
            rec.ok = True
        except Exception as e:  # the record carries the cause; the runner reports it
            tokens = [s.token for s in steps]
            rec.error = f"{type(e).__name__}: {e}"
        rec.t_end = now_s()
        rec.steps, rec.tokens, rec.new_tokens = steps, tokens, len(tokens)
        rec.latency_s = round(rec.t_end - t_start, 6)
        rec.add_totals()
        if rec.payloads:
            rec.transport, rec.transport_note = getattr(self.server, "transport", (None, None))
        rec.edge_rss_bytes, rec.edge_weight_bytes = self.memory()
        if self.policy is not None:
            measured = Measured(request_id=rec.request_id, edge_compute_s=rec.edge_compute_s, transfer_s=rec.transfer_s,
                                bytes_sent=rec.bytes_sent, latency_s=rec.latency_s)
            self._hop("edge.compute", now_s(), **{"slicer.phase": "finish"})
            self.plan = self.policy.report(self.cfg.device_id, Report(measured=measured), trace_ctx)
            self._hop("policy.report", now_s())
        return rec

    def _adapt(self, measured: Measured, sess, plan: Plan, step: int, trace_ctx: dict) -> None:
        """Report one step's measured figures; a re-plan that keeps the split, hand-off
        step and precision switches the codec from the next step (the payload says its
        own setting, so the server decodes either); one that moves the split waits for
        the next request (the KV caches of this one are built for the old split)."""
        new = self.policy.report(self.cfg.device_id, Report(measured=measured), trace_ctx)
        attrs: dict[str, Any] = {tel.ATTR_STEP: step}
        if measured.goodput_bps:
            attrs["slicer.measured_goodput_mbps"] = measured.goodput_bps / 1e6
        if new.key != self.plan.key:
            now_codec = new.key.same_model_run(plan.key) and self.cfg.codec is None \
                and sess.mode != Mode.EDGE_ONLY and new.codec is not None
            ev = Replan(step=step, goodput_mbps=(measured.goodput_bps or 0) / 1e6, before=self.plan.key, after=new.key,
                        applies="next step" if now_codec else "next request")
            if now_codec:
                sess.codec_cfg = self._seeded(new.codec)
            self._replans.append(ev)
            attrs["slicer.replan"] = (f"{self.plan.codec_spec} split {self.plan.split} -> "
                                      f"{new.codec_spec} split {new.split} ({ev.applies})")
        self.plan = new
        self._hop("policy.report", now_s(), **attrs)

    @staticmethod
    def _cap_new_tokens(plan: Plan, prompt_len: int, asked: int) -> tuple[int, str | None]:
        """The plan is sized (KV cache, memory, Eq. 5) for a context of ``plan.tokens``
        tokens, OPSC's chosen sequence length when it shortened the request's: generate
        no more than that allows (at least one token), and say so."""
        ctx = int(plan.tokens or 0)
        if ctx <= 0 or prompt_len + asked <= ctx:
            return asked, None
        n = max(1, ctx - prompt_len)
        return n, (f"max_new_tokens {asked} -> {n}: the plan ({plan.policy}) is sized for a context of {ctx} "
                   f"tokens and the prompt has {prompt_len}")

    def _force_mode(self, mode: Mode, plan: Plan) -> Plan:
        n = self.num_units
        inner = max(1, min(n - 1, plan.split))
        if mode == Mode.CLOUD_ONLY:
            return replace(plan, split=0, offload_step=1)
        if mode == Mode.EDGE_ONLY:
            return replace(plan, split=n, offload_step=None)
        if mode == Mode.SPLIT:
            return replace(plan, split=inner, offload_step=1)
        return replace(plan, split=inner, offload_step=max(2, int(plan.offload_step or 2)))

    def _run(self, mode: Mode, plan: Plan, model, codec: CodecConfig, ids, n_new: int, request: Request,
             steps: list[StepRecord], trace_ctx: dict) -> list[int]:
        """Drive ``slicer.actors.models.generate.EdgeSession`` (the model execution of every
        mode) step by step, sending its payloads to the server and timing every hop."""
        sess = _TimedEdgeSession(model, int(plan.split), codec, mode=mode, offload_step=int(plan.offload_step or 1))
        sid = None
        if mode != Mode.EDGE_ONLY:
            self._hop("edge.setup", now_s(), **{"slicer.mode": str(mode)})
            sid = self.server.open_session(self.cfg.device_id, request.request_id, sess.split,
                                           int(ids.shape[1]) + n_new, trace_ctx)
            self._hop("session.open", now_s())
        tokens: list[int] = []
        position = 0  # server-side position of the next payload's first token
        try:
            for i in range(n_new):
                sess.encode_s = 0.0
                t0w = now_s()
                t0 = time.perf_counter()
                est = sess.begin(ids) if i == 0 else sess.next(tokens[-1])
                dt = time.perf_counter() - t0 - sess.encode_s  # edge compute, codec excluded
                extra = 0.0
                if self.slowdown > 1.0:  # emulated device: the compute takes slowdown x as long
                    extra = (self.slowdown - 1.0) * dt
                    time.sleep(extra)
                if est.payload is None:  # the edge produced this token itself
                    self._hop("edge.compute", t0w + dt + extra, **{tel.ATTR_STEP: i, "slicer.emulated_s": extra})
                    tokens.append(int(est.token))
                    steps.append(StepRecord(step=i, kind="local", tokens=int(ids.shape[1]) if i == 0 else 1,
                                            token=tokens[-1], edge_compute_s=_r(dt), edge_compute_emulated_s=_r(extra)))
                    continue
                payload = est.payload
                kind = "handoff" if est.handoff else ("prefill" if i == 0 else "decode")
                enc_t0 = sess.encode_t0 if sess.encode_s else t0w + dt
                self._hop("edge.compute", enc_t0, **{tel.ATTR_STEP: i})
                self._hop("edge.encode", enc_t0 + sess.encode_s, **{
                    tel.ATTR_STEP: i, tel.ATTR_BYTES: len(payload), tel.ATTR_SPLIT: sess.split,
                    "slicer.codec": "tokens" if sess.mode == Mode.CLOUD_ONLY else sess.codec_cfg.spec()})
                if extra:
                    self._hop("edge.compute", enc_t0 + sess.encode_s + extra, **{tel.ATTR_STEP: i, "slicer.emulated": True})
                delay = self._link_delay_s(len(payload))
                t_link = time.perf_counter()
                if delay:
                    time.sleep(delay)
                delay_measured = time.perf_counter() - t_link
                send_t = now_s()
                res = self.server.step(sid, payload, position, trace_ctx)
                recv_t = now_s()
                position += int(est.tokens_in_payload)
                tokens.append(int(res.token))
                elements = int(est.elements) or int(est.tokens_in_payload)  # token ids: one element each
                self._hop("transfer", res.server_recv_t or recv_t, **{
                    tel.ATTR_STEP: i, tel.ATTR_BYTES: len(payload), tel.ATTR_BPE: len(payload) * 8 / max(1, elements),
                    tel.ATTR_SPLIT: sess.split, "slicer.kind": kind, "slicer.emulated_s": delay})
                if res.server_done_t:  # the server's spans cover [server_recv_t, server_done_t]
                    self._cursor = max(self._cursor, res.server_done_t)
                self._hop("return", recv_t, **{tel.ATTR_STEP: i})
                steps.append(StepRecord(
                    step=i, kind=kind, tokens=int(est.tokens_in_payload), token=tokens[-1], edge_compute_s=_r(dt),
                    edge_compute_emulated_s=_r(extra), encode_s=_r(sess.encode_s), payload_bytes=len(payload),
                    elements=elements, bits_per_element=_r(len(payload) * 8 / max(1, elements)),
                    transfer_emulated_s=_r(delay), send_t=_r(send_t), server_recv_t=_r(res.server_recv_t),
                    queue_s=_r(res.queue_s), decode_s=_r(res.decode_s), server_compute_s=_r(res.server_compute_s),
                    server_start_t=_r(res.server_start_t), batch_size=res.batch_size,
                    server_done_t=_r(res.server_done_t), recv_t=_r(recv_t)))
                if self.cfg.adapt and self.policy is not None and i + 1 < n_new:
                    # Goodput: payload bits over the measured transfer (the emulated link's
                    # sleep, then the wire up to the server's receipt).
                    wire = max(0.0, (res.server_recv_t or send_t) - send_t)
                    t_tr = delay_measured + wire
                    m = Measured(step=i, request_id=request.request_id, context=position,
                                 goodput_bps=len(payload) * 8 / t_tr if t_tr > 0 else None,
                                 payload_bytes=len(payload), transfer_s=t_tr if t_tr > 0 else None,
                                 compute_s=dt + extra if kind == "decode" else None)
                    self._adapt(m, sess, plan, i, trace_ctx)
            return tokens
        finally:
            if sid is not None:
                try:
                    self._hop("edge.compute", now_s(), **{"slicer.phase": "finish"})
                    self.server.close_session(sid, trace_ctx)
                    self._hop("session.close", now_s())
                except Exception:
                    pass  # the server may be gone; its sessions went with it


def _r(v: float | None) -> float | None:
    return None if v is None else round(float(v), 9)
