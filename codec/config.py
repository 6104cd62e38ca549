"""`CodecConfig`: every knob of every codec method, validated on construction.

Field names follow the papers (seed 001 SLICER, seed 002 OPSC). ``CodecConfig(method=
"slicer", sparsity=0.75)`` is complete: the other fields default to the papers' settings
(λ = 0, δ = 0.01 as in SLICER §4.1; q_bit = 8 and three blocks per sign as in its Table 5).
"""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from typing import Any

from slicer.codec.errors import CodecError

#: Methods and what they are. The registry in ``slicer.codec.methods`` maps each to code.
METHODS: dict[str, str] = {
    "slicer": "SLICER (seed 001 §3): ATKF top-k, sign separation, magnitude splitting into "
    "equal-cardinality blocks, per-block AIQ with fixed Q or ABQ; index coding per `index`",
    "opsc": "OPSC (seed 002): threshold splitting (outliers kept in fp16 with positions) + "
    "token-wise adaptive bit quantization of the rest under distortion budget `delta`",
    "ecsq": "ours: optional Hadamard rotation, uniform dead-zone quantizer, entropy-coded "
    "symbols; step searched so the payload meets `rate` bits per element exactly or below",
    "raw": "lossless: the tensor's own bytes (exact round trip; the reference for fidelity)",
    "fp16": "baseline: cast to float16",
    "bf16": "baseline: cast to bfloat16",
    "fp16-zstd": "baseline: float16 bytes compressed with zstd",
    "int8": "baseline: int8 per-token absmax (one fp16 scale per row)",
    "q8_0": "baseline: Q8_0 blocks of 32 int8 + one fp16 scale (as distributed-llama sends)",
    "fp8": "baseline: float8 e4m3 per-token (one fp16 scale per row)",
}

INDEX_CODINGS = ("auto", "csr", "bitmap", "rice", "ef")
BACKENDS = ("auto", "torch", "triton")


@dataclass(frozen=True)
class CodecConfig:
    """Configuration of one codec method. Validated on construction (``CodecError``
    naming the field, the bad value and what is allowed)."""

    method: str = "slicer"
    """One of ``slicer.codec.config.METHODS``."""
    sparsity: float = 0.75
    """s ∈ [0, 1): fraction of elements dropped by ATKF; ``k_keep = floor((1-s)·N)``
    entries of the flattened tensor are kept (SLICER; also the dead zone target of ecsq
    when ``rate`` is None)."""
    asymmetry: float = 0.0
    """λ ∈ [0, 1): ATKF cut-offs τ+ = (1+λ)τ, τ− = −(1−λ)τ (λ = 0: plain top-|x|)."""
    blocks: tuple[int, int] = (3, 3)
    """(M(+), M(−)): equal-cardinality magnitude blocks per sign (MS). An int means the
    same count for both signs. Each in 1..64."""
    bits: int | tuple[int, ...] = 8
    """An int is q_bit, the start of ABQ's greedy lowering (or the fixed width of every
    block when ``delta`` is None). A tuple is the fixed list Q = [q1 ≥ … ≥ qM] for the
    blocks from largest to smallest magnitude (ABQ off). Each width in 1..16. For OPSC,
    q_bit is the widest token bit width; for baselines it is ignored."""
    delta: float | None = 0.01
    """δ ≥ 0: ABQ's distortion threshold on the integer mismatch DS (Eq. 9); OPSC's
    per-token distortion budget. None turns ABQ off (fixed bits)."""
    index: str = "auto"
    """Index coding of kept positions: ``csr`` (the paper's), ``bitmap``, ``rice`` (Rice-
    coded gaps), ``ef`` (Elias-Fano), or ``auto``: the fewest bytes for this payload."""
    entropy: bool = False
    """Entropy-code the quantized values (ours; slicer and opsc)."""
    rotate: bool = False
    """Apply a (randomised, seeded) Hadamard rotation per row before quantizing (ours);
    spreads outlier channels."""
    rate: float | None = None
    """Target bits per element for rate-controlled methods (ecsq): the payload is at most
    ``rate * numel / 8`` bytes, headers included. None: use ``sparsity``/``bits``."""
    threshold: float = 6.0
    """OPSC: an element is an outlier when |x| > threshold · RMS of its token (row)."""
    seed: int = 0
    """Seed of the pseudo-random tie-breaking (ATKF) and of the rotation; same input,
    config and seed give the same bytes on every backend."""
    backend: str = "auto"
    """``torch`` (reference, CPU), ``triton`` (GPU kernels; CPU under TRITON_INTERPRET=1)
    or ``auto``: triton for CUDA tensors, torch otherwise. The environment variable
    ``SLICER_CODEC_BACKEND`` overrides ``auto``. Never part of the payload."""

    def __post_init__(self) -> None:
        def bad(field: str, value: Any, allowed: str) -> CodecError:
            return CodecError(f"CodecConfig.{field}={value!r} is invalid: allowed {allowed}")

        if self.method not in METHODS:
            raise bad("method", self.method, "one of " + ", ".join(METHODS))
        if not isinstance(self.sparsity, (int, float)) or not 0.0 <= float(self.sparsity) < 1.0:
            raise bad("sparsity", self.sparsity, "a number in [0, 1)")
        if not isinstance(self.asymmetry, (int, float)) or not 0.0 <= float(self.asymmetry) < 1.0:
            raise bad("asymmetry", self.asymmetry, "a number in [0, 1)")
        blocks = self.blocks
        if isinstance(blocks, int) and not isinstance(blocks, bool):
            blocks = (blocks, blocks)
        if isinstance(blocks, list):
            blocks = tuple(blocks)
        if (
            not isinstance(blocks, tuple)
            or len(blocks) != 2
            or not all(isinstance(m, int) and not isinstance(m, bool) and 1 <= m <= 64 for m in blocks)
        ):
            raise bad("blocks", self.blocks, "an int or a pair (M+, M-) of ints in 1..64")
        object.__setattr__(self, "blocks", blocks)
        bits = self.bits
        if isinstance(bits, list):
            bits = tuple(bits)
        if isinstance(bits, tuple):
            if not bits or not all(isinstance(q, int) and not isinstance(q, bool) and 1 <= q <= 16 for q in bits):
                raise bad("bits", self.bits, "an int in 1..16 or a non-empty list of ints in 1..16")
            # Descending Q is the paper's rule; other orders stay allowed for ablations
            # (seed 001 Table 5 compares [8,2] with [1,4,4]).
            if len(bits) > 64:
                raise bad("bits", self.bits, "at most 64 widths")
        elif not (isinstance(bits, int) and not isinstance(bits, bool) and 1 <= bits <= 16):
            raise bad("bits", self.bits, "an int in 1..16 or a non-empty list of ints in 1..16")
        object.__setattr__(self, "bits", bits)
        if self.delta is not None and (not isinstance(self.delta, (int, float)) or not self.delta >= 0.0):
            raise bad("delta", self.delta, "None or a number >= 0")
        if self.index not in INDEX_CODINGS:
            raise bad("index", self.index, "one of " + ", ".join(INDEX_CODINGS))
        if self.rate is not None and (not isinstance(self.rate, (int, float)) or not 0.0 < self.rate <= 32.0):
            raise bad("rate", self.rate, "None or a number of bits per element in (0, 32]")
        if not isinstance(self.threshold, (int, float)) or not self.threshold > 0.0:
            raise bad("threshold", self.threshold, "a number > 0")
        if not isinstance(self.seed, int) or isinstance(self.seed, bool) or not 0 <= self.seed < 2**32:
            raise bad("seed", self.seed, "an int in [0, 2**32)")
        if self.backend not in BACKENDS:
            raise bad("backend", self.backend, "one of " + ", ".join(BACKENDS))
        for flag in ("entropy", "rotate"):
            if not isinstance(getattr(self, flag), bool):
                raise bad(flag, getattr(self, flag), "True or False")

    @property
    def fixed_bits(self) -> bool:
        """True when block widths are fixed (a list Q, or ABQ off)."""
        return isinstance(self.bits, tuple) or self.delta is None

    def resolved_backend(self, device_type: str) -> str:
        if self.backend != "auto":
            return self.backend
        env = os.environ.get("SLICER_CODEC_BACKEND", "").strip().lower()
        if env in ("torch", "triton"):
            return env
        return "triton" if device_type == "cuda" else "torch"

    def replace(self, **changes: Any) -> CodecConfig:
        return dataclasses.replace(self, **changes)

    @classmethod
    def parse(cls, spec: str) -> CodecConfig:
        """Parse a CLI spec: ``lossless`` / ``raw``, or ``METHOD[:k=v,k=v...]``, e.g.
        ``slicer:sparsity=0.75,bits=8`` or ``slicer:bits=8/4/2,delta=none``. List values
        are separated by ``/``; ``none`` is None."""
        spec = spec.strip()
        if spec in ("lossless", "raw"):
            return cls(method="raw")
        method, _, rest = spec.partition(":")
        kwargs: dict[str, Any] = {"method": method.strip()}
        names = {f.name for f in dataclasses.fields(cls)}
        for item in filter(None, (p.strip() for p in rest.split(","))):
            key, eq, val = item.partition("=")
            key = key.strip()
            if not eq or key not in names:
                raise CodecError(f"codec spec {spec!r}: {item!r} is not FIELD=VALUE with FIELD one of {sorted(names)}")
            kwargs[key] = _parse_value(val.strip())
        return cls(**kwargs)

    def spec(self) -> str:
        """The inverse of ``parse``: a short string naming non-default fields."""
        if self.method == "raw":
            return "lossless"
        default = CodecConfig(method=self.method)
        parts = []
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if f.name in ("method", "backend") or v == getattr(default, f.name):
                continue
            if isinstance(v, tuple):
                v = "/".join(str(q) for q in v)
            parts.append(f"{f.name}={'none' if v is None else v}")
        return self.method + (":" + ",".join(parts) if parts else "")


def _parse_value(val: str) -> Any:
    low = val.lower()
    if low == "none":
        return None
    if low in ("true", "false"):
        return low == "true"
    if "/" in val:
        return tuple(_parse_value(v) for v in val.split("/"))
    try:
        return int(val)
    except ValueError:
        pass
    try:
        return float(val)
    except ValueError:
        return val
