"""Latency and memory models of one plan: Eq. 2 (single-shot), Eq. 5 (AR), memory of the
front segment, payload bytes (the codec's B^UB), codec time ζ̂ and server time.

Everything here is a pure function of (model profile, device profile, link, budgets,
candidate). ``CostModel`` only caches repeated sub-results (payload bounds, step times).

Autoregressive request timeline (P prompt tokens, N new tokens, hand-off at step w):

- step 1 processes max(P, 1) tokens (prefill + first token), steps 2..N one token each;
- steps 1..w-1 run the whole model on the edge (local phase; SLICER's "full passes");
- at step w the edge runs [0, ℓ) and ships the features of every token so far,
  ``max(P, 1) + w - 1`` of them (x_ℓ^w), so the server can build its cache of [ℓ, n);
- steps w+1..N are a per-token split: [0, ℓ) on the edge, one token's feature on the wire.

``w = None`` is edge-only (never offloads), ``ℓ = 0`` cloud-only (token ids on the wire).
"""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from slicer.policies.devices import DeviceProfile, layer_param_bytes
from slicer.policies.link import LinkState, comm_latency_s
from slicer.policies.profile import ModelProfile
from slicer.policies.schema import PRECISION_BYTES, Budgets, canonical_precision

#: Float32 copies of the feature the encoder holds while it runs (input, |x| scores,
#: kept values): 3 x 4 bytes per element, plus the payload itself.
CODEC_WORK_BYTES_PER_ELEMENT = 12.0
#: Activation workspace of one step: a few hidden-size float32 vectors per token
#: (residual, attention and MLP intermediates); 16 x hidden x 4 bytes is generous for
#: decode and small next to weights.
ACT_WORKSPACE_VECTORS = 16


class CodecTimeModel(Protocol):
    def __call__(self, shape: tuple[int, ...], cfg, device: DeviceProfile, decode: bool = False) -> float: ...


def default_codec_time(shape: tuple[int, ...], cfg, device: DeviceProfile, decode: bool = False) -> float:
    """ζ̂ of ``cfg`` on a feature of ``shape`` on ``device`` (encode; ``decode`` for the
    server's side), from the profile alone (nothing is measured or read here):

    1. a measured profile that timed this very spec: its line through those points;
    2. SLICER: the per-stage model t_ATKF + t_MS + Σ t_ABQ + t_pack (``policies.codectime``),
       fitted on the host by ``slicer profile`` or, for a catalog device, from its roofline;
    3. other methods: the measured line of the same method, else ``codec_passes`` reads of
       the feature at the device's bandwidth (``DeviceProfile.codec_time_s``)."""
    from slicer.policies.devices import stage_coefficients

    if cfg is None:
        return 0.0
    elements = math.prod(shape)
    spec = cfg.spec()
    slicer = cfg.method == "slicer"
    if device.measured is not None:
        t = device.measured.codec_time_s(spec, elements, decode, same_method=not slicer or device.measured.codec_stages is None)
        if t is not None:
            return t * device.slowdown
    if slicer:
        coef = stage_coefficients(device)
        return (coef.decode_s(shape, cfg) if decode else coef.encode_s(shape, cfg)) * device.slowdown
    return device.codec_time_s(elements, spec, decode)


def predict_payload_bytes(shape: tuple[int, ...], cfg, dtype: str) -> int:
    """B^UB of the codec for a feature of ``shape`` (headers included)."""
    import torch

    from slicer import codec

    return int(codec.predict_bytes(shape, cfg, dtype=getattr(torch, dtype)))


@dataclass
class Estimate:
    """Predicted cost of one candidate plan, and which budgets it meets."""

    split: int
    offload_step: int | None
    precision: str
    cfg: object | None
    context_tokens: int
    step_latency_s: float = 0.0
    """Worst per-step latency seen by the edge (Eq. 2) over the decode steps."""
    handoff_latency_s: float = 0.0
    """L_AR of Eq. 5 (local steps + partial pass + ε-outage transfer of x_ℓ^w)."""
    handoff_budget_s: float = 0.0
    memory_bytes: float = 0.0
    bytes_per_token: float = 0.0
    handoff_bytes: float = 0.0
    server_time_s: float = 0.0
    server_step_s: float = 0.0
    """Server seconds of one decode step after the hand-off (units [ℓ, n) + decode)."""
    violations: list[str] = field(default_factory=list)
    """Budgets not met: ``memory``, ``latency``, ``handoff-latency``, ``ar-buffer``, ``link``."""

    @property
    def feasible(self) -> bool:
        return not self.violations


class CostModel:
    """Evaluates candidate plans of one (model, edge device, server device, link, budgets)
    snapshot; caches payload bounds and step times."""

    def __init__(self, model: ModelProfile, device: DeviceProfile, link: LinkState, budgets: Budgets,
                 server: DeviceProfile | None = None, codec_time: CodecTimeModel | None = None,
                 payload_bytes: Callable[[tuple[int, ...], object, str], int] | None = None):
        self.model = model
        self.device = device
        self.link = link
        self.budgets = budgets
        self.server = server or device
        self.codec_time = codec_time or default_codec_time
        self._payload = payload_bytes or predict_payload_bytes
        self._payload_cache: dict = {}
        self._range_cache: dict = {}
        self._codec_cache: dict = {}  # the search asks the same (shape, codec, device) many times
        self.feature_dtype = model.dtype if model.dtype in PRECISION_BYTES else "float32"

    # -- pieces --------------------------------------------------------------------------
    @property
    def n(self) -> int:
        return self.model.num_layers

    @property
    def ar(self) -> bool:
        return self.model.kind == "causal_lm"

    def feature_shape(self, ell: int, tokens: int) -> tuple[int, ...]:
        layer = self.model.layers[ell - 1]
        shape = tuple(layer.out_shape) or (layer.out_elements,)
        return (tokens, *shape) if self.ar else (1, *shape)

    def payload_bytes(self, ell: int, tokens: int, cfg) -> float:
        """Bytes on the wire for ``tokens`` tokens' features at split ``ell`` (token ids at 0)."""
        if ell == 0:
            return float(tokens * self.model.input_bytes_per_token)
        shape = self.feature_shape(ell, tokens)
        key = (shape, cfg)
        if key not in self._payload_cache:
            self._payload_cache[key] = float(self._payload(shape, cfg, self.feature_dtype))
        return self._payload_cache[key]

    def codec_s(self, ell: int, tokens: int, cfg, decode: bool = False, device: DeviceProfile | None = None) -> float:
        if ell == 0 or cfg is None:
            return 0.0
        dev = device or self.device
        shape = self.feature_shape(ell, tokens)
        key = (shape, cfg, decode, id(dev))  # dev: self.device or self.server, alive as long as this model
        if key not in self._codec_cache:
            self._codec_cache[key] = self.codec_time(shape, cfg, dev, decode)
        return self._codec_cache[key]

    def range_s(self, dev: DeviceProfile, a: int, b: int, precision: str, context: int, tokens: int = 1) -> float:
        """Seconds for units [a, b) on ``dev`` at ``precision`` for ``tokens`` new tokens after ``context``."""
        if b <= a:
            return 0.0
        key = (dev.name, id(dev), a, b, precision, context, tokens)
        if key not in self._range_cache:
            self._range_cache[key] = sum(dev.unit_time_s(self.model, j, precision, context, tokens) for j in range(a, b)) \
                + dev.segment_overhead_s(self.model, a)
        return self._range_cache[key]

    def weights_bytes(self, a: int, b: int, precision: str) -> float:
        return sum(layer_param_bytes(l, precision) for l in self.model.layers[a:b])

    def kv_bytes(self, a: int, b: int, tokens: int) -> float:
        # The KV cache stays at the profile's dtype (KV quantization is not modelled).
        return float(self.model.kv_bytes_per_token(a, b) * tokens)

    def workspace_bytes(self, tokens: int) -> float:
        h = self.model.hidden_size or max((l.out_elements for l in self.model.layers[:-1]), default=0)
        return ACT_WORKSPACE_VECTORS * h * 4.0 * max(1, tokens)

    def front_memory_bytes(self, ell: int, precision: str, kv_tokens: int, cfg=None, codec_tokens: int = 1) -> float:
        """m(L_{1:ℓ}) + KV of [0, ℓ) for ``kv_tokens`` + workspace + codec buffers (m_buf)."""
        if ell == 0:
            return 0.0
        mem = self.weights_bytes(0, ell, precision) + self.kv_bytes(0, ell, kv_tokens)
        mem += self.workspace_bytes(codec_tokens if self.ar else 1)
        if ell < self.n and cfg is not None:
            elems = math.prod(self.feature_shape(ell, codec_tokens))
            mem += elems * CODEC_WORK_BYTES_PER_ELEMENT + self.payload_bytes(ell, codec_tokens, cfg)
        return mem

    def local_phase_memory_bytes(self, w: int, precision: str) -> float:
        """Peak memory of steps 1..w-1 run locally: every weight, the KV cache of every unit
        for the tokens so far, and the x_ℓ of each token kept for the hand-off."""
        if w < 2:
            return 0.0
        p0 = max(self.budgets.prompt_tokens, 1)
        handoff_tokens = p0 + w - 1
        mem = self.front_memory_bytes(self.n, canonical_precision(precision), handoff_tokens - 1, None, p0)
        return mem + handoff_tokens * (self.model.hidden_size or 0) * 4.0

    # -- whole candidates ----------------------------------------------------------------
    def evaluate(self, ell: int, w: int | None, precision: str, cfg, context_tokens: int | None = None) -> Estimate:
        """Cost of the candidate (ℓ, w, precision, codec) against the budgets."""
        precision = canonical_precision(precision)
        if self.ar:
            return self._evaluate_ar(ell, w, precision, cfg, context_tokens or self.budgets.context_tokens)
        return self._evaluate_single(ell, precision, cfg)

    def _evaluate_single(self, ell: int, precision: str, cfg) -> Estimate:
        """Eq. 2 / Eq. 3: L(ℓ, R) = L_d(L_{1:ℓ}) + L_c(ℓ, R); m(L_{1:ℓ}) + m_buf ≤ M."""
        b = self.budgets
        est = Estimate(ell, None if ell == self.n else 1, precision, cfg, 1)
        l_d = self.range_s(self.device, 0, ell, precision, 0, 1)
        if ell == self.n:
            l_c = 0.0
        else:
            est.bytes_per_token = est.handoff_bytes = self.payload_bytes(ell, 1, cfg)
            l_c = comm_latency_s(est.bytes_per_token, self.link, self.codec_s(ell, 1, cfg))
        est.step_latency_s = est.handoff_latency_s = l_d + l_c
        est.handoff_budget_s = b.latency_s
        est.memory_bytes = self.front_memory_bytes(ell, precision, 0, cfg if ell < self.n else None)
        if ell < self.n:
            server_precision = self.model.dtype if self.model.dtype in PRECISION_BYTES else "float32"
            est.server_time_s = self.range_s(self.server, ell, self.n, server_precision, 0, 1) + self.codec_s(ell, 1, cfg, True, self.server)
            est.server_step_s = est.server_time_s
        self._check(est, b.latency_s)
        return est

    def _evaluate_ar(self, ell: int, w: int | None, precision: str, cfg, ctx: int) -> Estimate:
        b = self.budgets
        p0 = max(b.prompt_tokens, 1)  # tokens of step 1
        new = max(1, ctx - b.prompt_tokens)  # decode steps of the request
        last_ctx = p0 + new - 2  # context before the last decode step
        est = Estimate(ell, w, precision, cfg, ctx)
        full = lambda c, t=1: self.range_s(self.device, 0, self.n, precision, c, t)
        server_precision = self.model.dtype if self.model.dtype in PRECISION_BYTES else "float32"
        if w is None:  # edge-only
            if ell != self.n:
                raise ValueError(f"offload_step=None (edge-only) needs split={self.n}, got {ell}")
            est.memory_bytes = self.front_memory_bytes(self.n, precision, p0 + new, None, p0)
            first = full(0, p0)
            est.step_latency_s = full(last_ctx) if new > 1 else first
            est.handoff_latency_s = first
            est.handoff_budget_s = b.handoff_latency_s or b.latency_s
            self._check(est, b.latency_s)
            return est
        if not 1 <= w <= new:
            raise ValueError(f"offload_step={w} is invalid: allowed 1..{new} or None")
        handoff_tokens = p0 + w - 1
        # Local phase: steps 1..w-1 run the whole model; the edge keeps x_ℓ of each token
        # for the hand-off. Peak memory of that phase: all weights + KV of every unit.
        local_mem = 0.0
        local_s = 0.0
        worst_local_step = 0.0
        if w >= 2:
            local_mem = self.local_phase_memory_bytes(w, precision)
            local_s = full(0, p0)
            if w >= 3:
                # Steps 2..w-1 at contexts p0..p0+w-3. The roofline is convex in the
                # context (a max of lines), so the trapezoid over the end points bounds
                # the sum from above: the safe side of a latency budget.
                a, z = full(p0), full(p0 + w - 3)
                local_s += (w - 2) * (a + z) / 2
                worst_local_step = max(a, z)
        # Hand-off step: [0, ℓ) on the new token(s) (step 1: the whole prompt), then
        # transfer of x_ℓ^w, Eq. 5.
        t_new = p0 if w == 1 else 1
        ctx_w = 0 if w == 1 else p0 + w - 2
        partial = self.range_s(self.device, 0, ell, precision, ctx_w, t_new)
        est.handoff_bytes = self.payload_bytes(ell, handoff_tokens, cfg)
        l_c_hand = comm_latency_s(est.handoff_bytes, self.link, self.codec_s(ell, handoff_tokens, cfg))
        est.handoff_latency_s = local_s + partial + l_c_hand
        est.handoff_budget_s = b.handoff_latency_s or w * b.latency_s
        # Per-token split phase (steps w+1..N), worst at the largest context.
        est.bytes_per_token = self.payload_bytes(ell, 1, cfg)
        if w < new:
            step = self.range_s(self.device, 0, ell, precision, last_ctx, 1)
            step += comm_latency_s(est.bytes_per_token, self.link, self.codec_s(ell, 1, cfg))
        else:
            step = 0.0
        est.step_latency_s = max(step, worst_local_step)
        split_mem = self.front_memory_bytes(ell, precision, p0 + new, cfg, handoff_tokens)
        est.memory_bytes = max(local_mem, split_mem)
        # Server: builds its cache of [ℓ, n) from the hand-off tokens, then one token per step.
        srv = self.range_s(self.server, ell, self.n, server_precision, 0, handoff_tokens)
        srv += self.codec_s(ell, handoff_tokens, cfg, True, self.server)
        steps_after = new - w
        if steps_after > 0:
            mid = handoff_tokens + steps_after / 2
            per = self.range_s(self.server, ell, self.n, server_precision, int(mid), 1) + self.codec_s(ell, 1, cfg, True, self.server)
            srv += steps_after * per
        est.server_step_s = self.range_s(self.server, ell, self.n, server_precision, last_ctx, 1) + self.codec_s(ell, 1, cfg, True, self.server)
        est.server_time_s = srv
        if b.ar_buffer_bytes is not None and est.handoff_bytes > b.ar_buffer_bytes:
            est.violations.append("ar-buffer")
        self._check(est, b.latency_s)
        return est

    def _check(self, est: Estimate, latency_budget_s: float) -> None:
        if math.isinf(est.step_latency_s) or math.isinf(est.handoff_latency_s):
            est.violations.append("link")
        if est.memory_bytes > self.budgets.memory_bytes:
            est.violations.append("memory")
        if est.step_latency_s > latency_budget_s:
            est.violations.append("latency")
        if est.handoff_latency_s > est.handoff_budget_s and "handoff-latency" not in est.violations:
            est.violations.append("handoff-latency")

    def cloud_server_time_s(self) -> float:
        """Server compute of the request under cloud-only (every unit, every step)."""
        return self.evaluate(0, 1, self.model.dtype if self.model.dtype in PRECISION_BYTES else "float32", None).server_time_s \
            if self.ar else self._evaluate_single(0, "float32", None).server_time_s
