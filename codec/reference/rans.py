"""Interleaved, table-driven rANS (wire version 2's entropy stream mode 3), compiled by numba.

Why: constriction's ``AnsCoder`` with a ``Categorical`` model decodes 524k symbols in
~22 ms (a binary search over the CDF per symbol) and encodes in ~3.75 ms through Python
objects; ECSQ at 1 byte per element was 30-40x slower to decode than int8. This coder is
the textbook 32-bit rANS with 16-bit renormalization (ryg_rans's ``rans_word``), with
``LANES`` states interleaved round-robin so consecutive symbols do not wait on each other,
an integer model of ``PROB_BITS`` = 15 bits and a slot → (symbol, freq, slot - cum) table,
one lookup per decoded symbol. Its rate is the model's cross-entropy plus 4·LANES bytes of
final states.

Everything here is integer arithmetic, so the encoder and the decoder build the same model
on every machine (the table codes travel in the stream; ``freqs`` normalizes them).

State invariant: x ∈ [L, 2^16·L) with L = 2^16; a symbol of frequency f encodes as
``x' = (x // f)·2^15 + x % f + cum`` after emitting the low 16 bits when x ≥ 2^17·f (at
most once). The decoder reads lanes in the encoder's reverse order and refills a lane with
one 16-bit word whenever it drops below L (at most once per symbol).
"""
from __future__ import annotations

import sys

import numpy as np

from slicer.codec.errors import CodecError

PROB_BITS = 15
PROB_SCALE = 1 << PROB_BITS
LANES = 4
RANS_L = 1 << 16
#: Index of an int64's high 32-bit half in its int32 view (the decoder's slot entries).
_HI = 1 if sys.byteorder == "little" else 0
#: Most distinct symbols a model may hold (each needs frequency ≥ 1).
MAX_PRESENT = PROB_SCALE // 2

try:  # a declared dependency; without it only this stream mode is unavailable
    import numba as _numba
except ImportError:  # pragma: no cover
    _numba = None


def _njit(fn=None, **kw):
    if _numba is None:
        return None
    return _numba.njit(cache=True, nogil=True, **kw)(fn)


def _inline(fn):
    return _numba.njit(inline="always", cache=True)(fn) if _numba is not None else None


@_inline
def _enc_step(x, s, tab, rcp, out, pos):  # pragma: no cover - compiled
    # tab[s] = (freq, cum); x' = (x // f)·2^15 + x % f + cum, after emitting the low 16
    # bits when x ≥ 2^17·f, branchless: at ~8 bits a symbol that branch goes either way
    # every other symbol (524k symbols: 1.5 ms against 5.8 ms with the branch, CPU time).
    # x // f as floor(x · rcp) with rcp = 1/f rounded up to the next float64: exact for
    # x < 2^52 (x·rcp ≥ x/f, and exceeds it by < x·2^-52/f < 1/f, less than the gap from
    # x/f to the next integer), so no correction step (an integer division was 3.5 ms);
    # int64 only, nothing overflows (x < 2^17·f ≤ 2^32).
    f = tab[s, 0]
    out[pos - 1] = x & 0xFFFF
    flag = np.int64(x >= (f << 17))
    pos -= flag
    x >>= flag << 4
    q = np.int64(x * rcp[s])
    return (q << PROB_BITS) + (x - q * f) + tab[s, 1], pos


@_inline
def _dec_step(x, fb, words, pos, nw):  # pragma: no cover - compiled
    # fb[slot] = freq << 16 | (slot - cum) in the low 32 bits (the caller keeps the slot's
    # output in the high 32: one load a symbol). Branchless refill; words[nw] is a padding
    # zero, so a read past the last word yields 0 (and pos > nw, reported as corrupt after
    # the loop).
    slot = x & (PROB_SCALE - 1)
    e = fb[slot] & 0xFFFFFFFF
    x = (e >> 16) * (x >> PROB_BITS) + (e & 0xFFFF)
    flag = np.int64(x < RANS_L)
    w = np.int64(words[min(pos, nw)])
    x = (x << (flag << 4)) | (w & -flag)
    return slot, x, pos + flag


@_njit
def _encode_loop(sym, off, remap, esc, nesc, tab, rcp):  # pragma: no cover - compiled
    # Four lanes as scalars: symbol i goes to lane i % 4, encoded from the last symbol back,
    # as remap[sym[i] - off]; then, in a separate forward pass (collecting them inside the
    # coding loop made it 4x slower), the raw values sym[i] - off of the `nesc` symbols
    # mapped to `esc` (their count, known from the histogram).
    n = sym.shape[0]
    out = np.empty(n + 8, dtype=np.uint16)  # ≤ one word per symbol, written backwards
    pos = out.shape[0]
    x0 = x1 = x2 = x3 = np.int64(RANS_L)
    i = n - 1
    while i >= 0 and (i & 3) != 3:  # the tail past the last whole round
        s = remap[sym[i] - off]
        if (i & 3) == 0:
            x0, pos = _enc_step(x0, s, tab, rcp, out, pos)
        elif (i & 3) == 1:
            x1, pos = _enc_step(x1, s, tab, rcp, out, pos)
        else:
            x2, pos = _enc_step(x2, s, tab, rcp, out, pos)
        i -= 1
    while i >= 3:
        x3, pos = _enc_step(x3, remap[sym[i] - off], tab, rcp, out, pos)
        x2, pos = _enc_step(x2, remap[sym[i - 1] - off], tab, rcp, out, pos)
        x1, pos = _enc_step(x1, remap[sym[i - 2] - off], tab, rcp, out, pos)
        x0, pos = _enc_step(x0, remap[sym[i - 3] - off], tab, rcp, out, pos)
        i -= 4
    state = np.empty(4, dtype=np.int64)
    state[0] = x0
    state[1] = x1
    state[2] = x2
    state[3] = x3
    raw = np.empty(nesc, dtype=np.int64)
    k = 0
    if nesc:
        for j in range(n):
            if remap[sym[j] - off] == esc and k < nesc:
                raw[k] = sym[j] - off
                k += 1
    return state, out[pos:].copy(), raw[:k]


@_njit
def _decode_loop(words, state, n, fb, vals, out):  # pragma: no cover - compiled
    # Four symbols a round; out[i] = the high half of the slot's entry (its symbol or decoded
    # value; escapes carry a sentinel the caller finds afterwards: checking for them in this
    # loop made it 2.5x slower).
    x0, x1, x2, x3 = state[0], state[1], state[2], state[3]
    pos = 0
    nw = words.shape[0] - 1  # the last is the padding zero
    i = 0
    while i + 4 <= n:
        s, x0, pos = _dec_step(x0, fb, words, pos, nw)
        out[i] = vals[s << 1 | _HI]
        s, x1, pos = _dec_step(x1, fb, words, pos, nw)
        out[i + 1] = vals[s << 1 | _HI]
        s, x2, pos = _dec_step(x2, fb, words, pos, nw)
        out[i + 2] = vals[s << 1 | _HI]
        s, x3, pos = _dec_step(x3, fb, words, pos, nw)
        out[i + 3] = vals[s << 1 | _HI]
        i += 4
    if i < n:
        s, x0, pos = _dec_step(x0, fb, words, pos, nw)
        out[i] = vals[s << 1 | _HI]
    if i + 1 < n:
        s, x1, pos = _dec_step(x1, fb, words, pos, nw)
        out[i + 1] = vals[s << 1 | _HI]
    if i + 2 < n:
        s, x2, pos = _dec_step(x2, fb, words, pos, nw)
        out[i + 2] = vals[s << 1 | _HI]
    end = np.empty(4, dtype=np.int64)
    end[0] = x0
    end[1] = x1
    end[2] = x2
    end[3] = x3
    return end, pos


def _check_numba() -> None:
    if _numba is None:  # pragma: no cover - a missing dependency, not a data error
        raise CodecError("entropy stream mode 3 needs the 'numba' package: pip install numba")


def freqs(weights: np.ndarray) -> np.ndarray:
    """Integer frequencies summing to 2^15 from non-negative integer weights (0 = absent):
    each of the P present symbols gets 1 + floor(w·(2^15 - P)/Σw), the remainder (< P)
    goes to the first largest. Pure integer arithmetic, identical on every machine."""
    w = np.asarray(weights, dtype=np.int64)
    present = w > 0
    p = int(present.sum())
    if not 1 <= p <= MAX_PRESENT:
        raise CodecError(f"rANS model with {p} symbols: allowed 1..{MAX_PRESENT}")
    f = np.where(present, 1 + (w * (PROB_SCALE - p)) // int(w.sum()), 0).astype(np.int64)
    f[int(np.argmax(w))] += PROB_SCALE - int(f.sum())
    return f


def encode(sym: np.ndarray, f: np.ndarray, off: int = 0, remap: np.ndarray | None = None, esc: int = -1, nesc: int = 0):
    """``LANES`` final states (u32) then the 16-bit words, little-endian, of the symbols
    ``remap[sym - off]`` (identity without ``remap``; each with f > 0), and the values
    ``sym - off`` of the ``nesc`` of them that map to ``esc``, in order."""
    _check_numba()
    f = np.asarray(f, dtype=np.int64)
    if remap is None:
        remap = np.arange(f.shape[0], dtype=np.int64)
    state, words, raw = _encode_loop(
        np.ascontiguousarray(sym, dtype=np.int64), int(off), remap, int(esc), int(nesc), *_encode_table(f)
    )
    return b"".join((state.astype("<u4").tobytes(), words.astype("<u2", copy=False).data)), raw


def _encode_table(f: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(S, 2) int64 (freq, cum) and (S,) float64 1/freq rounded up, per symbol."""
    f = np.asarray(f, dtype=np.int64)
    tab = np.stack([f, np.cumsum(f) - f], axis=1)
    return np.ascontiguousarray(tab), np.nextafter(1.0 / np.maximum(f, 1).astype(np.float64), np.inf)


def decode_table(f: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For the 2^15 slots: freq << 16 | (slot - cum) (int32) and the slot's symbol."""
    cum = np.cumsum(f) - f
    sym = np.repeat(np.arange(f.shape[0], dtype=np.int64), f)  # (2^15,)
    slot = np.arange(PROB_SCALE, dtype=np.int64)
    return ((f[sym] << 16) | (slot - cum[sym])).astype(np.int32), sym


def decode(
    data: memoryview, n: int, f: np.ndarray, min_words: int = 0, lut: np.ndarray | None = None,
    esc: int = -1, max_esc: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """Inverse of ``encode``: n symbols (int64), or ``lut[symbol]`` for each (``lut`` has
    one entry per symbol of ``f``), and the positions of symbol ``esc`` (at most
    ``max_esc``). Raises ``CodecError`` unless every lane ends in the encoder's initial
    state having read its words, and the words after them are zeros only up to
    ``min_words`` (the padding a work bound asks for, and no more)."""
    _check_numba()
    if len(data) < 4 * LANES or (len(data) - 4 * LANES) % 2:
        raise CodecError(f"rANS stream of {len(data)} bytes: needs {4 * LANES} bytes of states and whole 16-bit words")
    state = np.frombuffer(data[: 4 * LANES], dtype="<u4").astype(np.int64)
    if bool((state < RANS_L).any()):
        raise CodecError("rANS stream: a final state below the coder's range (corrupt)")
    words = np.frombuffer(data[4 * LANES :], dtype="<u2")
    padded = np.zeros(words.shape[0] + 1, dtype=np.uint16)  # one zero past the end (_dec_step)
    padded[:-1] = words
    f = np.asarray(f, dtype=np.int64)
    fb, slot_sym = decode_table(f)
    floats = lut is not None and lut.dtype == np.float32
    per_slot = (lut[slot_sym] if lut is not None else slot_sym).astype(np.float32 if floats else np.int32)
    # the escape's slots carry a sentinel: NaN (no decoded value is NaN) or -1
    if 0 <= esc < f.shape[0]:
        per_slot[slot_sym == esc] = np.nan if floats else -1
    # one 64-bit entry a slot: low half freq|bias, high half the output (int32 symbol or
    # float32 value), read as int64 by the coder and as out's dtype by the store
    entry = np.empty(PROB_SCALE, dtype=np.int64)
    view = entry.view(np.int32).reshape(-1, 2)
    view[:, 1 - _HI] = fb
    view[:, _HI] = per_slot.view(np.int32)
    out = np.empty(int(n), dtype=per_slot.dtype)
    end, pos = _decode_loop(padded, state, int(n), entry, entry.view(per_slot.dtype), out)
    if pos > words.shape[0]:
        raise CodecError("rANS stream ran out of words before its last symbol (corrupt)")
    if bool((end != RANS_L).any()):
        raise CodecError("rANS stream did not end in the coder's initial state (corrupt)")
    if pos < words.shape[0] and (words.shape[0] != min_words or bool(words[pos:].any())):
        raise CodecError(
            f"rANS stream has {words.shape[0] - pos} words past its last symbol "
            f"(only zero padding up to {min_words} words allowed)"
        )
    has_esc = 0 <= esc < f.shape[0] and f[esc] > 0
    esc_pos = np.flatnonzero(np.isnan(out) if floats else out == -1) if has_esc else np.zeros(0, dtype=np.int64)
    if esc_pos.shape[0] > max_esc:
        raise CodecError(f"rANS stream escapes {esc_pos.shape[0]} symbols, its raw section holds at most {max_esc} (corrupt)")
    return (out if floats else out.astype(np.int64)), esc_pos
