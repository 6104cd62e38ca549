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
  for ``entropy`` the worst case of ``slicer.codec.reference.entropy`` (its packed mode).

Time: ``fit_time_model()`` times encode/decode of this machine on a few sizes and
sparsities and caches the table as JSON under ``~/.cache/slicer/`` (keyed by host, torch
version and model version); ``predict_time_s`` interpolates it (fitting on first use). A
global ``a + b·N + c·k`` least-squares fit was tried first and rejected: on this shared
machine it predicted 35 ms for N = 4096 against 0.44 ms measured (the fixed cost is tiny
and the large sizes are noisy), so the table is interpolated instead. A device profile measured once and reused, as Petals does.
"""
from __future__ import annotations

import json
import math
import os
import platform
import time
from pathlib import Path

import numpy as np

from slicer.codec.config import CodecConfig
from slicer.codec.reference import index as _index
from slicer.codec.reference.atkf import keep_count
from slicer.codec.wire import varint_len

#: Bumped whenever the timing procedure or the layout changes (stale caches are ignored).
TIME_MODEL_VERSION = 2


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
    """Time SLICER encode and decode (``slicer.codec.encode``/``slicer.codec.decode``, default settings
    otherwise) on this machine for each size and sparsity, medians of ``reps`` interleaved
    runs, and cache the table. ``predict_time_s`` interpolates it."""
    import torch

    from slicer import codec

    rows = []
    gen = torch.Generator().manual_seed(0)
    for n in sizes:
        x = torch.randn(n, generator=gen)
        for s in sparsities:
            cfg = CodecConfig(method="slicer", sparsity=s)
            payload = codec.encode(x, cfg)
            enc, dec = [], []
            for _ in range(reps):  # interleaved, so a burst of load hits both alike
                enc.append(_median_s(lambda x=x, cfg=cfg: codec.encode(x, cfg), 1))
                dec.append(_median_s(lambda payload=payload: codec.decode(payload), 1))
            rows.append({
                "numel": n, "k": keep_count(n, s), "sparsity": s,
                "encode_s": float(np.median(enc)), "decode_s": float(np.median(dec)),
            })
    model = {"version": TIME_MODEL_VERSION, "sizes": list(sizes), "sparsities": list(sparsities), "rows": rows}
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
            if model.get("version") == TIME_MODEL_VERSION and model.get("rows"):
                return model
        except (OSError, ValueError):
            pass
    return fit_time_model() if fit_if_missing else None


def _time_at(rows: list[dict], numel: int, which: str) -> float:
    """Interpolate one sparsity's rows in log-log over N; below the smallest size the
    smallest time (fixed overheads dominate), above the largest linear in N."""
    rows = sorted(rows, key=lambda r: r["numel"])
    n = np.array([r["numel"] for r in rows], dtype=np.float64)
    t = np.array([max(r[which], 1e-9) for r in rows], dtype=np.float64)
    if numel <= n[0]:
        return float(t[0])
    if numel >= n[-1]:
        return float(t[-1] * numel / n[-1])
    return float(np.exp(np.interp(np.log(numel), np.log(n), np.log(t))))


def predict_time_s(shape, cfg: CodecConfig, model: dict | None = None, which: str = "encode_s") -> float:
    """ζ̂: predicted SLICER encode (``which="encode_s"``) or decode (``"decode_s"``) time in
    seconds on this machine, interpolated from the measured table (log-log in N, linear in
    the sparsity between the measured ones, clamped at the ends)."""
    if which not in ("encode_s", "decode_s"):
        raise ValueError(f"which={which!r}: allowed 'encode_s' or 'decode_s'")
    model = model or load_time_model()
    numel = max(1, math.prod(tuple(shape)))
    sps = sorted({r["sparsity"] for r in model["rows"]})
    per_s = [_time_at([r for r in model["rows"] if r["sparsity"] == s], numel, which) for s in sps]
    return float(np.interp(float(cfg.sparsity), sps, per_s))
