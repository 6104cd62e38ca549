"""The planner's inputs and output: `Budgets` and `SplitPlan`.

Both are plain frozen dataclasses so the runtime (the policy actor, the edge device)
can pass them around and log them; ``SplitPlan.to_dict()`` gives the JSON that
``slicer plan --json`` writes.
"""
from __future__ import annotations

import dataclasses
import enum
import json
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # slicer.codec imports torch; planning does not need it
    from slicer.codec import CodecConfig


class Mode(str, enum.Enum):
    """How one request runs, for a plan with split ℓ and offload step w (the one set of
    mode names: workloads, plans, records, ``EdgeSession`` and ``slicer eval``)."""

    SPLIT = "split"
    """w = 1: every step runs units ``[0, ℓ)`` on the edge and ``[ℓ, n)`` on the server."""
    LOCAL_THEN_OFFLOAD = "local-then-offload"
    """w > 1 (SLICER Eq. 5-6): the edge runs the whole model for w - 1 tokens, then hands
    the features of every token so far to the server and goes on as a split."""
    EDGE_ONLY = "edge-only"
    """The edge runs every unit; the server is never called."""
    CLOUD_ONLY = "cloud-only"
    """ℓ = 0: the edge sends token ids, the server runs every unit."""

    def __str__(self) -> str:
        return self.value

    @classmethod
    def of(cls, split: int, offload_step: int | None, num_units: int) -> Mode:
        """The mode of a plan: cloud-only for split 0, edge-only without an offload step
        (or with every unit on the edge), split from step 1, else local-then-offload."""
        if split <= 0:
            return cls.CLOUD_ONLY
        if offload_step is None or split >= num_units:
            return cls.EDGE_ONLY
        return cls.SPLIT if offload_step <= 1 else cls.LOCAL_THEN_OFFLOAD

    @property
    def sends_features(self) -> bool:
        """Features (not token ids, not nothing) cross the wire."""
        return self in (Mode.SPLIT, Mode.LOCAL_THEN_OFFLOAD)

#: Precisions a front segment may run at, and bytes per parameter at each. Quantized
#: formats carry one fp16 scale per group of 32 (int8: 2/32 = 0.0625 byte/param) or of
#: 32 with a zero point for int4 (4/32 = 0.125), as in llama.cpp's Q8_0 / Q4_1 blocks.
PRECISION_BYTES: dict[str, float] = {
    "float32": 4.0,
    "float16": 2.0,
    "bfloat16": 2.0,
    "int8": 1.0 + 2.0 / 32,
    "int4": 0.5 + 4.0 / 32,
}
PRECISION_ALIASES = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16", "half": "float16", "float": "float32"}


def canonical_precision(name: str) -> str:
    """``fp16`` -> ``float16``; raises ValueError naming the allowed ones."""
    key = PRECISION_ALIASES.get(str(name).lower(), str(name).lower())
    if key not in PRECISION_BYTES:
        raise ValueError(f"front_precision={name!r} is invalid: allowed {', '.join(PRECISION_BYTES)} (or fp32/fp16/bf16)")
    return key


@dataclass(frozen=True)
class Budgets:
    """What one device may spend on one request (SLICER's D, M, M_ar; OPSC's sequence length)."""

    latency_s: float
    """D. Autoregressive: the budget of one decode step (time per output token) seen by
    the edge, Eq. 2 per step; the hand-off step of Eq. 5 gets ``w · latency_s`` unless
    ``handoff_latency_s`` is set. Single-shot: the budget of the one inference."""
    memory_bytes: float
    """M: edge memory for weights of the front segment, its KV cache and codec buffers."""
    new_tokens: int = 128
    """Tokens to generate (AR); the KV cache is sized for ``prompt_tokens + new_tokens``."""
    prompt_tokens: int = 0
    """Prompt length. Its features cross the wire at the hand-off (prefill)."""
    ar_buffer_bytes: float | None = None
    """M_ar: cap on the payload of the hand-off step, B(x_ℓ^w) ≤ M_ar (Eq. 6). None: no cap."""
    handoff_latency_s: float | None = None
    """Budget of L_AR(ℓ, w, R) (Eq. 5). None: ``w · latency_s`` (the average per-token
    latency up to and including the hand-off meets D)."""
    min_accuracy: float | None = None
    """Lowest acceptable next-token agreement (from an ``AccuracyTable``); settings the
    table scores below it are never chosen. None: no floor."""

    def __post_init__(self) -> None:
        def need(name: str, ok: bool, allowed: str) -> None:
            if not ok:
                raise ValueError(f"Budgets.{name}={getattr(self, name)!r} is invalid: allowed {allowed}")

        need("latency_s", _pos(self.latency_s), "a number > 0 (seconds)")
        need("memory_bytes", _pos(self.memory_bytes), "a number > 0 (bytes)")
        need("new_tokens", isinstance(self.new_tokens, int) and self.new_tokens >= 1, "an int >= 1")
        need("prompt_tokens", isinstance(self.prompt_tokens, int) and self.prompt_tokens >= 0, "an int >= 0")
        need("ar_buffer_bytes", self.ar_buffer_bytes is None or _pos(self.ar_buffer_bytes), "None or a number > 0")
        need("handoff_latency_s", self.handoff_latency_s is None or _pos(self.handoff_latency_s), "None or a number > 0")
        need("min_accuracy", self.min_accuracy is None or 0.0 <= self.min_accuracy <= 1.0, "None or a number in [0, 1]")

    @property
    def context_tokens(self) -> int:
        """Largest context of the request: prompt plus generated tokens."""
        return self.prompt_tokens + self.new_tokens

    def replace(self, **changes: Any) -> Budgets:
        return dataclasses.replace(self, **changes)


def _pos(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0 and math.isfinite(v)


@dataclass(frozen=True)
class PlanKey:
    """What tells two plans apart for a device: a re-plan changes one of these."""

    split: int
    offload_step: int | None
    front_precision: str
    codec_spec: str

    def same_model_run(self, other: PlanKey) -> bool:
        """Same split, hand-off step and front precision (only the codec may differ)."""
        return (self.split, self.offload_step, self.front_precision) == (
            other.split, other.offload_step, other.front_precision)


@dataclass(frozen=True)
class SplitPlan:
    """What one device does for one request: the policy's answer.

    ``split`` = ℓ: the edge runs units ``[0, ℓ)``; 0 is cloud-only, ``num_layers`` edge-only.
    ``offload_step`` = w (1-based decode step of the hand-off); None: never offloads."""

    policy: str
    """Policy that produced it (``slicer``, ``opsc``, ``cloud-only``, ...)."""
    feasible: bool
    """False when no setting meets the budgets; ``binding`` names the constraint."""
    split: int
    """ℓ: number of units the edge runs (0 cloud-only, n edge-only)."""
    offload_step: int | None
    """w: the decode step at which the edge hands off; 1 = from the start (a per-token
    split, prefill included); None = never (edge-only)."""
    num_layers: int
    """n, units of the model (so a reader can tell edge-only from a deep split)."""
    method: str = "raw"
    """Codec method of the feature (``slicer``, ``opsc``, ``raw``...); ``tokens`` for cloud-only."""
    codec_spec: str = "lossless"
    """``CodecConfig.spec()`` of the codec setting (parse back with ``CodecConfig.parse``)."""
    sparsity: float = 0.0
    """s of the chosen codec setting (0 for dense methods)."""
    blocks: tuple[int, int] = (1, 1)
    """(M+, M−) of the chosen setting."""
    bits: int | tuple[int, ...] = 8
    """q_bit (or the fixed list Q) of the chosen setting."""
    front_precision: str = "bfloat16"
    """Precision of the edge's weights (``float16``, ``int8``, ``int4``...)."""
    tokens: int = 0
    """Context length the plan is sized for (OPSC's sequence length)."""
    predicted_latency_s: float = 0.0
    """Per-step latency seen by the edge at the largest context (Eq. 2: edge compute + ε-outage
    transfer + codec); inf when infeasible for lack of a link."""
    predicted_e2e_latency_s: float = 0.0
    """Per-step latency including the server's compute of units [ℓ, n) for one token
    (unbatched, on the server device) and the transfer: what a user waits per token.
    Eq. 2 leaves the server out (SLICER footnote 1); this does not."""
    predicted_handoff_latency_s: float = 0.0
    """L_AR of Eq. 5 (up to and including the hand-off step); equals the single-shot L for vision."""
    predicted_memory_bytes: float = 0.0
    """Peak edge memory: front weights + KV cache at the largest context + codec buffers."""
    bytes_per_token: float = 0.0
    """Predicted payload (B^UB, headers included) per decode step after the hand-off;
    per image for single-shot models."""
    handoff_bytes: float = 0.0
    """Predicted payload of the hand-off step (features of all tokens so far)."""
    server_time_s: float = 0.0
    """Server compute for the whole request under this plan (units [ℓ, n) for every step
    after the hand-off) on the server device."""
    cloud_server_time_s: float = 0.0
    """Server compute of the same request under cloud-only (all units, every step)."""
    accuracy: float | None = None
    """Expected next-token agreement of the chosen setting (table or prior); None unknown."""
    accuracy_source: str = "prior"
    """``table``, ``prior`` or ``lossless``."""
    tier: int = 0
    """Tier of SLICER-SEARCH that decided: 0 nothing to search (edge-only or a baseline),
    1 block counts, 2 sparsity, 3 split retreat."""
    binding: str = ""
    """Constraint that binds: for infeasible plans the one that failed (``memory``,
    ``latency``, ``link``, ``accuracy``); for feasible ones what stopped a deeper split."""
    reason: str = ""
    """One or two human-readable sentences: why this plan."""
    device: str = ""
    link: str = ""
    extra: dict[str, Any] = field(default_factory=dict)
    codec: CodecConfig | None = field(default=None, compare=False)
    """The chosen codec setting itself (``codec_spec`` is its ``spec()``); None for
    ``tokens``/``none`` plans. Travels with the plan: nobody parses the spec back."""
    replanned_goodput_mbps: float | None = None
    """Set on a plan the policy made from a measured goodput (its smoothed estimate)."""

    @property
    def mode(self) -> Mode:
        return Mode.of(self.split, self.offload_step, self.num_layers)

    @classmethod
    def fixed(cls, split: int, offload_step: int | None, num_layers: int, codec: Any = "lossless",
              front_precision: str = "float32", **kw: Any) -> SplitPlan:
        """A plan chosen by hand (tests, a forced setting): ``codec`` a ``CodecConfig`` or a spec."""
        from slicer.codec import CodecConfig

        cfg = codec if isinstance(codec, CodecConfig) else CodecConfig.parse(codec)
        kw.setdefault("reason", f"fixed plan l={split} w={offload_step}")
        return cls(policy=kw.pop("policy", "fixed"), feasible=kw.pop("feasible", True), split=split,
                   offload_step=offload_step, num_layers=num_layers, method=cfg.method, codec_spec=cfg.spec(),
                   codec=cfg, front_precision=front_precision, **kw)

    @property
    def key(self) -> PlanKey:
        """What a re-plan may change: split, offload step, front precision, codec."""
        return PlanKey(self.split, self.offload_step, self.front_precision, self.codec_spec)

    @property
    def offloads(self) -> bool:
        return self.offload_step is not None

    @property
    def server_spared(self) -> float:
        """Fraction of cloud-only server time this plan spares (0 cloud-only, 1 edge-only)."""
        if self.cloud_server_time_s <= 0:
            return 0.0
        return 1.0 - self.server_time_s / self.cloud_server_time_s

    def to_dict(self) -> dict[str, Any]:
        """The JSON of ``slicer plan --json`` (milliseconds and megabytes for humans)."""
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "codec"}
        d["extra"] = dict(self.extra)
        d["mode"] = self.mode.value
        d["blocks"] = list(self.blocks)
        d["bits"] = list(self.bits) if isinstance(self.bits, tuple) else self.bits
        d["predicted_latency_ms"] = to_ms(self.predicted_latency_s)
        d["predicted_handoff_latency_ms"] = to_ms(self.predicted_handoff_latency_s)
        d["predicted_e2e_latency_ms"] = to_ms(self.predicted_e2e_latency_s)
        d["predicted_memory_mib"] = self.predicted_memory_bytes / 2**20
        d["server_time_ms"] = to_ms(self.server_time_s)
        d["cloud_server_time_ms"] = to_ms(self.cloud_server_time_s)
        d["server_spared"] = self.server_spared
        return {k: _json_safe(v) for k, v in d.items()}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1)

    def summary(self) -> str:
        """A few lines for a terminal."""
        if self.offload_step is None:
            where = f"edge-only ({self.split}/{self.num_layers} units on the edge)"
        elif self.split == 0:
            where = "cloud-only (tokens sent, server runs every unit)"
        else:
            where = f"split at {self.split}/{self.num_layers}, offload from step {self.offload_step}"
        lines = [
            f"policy {self.policy}: {'FEASIBLE' if self.feasible else 'INFEASIBLE'}; {where}",
            (f"  codec {self.codec_spec}  (sparsity {self.sparsity:g}, blocks {self.blocks}, bits {self.bits}); "
             f"front precision {self.front_precision}; context {self.tokens} tokens"),
            (f"  latency/step {_fmt_ms(self.predicted_latency_s)} (with server {_fmt_ms(self.predicted_e2e_latency_s)})  "
             f"hand-off {_fmt_ms(self.predicted_handoff_latency_s)}  memory {self.predicted_memory_bytes / 2**20:,.1f} MiB  "
             f"bytes/token {self.bytes_per_token:,.0f}  hand-off bytes {self.handoff_bytes:,.0f}"),
            (f"  server time {_fmt_ms(self.server_time_s)} vs cloud-only {_fmt_ms(self.cloud_server_time_s)} "
             f"(spared {100 * self.server_spared:.0f}%); accuracy {self._acc()}; tier {self.tier}; binding {self.binding or '-'}"),
            f"  reason: {self.reason}",
        ]
        return "\n".join(lines)

    def _acc(self) -> str:
        return "?" if self.accuracy is None else f"{self.accuracy:.3f} ({self.accuracy_source})"


def to_ms(s: float) -> float | None:
    return None if not math.isfinite(s) else s * 1e3


def _fmt_ms(s: float) -> str:
    return "inf" if not math.isfinite(s) else f"{s * 1e3:,.2f} ms"


def _json_safe(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, tuple):
        return [_json_safe(x) for x in v]
    if isinstance(v, dict):
        return {k: _json_safe(x) for k, x in v.items()}
    return v
