"""Accuracy of a (split, codec setting, front precision): measured table or a documented prior.

The table comes from the fidelity benchmark: JSON rows with keys ``split``, ``codec``
(a ``CodecConfig.spec()`` string, e.g. ``slicer:sparsity=0.5,blocks=2``) and
``next_token_agreement``; optional ``front_precision``. Either a JSON list of rows or
JSON lines.

Without a row for a setting, the **prior** is used. It only has to order settings the
way the papers observe, and it is monotone by construction:

- lossless (``raw``) is 1;
- more sparsity is worse: ``0.998 - 0.3 · s²`` (lossy always below lossless) (SLICER Table 1: small losses up to s ≈ 0.75,
  steeper beyond), times a small penalty for fewer than 8 bits, ``0.99^(8 - q)``;
- more blocks per sign is slightly better (finer quantization ranges, SLICER §3.2):
  a bonus of ``1e-4 · (M+ + M-)``, so among equally sparse settings the finer one wins;
- the split depth does not change the prior (deeper split = no change);
- dense 8-bit baselines (int8, q8_0, fp8) 0.998; OPSC ``0.998 · 0.99^(8 - q_bit)``;
- front precision: float32/16 1, int8 0.995, int4 0.97 (OPSC Table 2-class losses).

Settings the table knows rank above unknown ones only through their values; a table
value and the prior are on the same 0..1 scale (agreement with the uncompressed model).
"""
from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

PRECISION_PRIOR = {"float32": 1.0, "float16": 1.0, "bfloat16": 1.0, "int8": 0.995, "int4": 0.97}


def _key(cfg) -> tuple:
    """A comparable key of the fields that change fidelity (not seed or backend)."""
    if cfg is None:
        return ("tokens",)
    if cfg.method == "raw":
        return ("raw",)
    return (cfg.method, round(float(cfg.sparsity), 6), tuple(cfg.blocks), cfg.bits, cfg.delta,
            round(float(cfg.asymmetry), 6), cfg.rate, cfg.rotate, cfg.entropy, cfg.threshold)


def prior_accuracy(cfg, front_precision: str = "float16") -> float:
    """The documented monotone prior (module docstring)."""
    p = PRECISION_PRIOR.get(front_precision, 1.0)
    if cfg is None or cfg.method == "raw":
        return p
    s = float(cfg.sparsity) if cfg.method == "slicer" else 0.0
    q = max(cfg.bits) if isinstance(cfg.bits, tuple) else int(cfg.bits)
    # 0.998 at s = 0, q = 8: any lossy setting ranks below lossless.
    acc = (0.998 - 0.3 * s * s) * 0.99 ** max(0, 8 - q)
    if cfg.method == "slicer":
        acc += 1e-4 * (cfg.blocks[0] + cfg.blocks[1])
    elif cfg.method in ("fp16", "bf16", "fp16-zstd"):
        acc = 1.0 - 1e-4
    elif cfg.method in ("int8", "q8_0", "fp8"):
        acc = 0.998
    elif cfg.method == "opsc":  # threshold splitting keeps outliers exact; q_bit caps the token widths
        acc = 0.998 * 0.99 ** max(0, 8 - q)
    return min(1.0, acc) * p


@dataclass
class AccuracyTable:
    """Measured next-token agreement per (split, codec setting[, front precision])."""

    rows: dict = field(default_factory=dict)
    """``(split, codec key, front precision or None) -> agreement``."""
    source: str = ""

    @classmethod
    def from_rows(cls, rows: Iterable[Mapping], source: str = "") -> AccuracyTable:
        from slicer.codec import CodecConfig, CodecError

        table = cls(source=source)
        for i, r in enumerate(rows):
            for k in ("split", "codec", "next_token_agreement"):
                if k not in r:
                    raise ValueError(f"accuracy row {i} ({source or 'rows'}): missing key {k!r}; need split, codec, next_token_agreement")
            try:
                cfg = CodecConfig.parse(str(r["codec"]))
            except (CodecError, ValueError, TypeError) as e:
                raise ValueError(f"accuracy row {i}: codec={r['codec']!r} is not a codec spec: {e}") from None
            agree = float(r["next_token_agreement"])
            if not 0.0 <= agree <= 1.0 or math.isnan(agree):
                raise ValueError(f"accuracy row {i}: next_token_agreement={agree!r} is invalid: allowed [0, 1]")
            fp = r.get("front_precision")
            if fp is not None:
                from slicer.policies.schema import canonical_precision

                fp = canonical_precision(fp)
            table.rows[(int(r["split"]), _key(cfg), fp)] = agree
        return table

    @classmethod
    def load(cls, path: str | Path) -> AccuracyTable:
        p = Path(path)
        text = p.read_text(encoding="utf-8").strip()
        if text.startswith("["):
            rows = json.loads(text)
        else:
            rows = [json.loads(line) for line in text.splitlines() if line.strip()]
        return cls.from_rows(rows, source=str(p))

    def lookup(self, split: int, cfg, front_precision: str | None = None) -> tuple[float, bool] | None:
        """(agreement, precision matched) at this split and setting; the nearest measured
        split of the same setting when this split was not measured; None when the
        setting never was. Rows without ``front_precision`` match any precision (the
        second value is then False and the caller applies the precision prior)."""
        k = _key(cfg)
        best = None
        for (s, kk, fp), v in self.rows.items():
            if kk != k or fp not in (front_precision, None):
                continue
            rank = (abs(s - split), fp is None)
            if best is None or rank < best[0]:
                best = (rank, v, fp is not None)
        return None if best is None else (best[1], best[2])


def accuracy_of(split: int, cfg, front_precision: str, table: AccuracyTable | None) -> tuple[float, str]:
    """(agreement, source) with source ``table``, ``prior`` or ``lossless``."""
    if cfg is not None and cfg.method == "raw" and front_precision in ("float32", "float16", "bfloat16"):
        return 1.0, "lossless"
    if table is not None:
        hit = table.lookup(split, cfg, front_precision)
        if hit is not None:
            v, precision_matched = hit
            return (v if precision_matched else v * PRECISION_PRIOR.get(front_precision, 1.0)), "table"
    if cfg is not None and cfg.method == "raw":
        return PRECISION_PRIOR.get(front_precision, 1.0), "prior"
    return prior_accuracy(cfg, front_precision), "prior"
