"""ATKF top-k selection and the MS block cuts in Triton, by radix multi-select: exact
counts and the reference's tie-breaking, no sort.

The kept set is defined by a total order (``codec/reference/atkf.py`` is the spec):
score descending, then tie hash ascending, where score = |x|·w (w = f32(1/(1+λ)) for
x > 0, f32(1/(1−λ)) otherwise: one IEEE multiply, identical on every backend) and the tie
hash is murmur3's fmix32 of ``(i·0x9E3779B1 + seed) mod 2**32`` over the flat index i (a
bijection, so no two elements share a hash and the order is total). The MS blocks
(``codec/reference/ms.py``) cut each sign's kept entries in the same kind of order, by
magnitude (w = 1) and the same hash.

``select`` finds the thresholds of several cuts at once ("the c-th element of this
subset in that order"): non-negative float32 keys order like their bit patterns, so
every cut's threshold key is found digit by digit (four 8-bit passes, MSB first), each
pass one read of the input and one ``tl.histogram`` per cut over the elements that still
match that cut's prefix, summed across programs with atomics. Where more elements share
the threshold key than the cut still needs, four more passes over the hash digits pick
the smallest hashes; where no cut has such ties (the common case for float32 data) those
passes read nothing. The histograms carry the sign as a ninth bit, so the same passes
also count the kept negatives (the sign separation needs that count). Digit choices
stay on the device (small torch ops on the histograms): no host round trip between
passes. ``emit`` then writes, in one more pass, every element's block label (-1 where
not kept).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

ALL, POS, NEG = 2, 0, 1
"""Cut subsets: every element, the positive side (x >= 0, kept zeros included), x < 0."""


@triton.jit
def _fmix32(i, seed):
    h = (i * 0x9E3779B1 + seed) & 0xFFFFFFFF
    h = h ^ (h >> 16)
    h = (h * 0x85EBCA6B) & 0xFFFFFFFF
    h = h ^ (h >> 13)
    h = (h * 0xC2B2AE35) & 0xFFFFFFFF
    h = h ^ (h >> 16)
    return h


@triton.jit
def _load_f32(x_ptr, offs, m, BF16: tl.constexpr):
    """The input as float32. bfloat16 arrives as its int16 bits and is widened by a shift:
    exact everywhere (the interpreter's own bf16 cast mishandles subnormals)."""
    if BF16:
        b = tl.load(x_ptr + offs, mask=m, other=0).to(tl.int32)
        return (b << 16).to(tl.float32, bitcast=True)
    return tl.load(x_ptr + offs, mask=m, other=0.0).to(tl.float32)


@triton.jit
def _key(x, w_pos, w_neg):
    s = tl.abs(x) * tl.where(x > 0, w_pos, w_neg)
    return s.to(tl.int32, bitcast=True).to(tl.int64) & 0xFFFFFFFF  # >= 0 floats order as ints


@triton.jit
def _kept(x, h, kw_pos, kw_neg, top_ptr):
    """The ATKF kept set from the top-k threshold (key, max hash) in ``top_ptr``."""
    key = _key(x, kw_pos, kw_neg)
    t = tl.load(top_ptr)
    return (key > t) | ((key == t) & (h <= tl.load(top_ptr + 2)))


@triton.jit
def _in_subset(neg, sgn):
    return (sgn == 2) | (neg == (sgn == 1))


@triton.jit
def _hist_kernel(x_ptr, n, w_pos, w_neg, seed, state_ptr, sign_ptr, hist_ptr, active_ptr, top_ptr, kw_pos, kw_neg,
                 PASS: tl.constexpr, NC: tl.constexpr, KEPT: tl.constexpr, BF16: tl.constexpr, BLOCK: tl.constexpr):
    # state (NC, 5) int64: key prefix, k remaining, hash prefix, ties flag, negatives taken.
    # PASS 0..3: key digits; 4..7: hash digits (only cuts with the ties flag set).
    pid = tl.program_id(0)
    offs = pid * BLOCK + tl.arange(0, BLOCK)
    m = offs < n
    if PASS >= 4:
        m = m & (tl.load(active_ptr + offs * 0) != 0)  # no ties anywhere: the pass reads nothing
    x = _load_f32(x_ptr, offs, m, BF16)
    h = _fmix32(offs.to(tl.int64), seed)
    if KEPT:
        m = m & _kept(x, h, kw_pos, kw_neg, top_ptr)
    key = _key(x, w_pos, w_neg)
    neg = x < 0
    for j in tl.static_range(NC):
        mj = m & _in_subset(neg, tl.load(sign_ptr + j))
        if PASS < 4:
            shift: tl.constexpr = 8 * (3 - PASS)
            if PASS > 0:
                mj = mj & ((key >> (shift + 8)) == tl.load(state_ptr + 5 * j))
            digit = (key >> shift) & 0xFF
        else:
            hshift: tl.constexpr = 8 * (7 - PASS)
            mj = mj & (tl.load(state_ptr + 5 * j + 3) != 0) & (key == tl.load(state_ptr + 5 * j))
            if PASS > 4:
                mj = mj & ((h >> (hshift + 8)) == tl.load(state_ptr + 5 * j + 2))
            digit = (h >> hshift) & 0xFF
        hist = tl.histogram((digit + 256 * neg.to(tl.int64)).to(tl.int32), 512, mask=mj)
        tl.atomic_add(hist_ptr + j * 512 + tl.arange(0, 512), hist.to(tl.int64))


@triton.jit
def _emit_kernel(x_ptr, n, kw_pos, kw_neg, seed, top_ptr, cut_ptr, sign_ptr, base_pos, base_neg, out_ptr,
                 NC: tl.constexpr, BF16: tl.constexpr, BLOCK: tl.constexpr):
    pid = tl.program_id(0)
    offs = pid * BLOCK + tl.arange(0, BLOCK)
    m = offs < n
    x = _load_f32(x_ptr, offs, m, BF16)
    h = _fmix32(offs.to(tl.int64), seed)
    kept = _kept(x, h, kw_pos, kw_neg, top_ptr)
    key = _key(x, 1.0, 1.0)  # the magnitude's bits
    neg = x < 0
    lab = tl.where(neg, base_neg, base_pos)
    for j in tl.static_range(NC):  # one more block for every cut of its sign it lies beyond
        t = tl.load(cut_ptr + 5 * j)
        beyond = (key < t) | ((key == t) & (h > tl.load(cut_ptr + 5 * j + 2)))
        lab += (_in_subset(neg, tl.load(sign_ptr + j)) & beyond).to(tl.int32)
    tl.store(out_ptr + offs, tl.where(kept, lab, -1).to(tl.int8), mask=m)


@triton.jit
def _choose_kernel(hist_ptr, state_ptr, active_ptr, PASS: tl.constexpr):
    """One program per cut: the digit of this pass from the summed histogram, and the
    cut's state updated (prefix, k remaining, negatives taken, ties flag)."""
    j = tl.program_id(0)
    i = tl.arange(0, 256)
    neg = tl.load(hist_ptr + j * 512 + 256 + i)
    tot = tl.load(hist_ptr + j * 512 + i) + neg
    row = state_ptr + 5 * j
    k_rem = tl.load(row + 1)
    cum = tl.cumsum(tot, 0)  # inclusive
    if PASS < 4:  # largest keys first: the largest d with count(digit >= d) >= k_rem
        ge = tl.sum(tot, 0) - cum + tot
        d = tl.sum((ge >= k_rem).to(tl.int64), 0) - 1
        at = tl.sum(tl.where(i == d, tot, 0), 0)
        k_new = k_rem - (tl.sum(tl.where(i == d, ge, 0), 0) - at)
        taken = tl.load(row + 4) + tl.sum(tl.where(i > d, neg, 0), 0)
        tl.store(row, tl.load(row) * 256 + d)
        tl.store(row + 1, k_new)
        if PASS == 3:  # ties to break where more elements sit at the key than are still needed
            ties = at > k_new
            tl.store(row + 3, ties.to(tl.int64))
            tl.store(row + 2, tl.where(ties, 0, 0xFFFFFFFF).to(tl.int64))  # no ties: all at the key taken
            taken += tl.where(ties, 0, tl.sum(tl.where(i == d, neg, 0), 0))
            tl.atomic_max(active_ptr, ties.to(tl.int32))
        tl.store(row + 4, taken)
    else:  # smallest hashes first: the smallest d with count(digit <= d) >= k_rem
        if tl.load(row + 3) != 0:
            d = tl.sum((cum < k_rem).to(tl.int64), 0)
            at = tl.sum(tl.where(i == d, tot, 0), 0)
            taken = tl.sum(tl.where(i < d, neg, 0), 0)
            if PASS == 7:  # the last element taken: the one with the largest hash kept
                taken += tl.sum(tl.where(i == d, neg, 0), 0)
            tl.store(row + 4, tl.load(row + 4) + taken)
            tl.store(row + 2, tl.load(row + 2) * 256 + d)
            tl.store(row + 1, k_rem - (tl.sum(tl.where(i == d, cum, 0), 0) - at))


def weights(asymmetry: float) -> tuple[float, float]:
    # float64 reciprocal rounded once to float32, as the reference does
    w_pos = float(torch.tensor(1.0 / (1.0 + asymmetry), dtype=torch.float64).float())
    w_neg = float(torch.tensor(1.0 / (1.0 - asymmetry), dtype=torch.float64).float())
    return w_pos, w_neg


def _flat(x: torch.Tensor) -> torch.Tensor:
    flat = x.reshape(-1)
    return (flat.float() if flat.dtype == torch.float64 else flat).contiguous()  # float64: rounded like the reference


def _arg(flat: torch.Tensor):
    """What the kernels read: bfloat16 as its int16 bits (see ``_load_f32``)."""
    return (flat.view(torch.int16), True) if flat.dtype == torch.bfloat16 else (flat, False)


def select(flat: torch.Tensor, ranks: list[int], signs: list[int], w: tuple[float, float], seed: int,
           top: torch.Tensor | None = None, kw: tuple[float, float] = (1.0, 1.0), block: int = 1024) -> torch.Tensor:
    """Thresholds of cuts j = 0..NC-1: the ``ranks[j]``-th element (1-based) of subset
    ``signs[j]`` (ALL, POS, NEG; within the kept set of ``top`` when given) in the order
    (key desc, hash asc), key = |x|·w. Each rank must lie in [1, subset size).

    Returns the (NC, 5) int64 device state: column 0 the threshold key, 2 the largest
    hash taken at that key, 4 how many negatives the cut takes (its subset's elements
    ordered before it, itself included)."""
    nc, n, dev = len(ranks), flat.numel(), flat.device
    state = torch.zeros(nc, 5, dtype=torch.int64, device=dev)
    state[:, 1] = torch.tensor(ranks, dtype=torch.int64)
    sign_t = torch.tensor(signs, dtype=torch.int32, device=dev)
    active = torch.zeros(1, dtype=torch.int32, device=dev)  # set at pass 3 when any cut has ties
    kept = top is not None
    top = top if kept else state
    grid = (triton.cdiv(n, block),)
    x, bf16 = _arg(flat)
    hist = torch.empty(nc, 512, dtype=torch.int64, device=dev)
    for p in range(8):  # three launches per pass, no host read
        hist.zero_()
        _hist_kernel[grid](x, n, w[0], w[1], seed, state, sign_t, hist, active, top, kw[0], kw[1],
                           PASS=p, NC=nc, KEPT=kept, BF16=bf16, BLOCK=block)
        _choose_kernel[(nc,)](hist, state, active, PASS=p)
    return state


def top_state(flat: torch.Tensor, k: int, asymmetry: float, seed: int) -> torch.Tensor:
    """The ATKF threshold state of ``select`` (one cut over ALL), also for k = 0 (nothing
    kept) and k >= N (everything kept); column 4 counts the kept negatives."""
    n = flat.numel()
    if 0 < k < n:
        return select(flat, [k], [ALL], weights(asymmetry), seed)
    state = torch.zeros(1, 5, dtype=torch.int64, device=flat.device)
    if k <= 0:
        state[0, 0] = 1 << 32  # above every key: nothing kept
    else:
        state[0, 0] = -1  # below every key: everything kept
        state[0, 4] = int((flat < 0).sum()) if n else 0
    return state


def emit(flat: torch.Tensor, asymmetry: float, seed: int, top: torch.Tensor, cuts: torch.Tensor | None = None,
         signs: list[int] = (), base: tuple[int, int] = (0, 0), block: int = 1024) -> torch.Tensor:
    """(N,) int8: each element's block label (``base`` of its sign plus the cuts of its
    sign it lies beyond), -1 where it is not kept."""
    n = flat.numel()
    out = torch.empty(n, dtype=torch.int8, device=flat.device)
    if n:
        kw = weights(asymmetry)
        nc = len(signs)
        sign_t = torch.tensor(list(signs) or [0], dtype=torch.int32, device=flat.device)
        x, bf16 = _arg(flat)
        _emit_kernel[(triton.cdiv(n, block),)](x, n, kw[0], kw[1], seed, top, top if cuts is None else cuts,
                                               sign_t, base[0], base[1], out, NC=nc, BF16=bf16, BLOCK=block)
    return out


def topk_mask(x: torch.Tensor, k: int, asymmetry: float = 0.0, seed: int = 0) -> torch.Tensor:
    """Boolean mask (same shape as ``x``) of the k first entries of the flattened ``x`` in
    the ATKF order."""
    flat = _flat(x)
    return (emit(flat, asymmetry, seed, top_state(flat, k, asymmetry, seed)) >= 0).reshape(x.shape)
