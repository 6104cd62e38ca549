"""SLICER's predictive payload model B^UB (seed 001 §3.3) and the codec time model ζ̂.

Payload: every section size of a SLICER payload follows from ``(shape, cfg)`` except the
value widths ABQ picks and the Rice index; ``slicer_sections(shape, cfg)`` bounds each
section (``payload ≤ bound`` always) and says whether the bound is exact:

- params: ``1 + 2·nb + 2 + ceil(Mtot/2) + 8·Mtot`` bytes (nb = bytes of N), always exact;
- index + labels: the coding's closed form (csr, bitmap, ef: exact), the Rice upper bound
  (``Σ floor(g/2^r) <= floor((N-k)/2^r)``), or for ``auto`` the bitmap's size (auto keeps
  the smallest candidate, and bitmap is one);
- values: ``ceil(Σ n_b·q_b / 8)`` with ``q_b = q_bit`` (the paper's B^UB, exact when ABQ is
  off with one width), for a list Q the largest over every possible sign split, plus
  for ``entropy`` the worst case of ``codec.reference.entropy`` (its packed mode).

Time: ``fit_time_model()`` times encode/decode of this machine on a few sizes and
sparsities, fits ``t = a + b·N + c·k`` by least squares and caches the table as JSON under
``~/.cache/slicer/`` (keyed by host, torch version and model version); ``predict_time_s``
reads it (fitting on first use). A device profile measured once and reused, as Petals does.
"""
from __future__ import annotations

import json
import math
import os
import platform
import time
from pathlib import Path

import numpy as np

from codec.config import CodecConfig
from codec.reference import index as _index
from codec.reference.atkf import keep_count
from codec.wire import varint_len

#: Bumped whenever the timing procedure or the layout changes (stale caches are ignored).
TIME_MODEL_VERSION = 1


def count_nbytes(numel: int) -> int:
    """Width of the k and n+ fields of the params section: bytes to hold N."""
    return max(1, (int(numel).bit_length() + 7) // 8)


def params_nbytes(numel: int, nblocks: int) -> int:
    return 1 + 2 * count_nbytes(numel) + 2 + (nblocks + 1) // 2 + 8 * nblocks


def _max_list_value_bits(k: int, q: tuple[int, ...]) -> int:
    """Largest ``Σ n_b·Q[m_b]`` over every split ``k = n+ + n-`` (both signs use Q, so
    ``M+ = M- = len(Q)``): with ``n = aM + r`` per sign the sum is
    ``floor(n/M)·ΣQ + ΣQ[:r]``, and only ``r+ = n+ mod M`` matters."""
    m = len(q)
    total, prefix = sum(q), np.concatenate([[0], np.cumsum(q)]).tolist()
    best = 0
    for r1 in range(m):
        r2 = (k - r1) % m
        if r1 + r2 > k:  # infeasible: both remainders need entries
            continue
        full = (k - r1 - r2) // m  # a + b, full rounds over both signs
        best = max(best, full * total + prefix[r1] + prefix[r2])
    return best


def value_bits_bound(k: int, cfg: CodecConfig) -> int:
    if isinstance(cfg.bits, tuple):
        return _max_list_value_bits(k, cfg.bits)
    return k * int(cfg.bits)


def slicer_sections(shape: tuple[int, ...], cfg: CodecConfig) -> dict:
    """Per-section byte bounds of a SLICER payload and whether their sum is exact."""
    numel = math.prod(shape)
    k = keep_count(numel, cfg.sparsity)
    mtot = cfg.blocks[0] + cfg.blocks[1]
    params = params_nbytes(numel, mtot)
    coding = cfg.index
    if coding == "auto":
        index_and_labels = _index.index_nbytes("bitmap", shape, k, mtot)
    else:
        index_and_labels = _index.index_nbytes(coding, shape, k, mtot)
    labels = 0 if coding == "csr" else _index.labels_nbytes(k, mtot)
    vbits = value_bits_bound(k, cfg)
    values = (vbits + 7) // 8
    if cfg.entropy:
        # codec.reference.entropy's packed mode: u8 mode, varint lo (< 2^16: ≤ 3 bytes),
        # u8 width, then the codes: ≤ 5 + ceil(n_b·q_b/8) per block; a varint length each.
        per_block = 5 + values + 1
        values = values + mtot * (5 + 1 + varint_len(per_block))
    exact = (
        not cfg.entropy
        and coding in ("csr", "bitmap", "ef")
        and cfg.fixed_bits
        and isinstance(cfg.bits, int)
    )
    return {
        "params": params,
        "index": index_and_labels - labels,
        "labels": labels,
        "values": values,
        "total": params + index_and_labels + values,
        "k": k,
        "exact": exact,
    }


# --- time model ζ̂ -----------------------------------------------------------------------------

_SIZES = (4096, 65536, 524288)
_SPARSITIES = (0.5, 0.75, 0.9)


def _cache_path() -> Path:
    import torch

    root = Path(os.environ.get("SLICER_CACHE", Path.home() / ".cache" / "slicer"))
    host = platform.node().replace("/", "_") or "host"
    return root / f"codec_time_v{TIME_MODEL_VERSION}_{host}_torch{torch.__version__.split('+')[0]}.json"


def _median_s(fn, reps: int) -> float:
    fn()
    ts = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return float(np.median(ts))


def fit_time_model(sizes=_SIZES, sparsities=_SPARSITIES, reps: int = 5, save: bool = True) -> dict:
    """Time SLICER encode and decode (default settings otherwise) on this machine and fit
    ``t_s = a + b·N + c·k`` for each. Returns (and caches) the table."""
    import torch

    import codec

    rows = []
    gen = torch.Generator().manual_seed(0)
    for n in sizes:
        x = torch.randn(n, generator=gen)
        for s in sparsities:
            cfg = CodecConfig(method="slicer", sparsity=s)
            payload = codec.encode(x, cfg)
            rows.append({
                "numel": n, "k": keep_count(n, s), "sparsity": s,
                "encode_s": _median_s(lambda: codec.encode(x, cfg), reps),
                "decode_s": _median_s(lambda: codec.decode(payload), reps),
            })
    a = np.array([[1.0, r["numel"], r["k"]] for r in rows])
    model = {"version": TIME_MODEL_VERSION, "rows": rows}
    for key in ("encode_s", "decode_s"):
        coef, *_ = np.linalg.lstsq(a, np.array([r[key] for r in rows]), rcond=None)
        model[key] = [float(c) for c in coef]
    if save:
        path = _cache_path()
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(model, indent=1))
    return model


def load_time_model(fit_if_missing: bool = True) -> dict | None:
    path = _cache_path()
    if path.exists():
        try:
            model = json.loads(path.read_text())
            if model.get("version") == TIME_MODEL_VERSION:
                return model
        except (OSError, ValueError):
            pass
    return fit_time_model() if fit_if_missing else None


def predict_time_s(shape, cfg: CodecConfig, model: dict | None = None, which: str = "encode_s") -> float:
    """ζ̂: predicted SLICER encode (``which="encode_s"``) or decode time in seconds on this
    machine, from the fitted table (never negative)."""
    model = model or load_time_model()
    numel = math.prod(tuple(shape))
    a, b, c = model[which]
    return max(0.0, a + b * numel + c * keep_count(numel, cfg.sparsity))

