"""Static-model entropy coding of small non-negative integer symbols (rANS via ``constriction``).

API (a contract: SLICER's ``cfg.entropy`` path and ``ecsq`` import it)::

    buf = encode_symbols(symbols, alphabet_size)      # bytes
    sym = decode_symbols(buf, n, alphabet_size)       # np.ndarray int64 of length n

``n`` and ``alphabet_size`` are not in the stream: the caller knows them (from the shape
and its own parameters). ``decode_symbols`` validates every field and raises
``CodecError`` on any corrupt stream; it never loops unboundedly and never allocates more
than O(n + alphabet_size + len(buf)).

Stream layout (frozen, wire version 1; ``varint`` is unsigned LEB128 ≤ 5 bytes)::

    n == 0           empty stream (0 bytes)
    u8 mode = 0      constant: varint symbol                       (every symbol equal)
    u8 mode = 1      packed:   varint lo, u8 width, n codes (sym - lo) bit-packed at width
    u8 mode = 2      rANS:     varint lo, varint span, u8 table_bits b (4, 5, 6 or 8),
                               (span+1) table codes of b bits (bitpack layout),
                               then the ANS words (u32 little-endian) to the end

The model of mode 2 is the histogram of the symbols ``lo..lo+span`` quantized on a log
scale: code 0 = absent, code e ≥ 1 = weight 2^-((2^b-1-e)·step_b) relative to the most
frequent symbol, with step_b = 24 / (2^b - 2) octaves (so every width spans 2^-24). The
encoder picks, per stream, the mode and table width with the fewest total bytes, using the
exact cross-entropy of the quantized model (the ANS coder of ``constriction`` codes within
~0.01% of it; measured 226,484 bytes against an entropy of 226,480 for 524,288 Laplace
symbols). The probabilities handed to ``constriction`` are the same float64 numbers on both
sides, so encoder and decoder build the identical fixed-point model (``perfect=False``).
"""
from __future__ import annotations

import math

import numpy as np

from slicer.codec.errors import CodecError
from slicer.codec.reference.bitpack import pack_bits, packed_nbytes, unpack_bits
from slicer.codec.wire import Cursor, varint

#: Largest alphabet a stream may use (symbols are < alphabet_size ≤ this).
MAX_ALPHABET = 1 << 24
#: Table widths the encoder tries; each spans 24 octaves of dynamic range.
TABLE_BITS = (4, 5, 6, 8)
#: ANS state slack: the coder's final state is 64 bits, so n symbols of probability ≤ p
#: take at least n·(-log2 p) - 64 bits. Used to reject streams that cannot hold n symbols
#: before decoding them (a decode bomb).
_STATE_BITS = 64
#: Work bound of an rANS stream: it must hold at least this many bits per symbol it
#: declares (n ≤ 512·stream bits + 32768), whatever its table says. The model bound
#: above is not enough: a table whose top symbol has probability 1 - 2^-24 let a 43-byte
#: payload declare 2^28 symbols (47.9 s and 8 GiB to decode). A stream this encoder writes
#: stays far inside it unless more than 99.9% of the symbols are one value, which the
#: constant mode or a sparser payload serves.
MIN_BITS_PER_SYMBOL = 1.0 / 512


def _constriction():
    try:
        import constriction  # noqa: PLC0415  (a compiled dependency, imported on first use)
    except ImportError as e:  # pragma: no cover - a missing dependency, not a data error
        raise CodecError("entropy coding needs the 'constriction' package: pip install constriction") from e
    return constriction


def _step(bits: int) -> float:
    return 24.0 / ((1 << bits) - 2)


def _table_codes(counts: np.ndarray, bits: int) -> np.ndarray:
    """Quantize a histogram to table codes (0 = absent, else a log-weight code)."""
    top = (1 << bits) - 1
    present = counts > 0
    ratio = np.where(present, counts, 1).astype(np.float64) / float(counts.max())
    c = np.clip(np.rint(-np.log2(ratio) / _step(bits)), 0, top - 1).astype(np.int64)
    return np.where(present, top - c, 0)


def _weights(codes: np.ndarray, bits: int) -> np.ndarray:
    """Model probabilities (float64, unnormalized) of table codes; absent symbols get 0
    (constriction still gives them its smallest representable probability)."""
    top = (1 << bits) - 1
    return np.where(codes > 0, np.exp2(-(top - codes).astype(np.float64) * _step(bits)), 0.0)


def _check_alphabet(alphabet_size: int) -> None:
    if not isinstance(alphabet_size, (int, np.integer)) or not 1 <= int(alphabet_size) <= MAX_ALPHABET:
        raise CodecError(f"alphabet_size={alphabet_size!r} invalid: allowed 1..{MAX_ALPHABET}")


def _plan_hist(n: int, lo: int, span: int, counts_fn):
    """Mode choice from the symbol range and (lazily) the histogram ``counts_fn()`` of
    the symbols lo..lo+span: (bytes, mode, width, table_bits, codes). ``bytes`` is exact
    for modes 0 and 1 and the model's cross-entropy estimate (+ 2 words of ANS state)
    for mode 2."""
    if span == 0:
        return 1 + len(varint(lo)), 0, 0, 0, None
    width = span.bit_length()
    best = (1 + len(varint(lo)) + 1 + packed_nbytes(n, width), 1, width, 0, None)
    head = 1 + len(varint(lo)) + len(varint(span)) + 1
    if head + packed_nbytes(span + 1, min(TABLE_BITS)) >= best[0]:
        return best  # the model table alone costs more than packing: rANS cannot win
    counts = np.asarray(counts_fn(), dtype=np.int64)
    used = counts > 0
    for b in TABLE_BITS:
        codes = _table_codes(counts, b)
        w = _weights(codes, b)
        xent_bits = float(-(counts[used] * np.log2(w[used] / w.sum())).sum())
        # ANS words are 32 bits; the final state adds up to 64 bits (2 words).
        est = head + packed_nbytes(span + 1, b) + 4 * (math.ceil(xent_bits / 32) + 2)
        if xent_bits < n * MIN_BITS_PER_SYMBOL + _STATE_BITS:
            continue  # under the decoder's work bound: not an rANS stream it would accept
        if est < best[0]:
            best = (est, 2, width, b, codes)
    return best


def _plan(symbols: np.ndarray, alphabet_size: int):
    """(bytes, mode, sym int64, lo, span, width, table_bits, codes) for these symbols."""
    _check_alphabet(alphabet_size)
    sym = np.asarray(symbols).reshape(-1)
    if sym.size == 0:
        return 0, -1, sym, 0, 0, 0, 0, None
    if sym.dtype.kind not in "iu":
        raise CodecError(f"symbols must be integers, got dtype {sym.dtype}")
    sym = sym.astype(np.int64, copy=False)
    lo, hi = int(sym.min()), int(sym.max())
    if lo < 0 or hi >= alphabet_size:
        raise CodecError(f"symbols span [{lo}, {hi}], outside the alphabet 0..{alphabet_size - 1}")
    est, mode, width, b, codes = _plan_hist(sym.size, lo, hi - lo, lambda: np.bincount(sym - lo, minlength=hi - lo + 1))
    return est, mode, sym, lo, hi - lo, width, b, codes


def estimate_nbytes_hist(n: int, lo: int, span: int, counts_fn) -> int:
    """``estimate_nbytes`` from a histogram instead of the symbols: ``n`` symbols in
    lo..lo+span (lo and lo+span both occurring), ``counts_fn()`` their span+1 counts,
    called only when an entropy-coded stream could be the smallest."""
    if n == 0:
        return 0
    return _plan_hist(n, lo, span, counts_fn)[0]


def estimate_nbytes(symbols: np.ndarray, alphabet_size: int) -> int:
    """Bytes ``encode_symbols`` will write (exact unless it chooses rANS, then the model's
    cross-entropy rounded up to words + 8 bytes: the real stream is within a few bytes)."""
    return _plan(symbols, alphabet_size)[0]


def encode_symbols(symbols: np.ndarray, alphabet_size: int) -> bytes:
    """Entropy-code ``symbols`` (non-negative ints, each < ``alphabet_size``) with a
    static model carried in the stream. Near the empirical entropy for n ≥ a few
    thousand; for tiny n it falls back to plain bit packing when that is smaller."""
    _, mode, sym, lo, span, width, b, codes = _plan(symbols, alphabet_size)
    if mode == -1:
        return b""
    if mode == 0:
        return bytes((0,)) + varint(lo)
    if mode == 1:
        return bytes((1,)) + varint(lo) + bytes((width,)) + pack_bits(sym - lo, width)
    c = _constriction()
    model = c.stream.model.Categorical(_weights(codes, b), perfect=False)
    coder = c.stream.stack.AnsCoder()
    coder.encode_reverse((sym - lo).astype(np.int32), model)
    words = coder.get_compressed().astype("<u4")
    if 32 * words.size + _STATE_BITS + 32 < sym.size * MIN_BITS_PER_SYMBOL:  # pragma: no cover (planned out above)
        return bytes((1,)) + varint(lo) + bytes((width,)) + pack_bits(sym - lo, width)
    return bytes((2,)) + varint(lo) + varint(span) + bytes((b,)) + pack_bits(codes, b) + words.tobytes()


def decode_symbols(buf: bytes | memoryview, n: int, alphabet_size: int) -> np.ndarray:
    """Inverse of ``encode_symbols``: ``n`` symbols as int64. Raises ``CodecError`` on any
    corrupt, truncated or over-long stream."""
    _check_alphabet(alphabet_size)
    if not isinstance(n, (int, np.integer)) or n < 0:
        raise CodecError(f"symbol count n={n!r} invalid")
    n = int(n)
    view = memoryview(buf).cast("B") if not isinstance(buf, memoryview) else buf.cast("B")
    if n == 0:
        if len(view):
            raise CodecError(f"entropy stream of {len(view)} bytes for 0 symbols")
        return np.zeros(0, dtype=np.int64)
    cur = Cursor(view, context="entropy stream")
    mode = cur.u8("mode")
    if mode == 0:
        s = cur.varint("constant symbol", alphabet_size - 1)
        if cur.pos != len(view):
            raise CodecError(f"entropy stream has {len(view) - cur.pos} trailing bytes")
        return np.full(n, s, dtype=np.int64)
    if mode == 1:
        lo = cur.varint("lowest symbol", alphabet_size - 1)
        width = cur.u8("code width")
        if not 1 <= width <= 24:
            raise CodecError(f"entropy stream: packed width {width} invalid")
        data = view[cur.pos :]
        if len(data) != packed_nbytes(n, width):  # checked before unpacking allocates
            raise CodecError(f"entropy stream: {len(data)} packed bytes, {n} codes of {width} bits need {packed_nbytes(n, width)}")
        out = unpack_bits(data, n, width) + lo
        if int(out.max()) >= alphabet_size:
            raise CodecError(f"entropy stream: symbol {int(out.max())} outside the alphabet 0..{alphabet_size - 1}")
        return out
    if mode != 2:
        raise CodecError(f"entropy stream mode {mode} unknown: allowed 0, 1, 2")
    lo = cur.varint("lowest symbol", alphabet_size - 1)
    span = cur.varint("symbol span", alphabet_size - 1 - lo)
    if span < 1:
        raise CodecError("entropy stream: rANS mode with a single-symbol alphabet")
    b = cur.u8("table width")
    if b not in TABLE_BITS:
        raise CodecError(f"entropy stream: table width {b} invalid: allowed {TABLE_BITS}")
    codes = unpack_bits(cur.take(packed_nbytes(span + 1, b), "model table"), span + 1, b)
    w = _weights(codes, b)
    if not w.any():
        raise CodecError("entropy stream: model table has no symbol")
    rest = view[cur.pos :]
    if len(rest) % 4 or not rest:
        raise CodecError(f"entropy stream: {len(rest)} bytes of ANS words (a positive multiple of 4 needed)")
    # A decode bomb check before decoding: n symbols each of probability ≤ p_max need at
    # least n·(-log2 p_max) bits (slack for the model's fixed-point rounding, 2^-20), and
    # the work bound: at least MIN_BITS_PER_SYMBOL each, whatever the table.
    p_max = min(1.0, float(w.max() / w.sum()) * (1 + 1e-3) + 2.0**-20)
    if n * max(-math.log2(p_max), MIN_BITS_PER_SYMBOL) > 8 * len(rest) + _STATE_BITS + 32:
        raise CodecError(
            f"entropy stream of {len(rest)} bytes cannot hold {n} symbols under its model "
            f"(a stream holds at least {MIN_BITS_PER_SYMBOL:g} bits per symbol)"
        )
    words = np.frombuffer(rest, dtype="<u4").astype(np.uint32)
    c = _constriction()
    try:
        model = c.stream.model.Categorical(w, perfect=False)
        coder = c.stream.stack.AnsCoder(words)
        out = np.asarray(coder.decode(model, n), dtype=np.int64)
        empty = coder.is_empty()
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as e:  # constriction reports Rust panics as pyo3 PanicException (a BaseException)
        raise CodecError(f"entropy stream could not be decoded: {type(e).__name__}: {e}") from e
    if not empty:
        raise CodecError("entropy stream has undecoded data left after the last symbol (corrupt)")
    used = codes[out] if out.size else codes[:0]
    if used.size and int(used.min()) == 0:
        raise CodecError("entropy stream decodes a symbol its model marks absent (corrupt)")
    return out + lo


def constant_symbol(buf: bytes | memoryview, n: int, alphabet_size: int) -> int | None:
    """The symbol of a constant (mode 0) stream of ``n`` symbols, validated, without
    allocating the n symbols; None for any other stream (decode it with ``decode_symbols``).
    Lets a decoder build an all-zero output lazily (``torch.zeros``) for any declared size."""
    _check_alphabet(alphabet_size)
    view = memoryview(buf).cast("B") if not isinstance(buf, memoryview) else buf.cast("B")
    if n < 1 or len(view) < 2 or view[0] != 0:
        return None
    cur = Cursor(view, context="entropy stream", pos=1)
    s = cur.varint("constant symbol", alphabet_size - 1)
    if cur.pos != len(view):
        raise CodecError(f"entropy stream has {len(view) - cur.pos} trailing bytes")
    return s

