"""ζ̂ per stage, as SLICER's time model writes it (seed 001 §3.3):

    ζ̂(θ, δ) = t_ATKF(s, λ) + t_MS(M+, M−) + Σ_{s,m} t_ABQ(q_m)   (+ index and packing)

Each stage is linear in the counts that drive its work (N elements, k = ⌊(1−s)N⌋ kept,
M = M+ + M− blocks, r width passes of ABQ):

- ``t_ATKF = a0 + a1·N + a2·N·[0 < k < N] + a3·N·[λ > 0]``: scoring the N values, the
  selection of the k largest when there is one to make (s = 0 keeps everything: a fitted
  λ-only term absorbed the selection's cost and mispredicted λ = 0 settings 8x), and
  λ > 0 scoring the two signs differently;
- ``t_MS = m0 + m1·k + m2·M``: the sign split and the equal-cardinality cuts of the k values;
- ``Σ t_ABQ = b0·M + b1·k·(1 + r)``: ranges and codes of every block, then r = 1 width tried
  below q_bit when δ is set (SLICER's δ = 0.01 usually stops there: one more pass), r = 0
  with fixed bits;
- ``t_pack = p0 + p1·N + p2·k``: the index (bitmap/CSR over N) and the value stream;
- decode (the server's side): ``d0 + d1·N + d2·k``.

Coefficients come from two places, both plain data here (this module never measures):

- ``slicer profile`` times the stages of the reference encoder on this host and fits them
  by non-negative least squares (``fit_stage_coefficients``); the fit is stored in the
  measured device profile (``MeasuredTimings.codec_stages``);
- a catalog device gets them from its roofline (``roofline_coefficients``): bytes each stage
  moves over its sustained bandwidth, plus one launch overhead per pass, as the fused Triton
  encoder runs it (radix multi-select for ATKF and MS, one quantize/pack kernel).
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

#: Stages in the order of the paper's sum, then packing; ``decode`` is the server's side.
STAGES = ("atkf", "ms", "abq", "pack", "decode")
#: Regressors of each stage (what each coefficient multiplies), for ``features``.
TERMS = {
    "atkf": ("1", "N", "N*select", "N*asym"),
    "ms": ("1", "k", "M"),
    "abq": ("M", "k*(1+r)"),
    "pack": ("1", "N", "k"),
    "decode": ("1", "N", "k"),
}


def counts(shape: Sequence[int], cfg) -> dict[str, float]:
    """The counts that drive each stage for a SLICER setting on a feature of ``shape``."""
    n = float(math.prod(shape))
    k = float(math.floor((1.0 - float(cfg.sparsity)) * n))
    m = float(cfg.blocks[0] + cfg.blocks[1])
    asym = 1.0 if float(getattr(cfg, "asymmetry", 0.0)) > 0 else 0.0
    fixed = isinstance(cfg.bits, tuple) or cfg.delta is None
    r = 0.0 if fixed else 1.0
    select = 1.0 if 0 < k < n else 0.0
    return {"N": n, "k": k, "M": m, "asym": asym, "r": r, "select": select}


def features(stage: str, c: Mapping[str, float]) -> list[float]:
    """Regressor values of ``stage`` (``TERMS[stage]``) for the counts ``c``."""
    vals = {"1": 1.0, "N": c["N"], "k": c["k"], "M": c["M"], "N*asym": c["N"] * c["asym"],
            "N*select": c["N"] * c.get("select", 1.0),
            "k*(1+r)": c["k"] * (1.0 + c["r"])}
    return [vals[t] for t in TERMS[stage]]


@dataclass(frozen=True)
class StageCoefficients:
    """Seconds per unit of each regressor of each stage (``TERMS``), for one device."""

    atkf: tuple[float, ...]
    ms: tuple[float, ...]
    abq: tuple[float, ...]
    pack: tuple[float, ...]
    decode: tuple[float, ...]
    source: str = "roofline"
    """``fit`` (timed on this host by ``slicer profile``) or ``roofline`` (catalog device)."""

    def __post_init__(self) -> None:
        for s in STAGES:
            v = getattr(self, s)
            if len(v) != len(TERMS[s]) or not all(isinstance(x, (int, float)) and math.isfinite(x) and x >= 0 for x in v):
                raise ValueError(f"StageCoefficients.{s}={v!r} is invalid: allowed {len(TERMS[s])} finite numbers >= 0 "
                                 f"(seconds per {', '.join(TERMS[s])})")

    def stage_s(self, shape: Sequence[int], cfg) -> dict[str, float]:
        """Predicted seconds of each encoder stage (and ``decode``) for ``cfg`` on ``shape``."""
        c = counts(shape, cfg)
        return {s: sum(a * x for a, x in zip(getattr(self, s), features(s, c))) for s in STAGES}

    def encode_s(self, shape: Sequence[int], cfg) -> float:
        """ζ̂: t_ATKF + t_MS + Σ t_ABQ + t_pack."""
        st = self.stage_s(shape, cfg)
        return st["atkf"] + st["ms"] + st["abq"] + st["pack"]

    def decode_s(self, shape: Sequence[int], cfg) -> float:
        return self.stage_s(shape, cfg)["decode"]

    def to_dict(self) -> dict:
        return {s: list(getattr(self, s)) for s in STAGES} | {"source": self.source}

    @classmethod
    def from_dict(cls, d: Mapping) -> StageCoefficients:
        if not isinstance(d, Mapping):
            raise ValueError(f"codec_stages must be a mapping of {', '.join(STAGES)}, got {type(d).__name__}")  # noqa: TRY004 - a profile error, like every other one here
        missing = [s for s in STAGES if s not in d]
        if missing:
            raise ValueError(f"codec_stages is missing {missing}: allowed keys {', '.join(STAGES)}, source")
        unknown = sorted(set(d) - set(STAGES) - {"source"})
        if unknown:
            raise ValueError(f"codec_stages has unknown key(s) {unknown}: allowed {', '.join(STAGES)}, source")
        try:
            vals = {s: tuple(float(x) for x in d[s]) for s in STAGES}
        except (TypeError, ValueError) as e:
            raise ValueError(f"codec_stages: every stage needs a list of numbers ({e})") from None
        return cls(**vals, source=str(d.get("source", "fit")))


def roofline_coefficients(bandwidth_bps: float, launch_s: float) -> StageCoefficients:
    """Stage coefficients of a device from its sustained bandwidth and launch overhead.

    Bytes per element each stage moves in the fused Triton encoder (codec/kernels): the
    ATKF scores the float32 values (4 B per element), its radix multi-select re-reads them
    about 3 times where there is a selection to make (12 B; none at s = 0), one more pass
    for λ > 0, MS's cuts re-read the k kept values 3 times (12 B), ABQ reads each
    value and writes its code per width pass (12 B), packing writes the bitmap (N/8 B) and
    the values (≤ 1 B at q_bit 8); the decoder writes the dense float32 output (4 B per
    element) after reading k values and positions (12 B). One launch per pass."""
    if not (bandwidth_bps > 0 and math.isfinite(bandwidth_bps)) or not (launch_s >= 0 and math.isfinite(launch_s)):
        raise ValueError(f"roofline needs a bandwidth > 0 and a launch overhead >= 0, got {bandwidth_bps!r}, {launch_s!r}")
    b = 1.0 / bandwidth_bps
    return StageCoefficients(
        atkf=(4 * launch_s, 4 * b, 12 * b, 4 * b),
        ms=(3 * launch_s, 12 * b, 0.0),
        abq=(0.0, 12 * b),
        pack=(2 * launch_s, 0.125 * b, 1.0 * b),
        decode=(3 * launch_s, 4 * b, 12 * b),
        source="roofline",
    )


def fit_stage_coefficients(rows: Sequence[Mapping]) -> StageCoefficients:
    """Non-negative least squares per stage over timed rows.

    Each row: ``N, k, M, asym, r`` (the counts) and the seconds of each stage under its
    name (``atkf, ms, abq, pack, decode``). Rows are weighted by 1/t so small features count
    as much as large ones (relative error, not absolute)."""
    import numpy as np
    from scipy.optimize import nnls

    if len(rows) < 4:
        raise ValueError(f"fit_stage_coefficients needs >= 4 timed rows, got {len(rows)}")
    out = {}
    for s in STAGES:
        a = np.array([features(s, r) for r in rows], dtype=np.float64)
        y = np.array([float(r[s]) for r in rows], dtype=np.float64)
        w = 1.0 / np.maximum(y, 1e-9)
        coef, _ = nnls(a * w[:, None], y * w)
        out[s] = tuple(float(x) for x in coef)
    return StageCoefficients(**out, source="fit")
