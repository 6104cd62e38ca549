"""OPSC (seed 002): threshold splitting (TS) + token-wise adaptive bit quantization (TAB-Q).

The seed is a summary without formulas; this is the most sensible reading, with each gap
filled as stated:

- **Token.** A row of the last dim (all other dims flattened): for an LLM hidden state
  (batch, seq, hidden) a token's hidden vector. (Gap: the seed says "token-wise".)
- **Threshold splitting.** An element is an outlier when |x| > ``cfg.threshold`` · RMS of
  its row (RMS over the whole row, outliers included). (Gap: the seed does not say
  relative to what; a per-token RMS multiple is scale-free, so one threshold serves every
  layer.) Outliers travel exactly as fp16 (saturating at ±65504) with their positions:
  per-row counts at a common width, then each outlier's column at ceil(log2 cols) bits.
  Because count·t²·RMS² < Σx² = cols·RMS², a row has fewer than cols/t² outliers, which
  bounds ``predict_bytes``.
- **Token-wise adaptive bits.** The inliers of each row are quantized asymmetrically onto
  [lo, hi] (the row's inlier min and max, sent as fp16) with b bits: scale = (hi-lo)/(2^b-1),
  code = round((x-lo)/scale). Each row takes the smallest b in 1..q_bit (``cfg.bits``; the
  largest entry of a list) whose relative MSE over its inliers, Σ(x-x̂)²/Σx², is ≤
  ``cfg.delta``; with ``delta`` None every row uses q_bit. (Gap: the seed names a
  "distortion budget" without a metric; relative MSE per token is scale-free.) Widths
  travel as 4 bits per row. The search is vectorized over rows: a loop over widths, not rows.

Sections (frozen, wire version 1)::

    0  widths     rows codes of 4 bits: b - 1
    1  ranges     rows fp16 lo, then rows fp16 hi
    2  codes      for b = 1..16: the codes of all rows of width b, in row order, packed at b bits
    3  index      u8 count width w (0..31), rows counts packed at w bits, then
                  the columns of all outliers (row-major, ascending within a row) at
                  ceil(log2 cols) bits (0 bits when cols = 1)
    4  outliers   fp16 values in the same order

Range: lo, hi and the outliers travel as fp16, so OPSC represents |x| < 65520 (what
rounds to a finite float16); a tensor beyond that is refused with a ``CodecError`` naming
the range (it used to clip to ±65504 silently).

Decode checks every size against the shape before allocating; counts ≤ cols, columns
strictly increasing within a row and < cols, widths ≤ 16, ranges finite with lo ≤ hi, and
outlier values finite.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from slicer.codec.baselines import FP16_MAX, rows_cols
from slicer.codec.config import CodecConfig
from slicer.codec.errors import CodecError
from slicer.codec.reference.bitpack import pack_bits, packed_nbytes, unpack_bits
from slicer.codec.wire import Frame

N_SECTIONS = 5
#: Smallest magnitude float16 rounds to inf (65504 + half its last step).
FP16_LIMIT = 65520.0
MAX_WIDTH = 16


def _qbit(cfg: CodecConfig) -> int:
    return max(cfg.bits) if isinstance(cfg.bits, tuple) else int(cfg.bits)


def _col_bits(cols: int) -> int:
    return (cols - 1).bit_length()


def _fp16(x: torch.Tensor) -> torch.Tensor:
    return x.float().clamp(-FP16_MAX, FP16_MAX).to(torch.float16)


def _max_outliers_per_row(cols: int, threshold: float) -> int:
    # count < cols/t² (see the module docstring); ceil without the -1 leaves a margin for
    # the float rounding of RMS.
    return min(cols, math.ceil(cols / (threshold * threshold)))


def _dequant(codes: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor, b: int) -> torch.Tensor:
    scale = (hi - lo) / float((1 << b) - 1)  # (rows, 1)
    return lo + codes.float() * scale


def _quant(x: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor, b: int) -> torch.Tensor:
    levels = float((1 << b) - 1)
    scale = (hi - lo) / levels  # (rows, 1)
    safe = torch.where(scale > 0, scale, torch.ones_like(scale))
    return torch.round((x - lo) / safe).clamp(0, levels).to(torch.int64)


class _OPSC:
    def encode(self, x: torch.Tensor, cfg: CodecConfig) -> list[bytes]:
        rows, cols = rows_cols(tuple(x.shape))
        x2 = x.detach().float().reshape(rows, cols).cpu()  # (rows, cols)
        qbit = _qbit(cfg)
        amax_all = float(x2.abs().max()) if x2.numel() else 0.0
        if amax_all >= FP16_LIMIT:
            raise CodecError(
                f"method 'opsc' sends ranges and outliers as fp16, so it represents |x| < 65520; "
                f"the tensor holds max|x| = {amax_all:.6g}: use 'ecsq' or 'raw'"
            )
        # RMS computed scale-free: squares of |x| < ~1e-23 underflow in float32, which made
        # every element an outlier and broke the cols/threshold**2 bound of predict_bytes
        if rows and x2.shape[1]:
            amax = x2.abs().amax(dim=1, keepdim=True).clamp_min(torch.finfo(torch.float32).tiny)  # (rows, 1)
            rms = amax * (x2 / amax).pow(2).mean(dim=1, keepdim=True).sqrt()  # (rows, 1)
        else:
            rms = x2[:, :1]
        out_mask = x2.abs() > cfg.threshold * rms  # (rows, cols)
        inl = ~out_mask
        big = torch.tensor(float("inf"))
        lo = torch.where(inl, x2, big).amin(dim=1, keepdim=True) if rows else x2[:, :1]  # (rows, 1)
        hi = torch.where(inl, x2, -big).amax(dim=1, keepdim=True) if rows else x2[:, :1]
        empty = ~torch.isfinite(lo)  # rows with no inlier
        lo = torch.where(empty, torch.zeros_like(lo), lo)
        hi = torch.where(empty, torch.zeros_like(hi), hi)
        lo16, hi16 = _fp16(lo), _fp16(hi)
        lo_f, hi_f = lo16.float(), hi16.float()
        # Token-wise width: smallest b whose inlier relative MSE ≤ δ (loop over widths).
        widths = torch.full((rows,), qbit, dtype=torch.int64)
        if cfg.delta is not None and rows:
            xin = torch.where(inl, x2, torch.zeros_like(x2))
            energy = xin.pow(2).sum(dim=1)  # (rows,)
            for b in range(qbit, 0, -1):
                err = torch.where(inl, x2 - _dequant(_quant(x2, lo_f, hi_f, b), lo_f, hi_f, b), 0.0)
                ok = err.pow(2).sum(dim=1) <= cfg.delta * energy
                widths = torch.where(ok, torch.full_like(widths, b), widths)
        code_parts = []
        for b in range(1, MAX_WIDTH + 1):
            sel = widths == b
            if bool(sel.any()):
                c = _quant(x2[sel], lo_f[sel], hi_f[sel], b)  # (rows_b, cols)
                code_parts.append(pack_bits(c.numpy(), b))
        counts = out_mask.sum(dim=1)  # (rows,)
        wc = int(counts.max()).bit_length() if rows else 0
        cols_of = out_mask.nonzero()[:, 1].numpy()  # row-major: ascending within a row
        index = bytes((wc,))
        if wc:
            index += pack_bits(counts.numpy(), wc)
        cb = _col_bits(cols)
        if cb and cols_of.size:
            index += pack_bits(cols_of, cb)
        values = _fp16(x2[out_mask]).numpy().tobytes()
        return [
            pack_bits((widths - 1).numpy(), 4),
            lo16.reshape(-1).numpy().tobytes() + hi16.reshape(-1).numpy().tobytes(),
            b"".join(code_parts),
            index,
            values,
        ]

    def decode(self, frame: Frame) -> torch.Tensor:
        if len(frame.sections) != N_SECTIONS:
            raise CodecError(f"opsc payload has {len(frame.sections)} sections, expected {N_SECTIONS}")
        s_w, s_r, s_c, s_i, s_v = frame.sections
        rows, cols = rows_cols(frame.shape)
        widths = unpack_bits(s_w, rows, 4) + 1  # (rows,) in 1..16; checks the length
        if len(s_r) != 4 * rows:
            raise CodecError(f"opsc ranges section holds {len(s_r)} bytes, {rows} rows need {4 * rows}")
        r = np.frombuffer(s_r, dtype="<f2").astype(np.float32)
        lo, hi = torch.from_numpy(r[:rows].copy()), torch.from_numpy(r[rows:].copy())
        if rows and not (bool(torch.isfinite(lo).all()) and bool(torch.isfinite(hi).all()) and bool((lo <= hi).all())):
            raise CodecError("opsc ranges hold a non-finite value or lo > hi")
        wcount = np.bincount(widths, minlength=MAX_WIDTH + 1)
        need = sum(packed_nbytes(int(wcount[b]) * cols, b) for b in range(1, MAX_WIDTH + 1))
        if len(s_c) != need:  # before any code is unpacked
            raise CodecError(f"opsc codes section holds {len(s_c)} bytes, the widths need {need}")
        # Index: counts, then columns (sizes checked before unpacking).
        if len(s_i) < 1:
            raise CodecError("opsc index section is empty (needs the count width)")
        wc = s_i[0]
        if wc > cols.bit_length():
            raise CodecError(f"opsc count width {wc} exceeds {cols.bit_length()} (a row has {cols} columns)")
        cnt_bytes = packed_nbytes(rows, wc) if wc else 0
        if len(s_i) < 1 + cnt_bytes:
            raise CodecError(f"opsc index section truncated: {len(s_i)} bytes, counts need {1 + cnt_bytes}")
        counts = unpack_bits(s_i[1 : 1 + cnt_bytes], rows, wc) if wc else np.zeros(rows, dtype=np.int64)
        if rows and int(counts.max()) > cols:
            raise CodecError(f"opsc: a row declares {int(counts.max())} outliers, it has {cols} columns")
        total = int(counts.sum())
        cb = _col_bits(cols)
        col_bytes = packed_nbytes(total, cb) if cb else 0
        if len(s_i) != 1 + cnt_bytes + col_bytes:
            raise CodecError(f"opsc index section holds {len(s_i)} bytes, {total} outliers need {1 + cnt_bytes + col_bytes}")
        if len(s_v) != 2 * total:
            raise CodecError(f"opsc outlier section holds {len(s_v)} bytes, {total} outliers need {2 * total}")
        out_cols = unpack_bits(s_i[1 + cnt_bytes :], total, cb) if cb else np.zeros(total, dtype=np.int64)
        out_rows = np.repeat(np.arange(rows, dtype=np.int64), counts)
        if total:
            if int(out_cols.max()) >= cols:
                raise CodecError(f"opsc outlier column {int(out_cols.max())} ≥ {cols}")
            same_row = out_rows[1:] == out_rows[:-1]
            if bool((same_row & (out_cols[1:] <= out_cols[:-1])).any()):
                raise CodecError("opsc outlier columns are not strictly increasing within a row")
        vals = torch.from_numpy(np.frombuffer(s_v, dtype="<f2").astype(np.float32))
        if total and not bool(torch.isfinite(vals).all()):
            raise CodecError("opsc outlier values hold NaN or Inf")
        y = torch.empty(rows, cols, dtype=torch.float32)
        widths_t = torch.from_numpy(widths)
        pos = 0
        for b in range(1, MAX_WIDTH + 1):
            nb = int(wcount[b])
            if not nb:
                continue
            nbytes = packed_nbytes(nb * cols, b)
            codes = torch.from_numpy(unpack_bits(s_c[pos : pos + nbytes], nb * cols, b)).reshape(nb, cols)
            pos += nbytes
            sel = widths_t == b
            y[sel] = _dequant(codes, lo[sel][:, None], hi[sel][:, None], b)
        if total:
            y[torch.from_numpy(out_rows), torch.from_numpy(out_cols)] = vals
        return y.reshape(frame.shape)

    def predict_bytes(self, shape, dtype, cfg: CodecConfig) -> int:
        """Upper bound: every row at q_bit, and the most outliers a row can have."""
        return sum(self.section_bounds(shape, dtype, cfg))

    def section_bounds(self, shape, dtype, cfg: CodecConfig) -> list[int]:
        """A bound of each section's length (``slicer.codec.predict_bytes`` sizes the header by them)."""
        rows, cols = rows_cols(tuple(int(d) for d in shape))
        qbit = _qbit(cfg)
        per_row = _max_outliers_per_row(cols, cfg.threshold) if rows else 0
        wc = per_row.bit_length()
        total = rows * per_row
        return [
            packed_nbytes(rows, 4),
            4 * rows,
            packed_nbytes(rows * cols, qbit) + qbit,  # per-width groups round up: ≤ 1 byte each
            1 + (packed_nbytes(rows, wc) if wc else 0) + packed_nbytes(total, _col_bits(cols)),
            2 * total,
        ]

    def max_sections(self, cfg) -> int:
        return N_SECTIONS


OPSC = _OPSC()
