"""`EdgeDevice`: one front-end device. Runs the front segment of each request in the
plan's mode, encodes the feature, sends it to the server, measures its compute and its
link, and reports them to the policy.

Modes (``slicer.actors.protocol.plan_mode``), for a plan with split ℓ and offload step w:

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
from slicer.actors.protocol import Mode, now_s

plan_mode = Mode.of
SESSION_MODES = {m: m for m in Mode}


def hop_record(**kw: Any) -> dict[str, Any]:
    return {k: (round(v, 9) if isinstance(v, float) else v) for k, v in kw.items()}
from slicer.codec import CodecConfig


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
    def step(self, session_id: str, payload: bytes, position: int, trace_ctx: dict) -> dict: ...
    def close_session(self, session_id: str, trace_ctx: dict) -> dict: ...


class PolicyClient(Protocol):
    def register(self, device_id: str, info: dict, trace_ctx: dict) -> dict: ...
    def report(self, device_id: str, report: dict, trace_ctx: dict) -> dict: ...


class InProcessServer:
    """A ``Server`` called directly (unit tests, the in-process runner). ``credential``:
    the device's, when the server checks identities."""

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


@dataclass
class EdgeConfig:
    """One device's identity, link, budgets and emulation (from a workload's group)."""

    device_id: str
    """Unique id, e.g. ``raspberry-pi-5-0``."""
    device_class: str
    """Device class (catalog name and node label)."""
    link: dict = field(default_factory=dict)
    """``slicer.orchestrator.workload.LinkSpec`` as a dict (rate_mbps, snr_db, epsilon, bandwidth_hz)."""
    budgets: dict = field(default_factory=dict)
    """``BudgetSpec`` as a dict (latency_ms, memory_mib)."""
    emulation: dict = field(default_factory=dict)
    """``EmulationSpec`` as a dict (slowdown, memory_mib, link)."""
    link_schedule: list = field(default_factory=list)
    """Scripted link changes: dicts with ``at_request`` and the new link fields."""
    link_trace: dict | None = None
    """Emulated rate over time: ``{"times_s": [...], "rates_mbps": [...]}``
    (``slicer.policies.link.RateTrace``), seconds since the device's first request. The
    edge sleeps as Eq. 1 says at the current rate; the policy only sees what is measured."""
    adapt: bool = False
    """Report measured goodput and compute after every step that sends (the policy may
    re-plan between two steps: a new codec setting applies from the next step, a new split
    from the next request)."""
    codec: str | None = None
    """A codec spec forcing every feature's codec; None: the plan's."""
    mode: str = "auto"
    """``auto`` (the plan's) or a forced mode (see the module docstring)."""
    precision: str | None = None
    """Front-segment precision forced by the workload; None: the plan's."""
    seed: int = 0
    """The workload's seed: the codec's seed (rotation, tie-breaks) unless the codec spec names one."""
    node: str = ""
    """Node id/ip the device runs on (filled in by its actor)."""
    device: str = "cpu"
    """Where this edge computes: ``cpu``, ``cuda`` or ``auto`` (CUDA where the node has
    it); its features are then encoded on that device (the Triton encoder on CUDA)."""


class EdgeDevice:
    """One device (see the module docstring)."""

    def _codec_of(self, spec: str) -> CodecConfig:
        """The codec of a spec, seeded by the workload unless the spec names its own seed
        (keys split as ``CodecConfig.parse`` splits them)."""
        codec = CodecConfig.parse(spec)
        named = {kv.split("=")[0].strip() for kv in spec.partition(":")[2].split(",")}
        if codec.method == "raw" or "seed" in named:
            return codec
        return replace(codec, seed=int(self.cfg.seed))

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
        self.link = dict(cfg.link)
        self.emu = dict(cfg.emulation)
        self.slowdown = float(self.emu.get("slowdown", 1.0) or 1.0)
        self.emulate_link = bool(self.emu.get("link", False))
        self.trace = None
        if cfg.link_trace is not None:
            from slicer.policies.link import RateTrace

            self.trace = RateTrace(tuple(cfg.link_trace["times_s"]), tuple(cfg.link_trace["rates_mbps"]))
        self._trace_t0: float | None = None
        self._replans: list[dict] = []
        self.requests_done = 0
        # Shapes and profile only: weights load per plan, for the units it runs
        # (segment-only weights, slicer.actors.models.weights).
        base = self._models.get("float32") or self._models.setdefault(
            "float32", self._load(self.model_ref, dtype=_DTYPES["float32"], units=(0, 0), device=self.device))
        self.num_units = base.num_units
        self.profile = base.profile
        info = {"device_class": cfg.device_class, "link": self.link, "budgets": dict(cfg.budgets),
                "memory_cap_mib": self.emu.get("memory_mib"), "node": cfg.node, "emulated": self.emulated}
        self.plan = policy.register(cfg.device_id, info, {})

    @property
    def emulated(self) -> bool:
        return self.slowdown != 1.0 or self.emulate_link or self.emu.get("memory_mib") is not None

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

    def memory(self) -> dict[str, Any]:
        """What this process holds: resident memory (measured) and the bytes of the
        weights it loaded (segment-only: the units its plans ran)."""
        from slicer.actors.models.weights import process_rss_bytes

        seen: set[int] = set()
        weights = 0
        for m in self._models.values():
            if id(m.hf) not in seen:
                seen.add(id(m.hf))
                weights += m.weight_bytes
        return {"edge_rss_bytes": process_rss_bytes(), "edge_weight_bytes": weights}

    # ------------------------------------------------------------------ emulation
    def _link_delay_s(self, payload_bytes: int) -> float:
        if not self.emulate_link:
            return 0.0
        from slicer.policies.link import LinkState, comm_latency_s

        link = dict(self.link)
        if self.trace is not None:
            link["rate_mbps"] = self.trace.rate_mbps_at(now_s() - (self._trace_t0 or now_s()))
        d = comm_latency_s(payload_bytes, LinkState.from_spec(link))
        return d if math.isfinite(d) else 60.0

    def _memory_check(self, plan: dict, mode: str, context: int) -> float:
        need = float(plan.get("predicted_memory_bytes") or 0.0)
        cap = self.emu.get("memory_mib")
        if cap is not None and need > cap * 2**20:
            raise MemoryError(f"device {self.cfg.device_id}: plan needs {need / 2**20:.1f} MiB (split {plan['split']}, "
                              f"{mode}), emulated memory cap is {cap} MiB")
        return need

    # ------------------------------------------------------------------ link schedule
    def _apply_schedule(self, request_index: int, trace_ctx: dict) -> dict | None:
        changes = [c for c in self.cfg.link_schedule if int(c["at_request"]) == request_index]
        if not changes:
            return None
        for c in changes:
            self.link.update({k: v for k, v in c.items() if k != "at_request" and v is not None})
        # the re-plan belongs to the request it happens before: its span joins that trace
        self.plan = self.policy.report(self.cfg.device_id, {"link": dict(self.link), "reason": f"link change before request {request_index}"},
                                       trace_ctx)
        return dict(self.link)

    # ------------------------------------------------------------------ one request
    def generate(self, request: dict, trace_ctx: dict | None = None) -> dict:
        """Run one request ``{"request_id", "index", "prompt_ids": [...], "max_new_tokens"}``;
        returns its record (tokens, plan, bytes, per-step hops, latency).

        One trace per request: its root span ``request`` lives here (a child of
        ``trace_ctx`` when the caller sent one), and its context travels in every call
        this request makes (server steps, policy report)."""
        attrs = {tel.ATTR_REQUEST: request.get("request_id"), tel.ATTR_DEVICE: self.cfg.device_id,
                 tel.ATTR_DEVICE_CLASS: self.cfg.device_class, tel.ATTR_POLICY: self.plan.get("policy")}
        with tel.span("request", carrier=trace_ctx or None, **attrs) as root:
            rec = self._generate(request, tel.inject() or dict(trace_ctx or {}))
            if root is not None:
                for key, val in ((tel.ATTR_SPLIT, rec["split"]), (tel.ATTR_BYTES, rec["bytes_sent"]),
                                 (tel.ATTR_BPE, rec["bits_per_element"]), (tel.ATTR_TIER, rec["plan_tier"]),
                                 ("slicer.mode", rec["mode"]), ("slicer.codec", rec["codec"]),
                                 ("slicer.new_tokens", rec["new_tokens"]), ("slicer.ok", rec["ok"])):
                    if val is not None:
                        root.set_attribute(key, val)
        return rec

    def _hop(self, name: str, end_s: float, **attrs: Any) -> None:
        """Span ``[cursor, end_s]`` and move the cursor: the edge's hops tile the request,
        each from where the last one ended to a measured event (the edge's own work in
        between counts where it happens), so a trace accounts for all of its time."""
        tel.record_span(name, self._cursor, end_s, **attrs)
        self._cursor = max(self._cursor, end_s)

    def _generate(self, request: dict, trace_ctx: dict) -> dict:
        t_start = now_s()
        self._cursor = t_start
        if self._trace_t0 is None:
            self._trace_t0 = t_start
        self._replans = []
        link_change = self._apply_schedule(int(request.get("index", self.requests_done)), trace_ctx)
        plan = dict(self.plan)
        mode = plan_mode(plan["split"], plan.get("offload_step"), self.num_units)
        if self.cfg.mode != "auto":
            mode, plan = self._force_mode(self.cfg.mode, plan)
        n_new, capped = self._cap_new_tokens(plan, len(request["prompt_ids"]), int(request["max_new_tokens"]))
        if mode == "local-then-offload" and int(plan.get("offload_step") or 0) > n_new:
            mode = "edge-only"  # the hand-off step lies beyond this request: it never offloads
        if mode in ("split", "local-then-offload"):
            codec_spec = self.cfg.codec or plan.get("codec_spec") or "lossless"
            codec = self._codec_of(codec_spec)
            if codec != CodecConfig.parse(codec_spec):  # seeded by the workload: the record says so
                codec_spec = codec.spec()
        else:  # no feature crosses: token ids (cloud-only) or nothing (edge-only)
            codec_spec, codec = ("tokens" if mode == "cloud-only" else "none"), CodecConfig(method="raw")
        precision = self.cfg.precision or plan.get("front_precision") or "float32"
        # edge-only and local steps run every unit here: quantize all of them then
        model = self.model_for(precision, self.num_units if mode in ("edge-only", "local-then-offload") else plan["split"])
        ids = torch.tensor([request["prompt_ids"]], dtype=torch.long)  # (1, T)
        max_ctx = ids.shape[1] + n_new
        mem = float(plan.get("predicted_memory_bytes") or 0.0)
        rec: dict[str, Any] = {
            "request_id": request["request_id"], "device": self.cfg.device_id, "device_class": self.cfg.device_class,
            "node": self.cfg.node, "index": request.get("index"), "prompt_tokens": int(ids.shape[1]),
            "mode": mode, "split": plan["split"], "offload_step": plan.get("offload_step"), "codec": codec_spec,
            "front_precision": precision, "plan_tier": plan.get("tier"), "plan_reason": plan.get("reason", ""),
            "plan_feasible": plan.get("feasible"), "plan_binding": plan.get("binding"),
            "link": dict(self.link), "link_changed": link_change is not None, "emulated": self.emulated,
            "emulation": dict(self.emu), "predicted_memory_bytes": mem, "t_start": t_start,
            "max_new_tokens_requested": int(request["max_new_tokens"]), "capped": capped,
            "replans": self._replans,
        }
        steps: list[dict] = []
        try:
            self._memory_check(plan, mode, max_ctx)
            tokens = self._run(mode, plan, model, codec, ids, n_new, request, steps, trace_ctx)
            rec["ok"], rec["error"] = True, None
        except Exception as e:  # the record carries the cause; the runner reports it
            tokens = [s["token"] for s in steps if "token" in s]
            rec["ok"], rec["error"] = False, f"{type(e).__name__}: {e}"
        t_end = now_s()
        rec.update(self._totals(steps))
        rec.update({"tokens": tokens, "new_tokens": len(tokens), "t_end": t_end,
                    "latency_s": round(t_end - t_start, 6), "steps": steps})
        rec.update(self.memory())
        self.requests_done += 1
        if self.policy is not None:
            measured = {"edge_compute_s": rec["edge_compute_s"], "transfer_s": rec["transfer_s"],
                        "bytes_sent": rec["bytes_sent"], "latency_s": rec["latency_s"], "request_id": rec["request_id"]}
            self._hop("edge.compute", now_s(), **{"slicer.phase": "finish"})
            self.plan = self.policy.report(self.cfg.device_id, {"measured": measured}, trace_ctx)
            self._hop("policy.report", now_s())
        return rec

    def _adapt(self, measured: dict, sess, plan: dict, step: int, trace_ctx: dict) -> None:
        """Report one step's measured figures; a re-plan that keeps the split, hand-off
        step and precision switches the codec from the next step (the payload says its
        own setting, so the server decodes either); one that moves the split waits for
        the next request (the KV caches of this one are built for the old split)."""
        new = self.policy.report(self.cfg.device_id, {"measured": measured}, trace_ctx)
        keys = ("split", "offload_step", "front_precision")
        attrs = {tel.ATTR_STEP: step}
        if measured.get("goodput_bps"):
            attrs["slicer.measured_goodput_mbps"] = measured["goodput_bps"] / 1e6
        if new.get("codec_spec") != self.plan.get("codec_spec") or any(new.get(k) != self.plan.get(k) for k in keys):
            now_codec = all(new.get(k) == plan.get(k) for k in keys) and not self.cfg.codec \
                and sess.mode != "edge-only" and new.get("codec_spec") not in (None, "none", "tokens")
            ev = {"step": step, "goodput_mbps": (measured.get("goodput_bps") or 0) / 1e6,
                  "from": {k: self.plan.get(k) for k in (*keys, "codec_spec")},
                  "to": {k: new.get(k) for k in (*keys, "codec_spec")},
                  "applies": "next step" if now_codec else "next request"}
            if now_codec:
                sess.codec_cfg = self._codec_of(new["codec_spec"])
            self._replans.append(ev)
            attrs.update({"slicer.replan": f"{ev['from']['codec_spec']} split {ev['from']['split']} -> "
                                           f"{ev['to']['codec_spec']} split {ev['to']['split']} ({ev['applies']})"})
        self.plan = new
        self._hop("policy.report", now_s(), **attrs)

    @staticmethod
    def _cap_new_tokens(plan: dict, prompt_len: int, asked: int) -> tuple[int, str | None]:
        """The plan is sized (KV cache, memory, Eq. 5) for a context of ``plan["tokens"]``
        tokens, OPSC's chosen sequence length when it shortened the request's: generate
        no more than that allows (at least one token), and say so."""
        ctx = int(plan.get("tokens") or 0)
        if ctx <= 0 or prompt_len + asked <= ctx:
            return asked, None
        n = max(1, ctx - prompt_len)
        return n, (f"max_new_tokens {asked} -> {n}: the plan ({plan.get('policy')}) is sized for a context of {ctx} "
                   f"tokens and the prompt has {prompt_len}")

    def _force_mode(self, mode: str, plan: dict) -> tuple[str, dict]:
        n = self.num_units
        plan = dict(plan)
        if mode == "cloud-only":
            plan.update(split=0, offload_step=1)
        elif mode == "edge-only":
            plan.update(split=n, offload_step=None)
        elif mode == "split":
            if not 0 < plan["split"] < n:
                plan["split"] = max(1, min(n - 1, plan["split"]))
            plan["offload_step"] = 1
        elif mode == "local-then-offload":
            if not 0 < plan["split"] < n:
                plan["split"] = max(1, min(n - 1, plan["split"]))
            plan["offload_step"] = max(2, int(plan.get("offload_step") or 2))
        return mode, plan

    def _run(self, mode, plan, model, codec, ids, n_new, request, steps, trace_ctx) -> list[int]:
        """Drive ``slicer.actors.models.generate.EdgeSession`` (the model execution of every
        mode) step by step, sending its payloads to the server and timing every hop."""
        sess = _TimedEdgeSession(model, int(plan["split"]), codec, mode=SESSION_MODES[mode],
                                 offload_step=int(plan.get("offload_step") or 1))
        sid = None
        if mode != "edge-only":
            self._hop("edge.setup", now_s(), **{"slicer.mode": mode})
            sid = self.server.open_session(self.cfg.device_id, request["request_id"], sess.split,
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
                    steps.append(hop_record(step=i, kind="local", tokens=int(ids.shape[1]) if i == 0 else 1,
                                            edge_compute_s=dt, edge_compute_emulated_s=extra, token=tokens[-1]))
                    continue
                payload = est.payload
                kind = "handoff" if est.handoff else ("prefill" if i == 0 else "decode")
                enc_t0 = sess.encode_t0 if sess.encode_s else t0w + dt
                self._hop("edge.compute", enc_t0, **{tel.ATTR_STEP: i})
                self._hop("edge.encode", enc_t0 + sess.encode_s, **{
                    tel.ATTR_STEP: i, tel.ATTR_BYTES: len(payload), tel.ATTR_SPLIT: sess.split,
                    "slicer.codec": self.cfg.codec or plan.get("codec_spec")})
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
                tokens.append(int(res["token"]))
                elements = int(est.elements) or int(est.tokens_in_payload)  # token ids: one element each
                srv_recv, srv_done = res.get("server_recv_t"), res.get("server_done_t")
                self._hop("transfer", srv_recv or recv_t, **{
                    tel.ATTR_STEP: i, tel.ATTR_BYTES: len(payload), tel.ATTR_BPE: len(payload) * 8 / max(1, elements),
                    tel.ATTR_SPLIT: sess.split, "slicer.kind": kind, "slicer.emulated_s": delay})
                if srv_done:  # the server's spans cover [server_recv_t, server_done_t]
                    self._cursor = max(self._cursor, srv_done)
                self._hop("return", recv_t, **{tel.ATTR_STEP: i})
                steps.append(hop_record(
                    step=i, kind=kind, tokens=int(est.tokens_in_payload), edge_compute_s=dt,
                    edge_compute_emulated_s=extra, encode_s=sess.encode_s, payload_bytes=len(payload),
                    elements=elements, bits_per_element=len(payload) * 8 / max(1, elements),
                    transfer_emulated_s=delay, send_t=send_t, server_recv_t=res.get("server_recv_t"),
                    queue_s=res.get("queue_s", 0.0), decode_s=res.get("decode_s"),
                    server_compute_s=res.get("server_compute_s"), server_start_t=res.get("server_start_t"),
                    batch_size=res.get("batch_size"), server_done_t=res.get("server_done_t"), recv_t=recv_t,
                    token=tokens[-1]))
                if self.cfg.adapt and self.policy is not None and i + 1 < n_new:
                    # Goodput: payload bits over the measured transfer (the emulated link's
                    # sleep, then the wire up to the server's receipt).
                    wire = max(0.0, (srv_recv or send_t) - send_t)
                    t_tr = delay_measured + wire
                    m = {"step": i, "request_id": request["request_id"], "context": position,
                         "goodput_bps": len(payload) * 8 / t_tr if t_tr > 0 else None,
                         "payload_bytes": len(payload), "transfer_s": t_tr if t_tr > 0 else None,
                         "compute_s": dt + extra if kind == "decode" else None}
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

    @staticmethod
    def _totals(steps: list[dict]) -> dict[str, Any]:
        sent = [s for s in steps if "payload_bytes" in s]
        bytes_sent = sum(s["payload_bytes"] for s in sent)
        elements = sum(s["elements"] for s in sent)
        wire = 0.0
        for s in sent:
            srv = (s.get("server_done_t") or 0) - (s.get("server_recv_t") or 0)
            wire += max(0.0, (s["recv_t"] - s["send_t"]) - srv)
        return {
            "bytes_sent": bytes_sent,
            "payloads": len(sent),
            "bits_per_element": round(bytes_sent * 8 / elements, 4) if elements else None,
            "edge_compute_s": round(sum(s.get("edge_compute_s", 0.0) for s in steps), 6),
            "edge_compute_emulated_s": round(sum(s.get("edge_compute_emulated_s", 0.0) for s in steps), 6),
            "encode_s": round(sum(s.get("encode_s", 0.0) for s in sent), 6),
            "transfer_s": round(wire, 6),
            "transfer_emulated_s": round(sum(s.get("transfer_emulated_s", 0.0) for s in sent), 6),
            "server_queue_s": round(sum(s.get("queue_s") or 0.0 for s in sent), 6),
            "server_compute_s": round(sum(s.get("server_compute_s") or 0.0 for s in sent), 6),
        }
