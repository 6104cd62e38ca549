"""ATKF top-k selection in Triton by radix select: exact k, the reference's tie-breaking.

The kept set is defined by a total order (``codec/reference/atkf.py`` is the spec):
score descending, then tie hash ascending, where score = |x|·w (w = f32(1/(1+λ)) for
x > 0, f32(1/(1−λ)) otherwise: one IEEE multiply, identical on every backend) and the tie
hash is murmur3's fmix32 of ``(i·0x9E3779B1 + seed) mod 2**32`` over the flat index i (a
bijection, so no two elements share a hash and the order is total).

Selection never sorts: non-negative float32 scores order like their bit patterns, so the
k-th largest key is found digit by digit (four 8-bit passes, MSB first), each pass a
``tl.histogram`` over the elements that still match the chosen prefix, summed across
programs with atomics; then, among the elements tied at that key, the ones with the
smallest hashes are found by four more passes over the hash digits. The digit choices
stay on the device (small torch ops on 256-bin histograms), so there is no host round
trip between passes.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl


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
def _score_key(x_ptr, offs, m, w_pos, w_neg):
    x = tl.load(x_ptr + offs, mask=m, other=0.0).to(tl.float32)
    s = tl.abs(x) * tl.where(x > 0, w_pos, w_neg)
    return s.to(tl.int32, bitcast=True).to(tl.int64) & 0xFFFFFFFF  # >= 0 floats order as ints


@triton.jit
def _hash_of(idx_ptr, offs, m, seed, HAS_IDX: tl.constexpr):
    if HAS_IDX:
        i = tl.load(idx_ptr + offs, mask=m, other=0).to(tl.int64)
    else:
        i = offs.to(tl.int64)
    return _fmix32(i, seed)


@triton.jit
def _hist_kernel(x_ptr, idx_ptr, n, w_pos, w_neg, seed, state_ptr, hist_ptr,
                 PASS: tl.constexpr, HAS_IDX: tl.constexpr, BLOCK: tl.constexpr):
    # state: [key_prefix, k_rem, hash_prefix]; PASS 0..3 key digits, 4..7 hash digits.
    pid = tl.program_id(0)
    offs = pid * BLOCK + tl.arange(0, BLOCK)
    m = offs < n
    key = _score_key(x_ptr, offs, m, w_pos, w_neg)
    if PASS < 4:
        shift: tl.constexpr = 8 * (3 - PASS)
        if PASS > 0:
            prefix = tl.load(state_ptr)
            m = m & ((key >> (shift + 8)) == prefix)
        digit = (key >> shift) & 0xFF
    else:
        hshift: tl.constexpr = 8 * (7 - PASS)
        m = m & (key == tl.load(state_ptr))
        h = _hash_of(idx_ptr, offs, m, seed, HAS_IDX)
        if PASS > 4:
            m = m & ((h >> (hshift + 8)) == tl.load(state_ptr + 2))
        digit = (h >> hshift) & 0xFF
    hist = tl.histogram(digit.to(tl.int32), 256, mask=m)
    tl.atomic_add(hist_ptr + tl.arange(0, 256), hist.to(tl.int64))


@triton.jit
def _mask_kernel(x_ptr, idx_ptr, n, w_pos, w_neg, seed, state_ptr, out_ptr,
                 HAS_IDX: tl.constexpr, BLOCK: tl.constexpr):
    pid = tl.program_id(0)
    offs = pid * BLOCK + tl.arange(0, BLOCK)
    m = offs < n
    key = _score_key(x_ptr, offs, m, w_pos, w_neg)
    t = tl.load(state_ptr)
    hmax = tl.load(state_ptr + 2)
    h = _hash_of(idx_ptr, offs, m, seed, HAS_IDX)
    keep = (key > t) | ((key == t) & (h <= hmax))
    tl.store(out_ptr + offs, keep.to(tl.int8), mask=m)


def _weights(asymmetry: float) -> tuple[float, float]:
    # float64 reciprocal rounded once to float32, as the reference does
    w_pos = float(torch.tensor(1.0 / (1.0 + asymmetry), dtype=torch.float64).float())
    w_neg = float(torch.tensor(1.0 / (1.0 - asymmetry), dtype=torch.float64).float())
    return w_pos, w_neg


def topk_mask(x: torch.Tensor, k: int, asymmetry: float = 0.0, seed: int = 0,
              index: torch.Tensor | None = None, block: int = 1024) -> torch.Tensor:
    """Boolean mask (same shape as ``x``) of the k first entries of the flattened ``x`` in
    the ATKF order. ``index`` (same length) gives the flat index each entry's tie hash is
    computed from (default: its own position), so a gathered subset (one sign's kept
    entries, for the MS block cuts) is ranked exactly as the reference ranks it."""
    flat = x.reshape(-1).contiguous()
    n = flat.numel()
    if k <= 0:
        return torch.zeros_like(x, dtype=torch.bool)
    if k >= n:
        return torch.ones_like(x, dtype=torch.bool)
    dev = flat.device
    w_pos, w_neg = _weights(asymmetry)
    # state[0] key prefix -> threshold key, state[1] k remaining, state[2] hash prefix -> max hash
    state = torch.tensor([0, k, 0], dtype=torch.int64, device=dev)
    grid = (triton.cdiv(n, block),)
    has_idx = index is not None
    idx = index.reshape(-1).to(torch.int64).contiguous() if has_idx else flat
    digits = torch.arange(256, device=dev)
    for p in range(8):
        hist = torch.zeros(256, dtype=torch.int64, device=dev)
        _hist_kernel[grid](flat, idx, n, w_pos, w_neg, seed, state, hist, PASS=p, HAS_IDX=has_idx, BLOCK=block)
        k_rem = state[1]
        if p < 4:  # largest keys first: count of elements with digit >= d
            ge = hist.flip(0).cumsum(0).flip(0)
            d = torch.where(ge >= k_rem, digits, -1).max()
            above = ge[d] - hist[d]
            state[0] = state[0] * 256 + d
        else:  # smallest hashes first: count with digit <= d
            le = hist.cumsum(0)
            d = torch.where(le >= k_rem, digits, 256).min()
            above = le[d] - hist[d]
            state[2] = state[2] * 256 + d
        state[1] = k_rem - above
    out = torch.empty(n, dtype=torch.int8, device=dev)
    _mask_kernel[grid](flat, idx, n, w_pos, w_neg, seed, state, out, HAS_IDX=has_idx, BLOCK=block)
    return out.bool().reshape(x.shape)
