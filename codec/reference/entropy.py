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
    u8 mode = 3      fast rANS (wire version 2; ``rans.py``): varint lo, varint span ≥ 1,
                               u8 table_bits b (5, 6 or 7), varint core start c, varint
                               core span k, (k+2) table codes of b bits for the symbols
                               lo+c..lo+c+k and the escape (last), varint r = rANS bytes,
                               r bytes: 4 final states (u32) then 16-bit words,
                               then each escaped symbol - lo at span.bit_length() bits

Which modes a stream may use is the caller's (``V1_MODES`` in wire version 1 payloads,
``V2_MODES`` in ECSQ's version 2 ones): one valid byte string per stream.

Mode 3 escapes rare symbols: one of count < n/2^13 would get a frequency of under 4 in
2^15, and the floor of 1 per present symbol stole 12% of the mass from the common ones at
1 byte per element (4,000 tail symbols: 0.3% over the rate cap). It is coded as the escape
symbol plus its raw offset instead, and is absent from the table (a decoder refuses an
escaped symbol the table holds); the table covers only the core from the first to the last
symbol not escaped (outlier channels made tables of 10,000 codes, 1.9% of the stream). Mode 3's model is integer: code e ≥ 1 has weight (4 + e mod 4)·2^floor(e/4) (four steps
an octave; 0 = absent), normalized by ``rans.freqs`` to 2^15, so both sides build the same
table on any machine. It must be a fixed multiple of its symbols' work: at least
``MODE3_MIN_BITS`` = 1/32 bit per symbol counting states and words (n ≤ 4096 + 512·words);
an encoder appends the fewest zero words that meets it (only for streams under 1/32 bit
a symbol), and the decoder refuses a stream below it before decoding, and any other
trailing words.

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
from slicer.codec.reference import rans
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
#: Modes a stream may use in wire version 1 payloads, and in ECSQ's version 2 ones.
V1_MODES = (0, 1, 2)
V2_MODES = (0, 1, 3)
#: Mode 3: table widths the encoder tries (4 codes an octave: 7.75, 15.75, 31.75 octaves).
TABLE3_BITS = (5, 6, 7)
#: Mode 3's work bound (bits per symbol, final states included).
MODE3_MIN_BITS = 1.0 / 32
#: Mode 3 escapes a symbol of count < n >> RARE_SHIFT.
RARE_SHIFT = 13


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


def _weights3(codes: np.ndarray) -> np.ndarray:
    """Mode 3's integer weights of table codes (0 = absent)."""
    c = np.asarray(codes, dtype=np.int64)
    return np.where(c > 0, (4 + (c & 3)) << (c >> 2), 0)


def _table_codes3(counts: np.ndarray, bits: int) -> np.ndarray:
    """Mode 3 table codes: the most frequent symbol at the top code, the others at the code
    whose weight is nearest in log scale (clipped to code 1)."""
    top = (1 << bits) - 1
    w = _weights3(np.arange(1, top + 1))  # (top,) ascending
    present = counts > 0
    v = np.log2(np.where(present, counts, 1).astype(np.float64) / float(counts.max())) + math.log2(float(w[-1]))
    mids = (np.log2(w[1:].astype(np.float64)) + np.log2(w[:-1].astype(np.float64))) / 2
    codes = 1 + np.searchsorted(mids, v)
    return np.where(present, codes, 0)


def _mode3_pad_words(n: int) -> int:
    """Fewest 16-bit words a mode 3 stream of n symbols must hold (the work bound)."""
    return max(0, -(-(n - 4096) // 512))


def _check_alphabet(alphabet_size: int) -> None:
    if not isinstance(alphabet_size, (int, np.integer)) or not 1 <= int(alphabet_size) <= MAX_ALPHABET:
        raise CodecError(f"alphabet_size={alphabet_size!r} invalid: allowed 1..{MAX_ALPHABET}")


def _plan_hist(n: int, lo: int, span: int, counts_fn, modes=V1_MODES, table3=TABLE3_BITS):
    """Mode choice from the symbol range and (lazily) the histogram ``counts_fn()`` of
    the symbols lo..lo+span: (bytes, mode, width, table_bits, codes). ``bytes`` is exact
    for modes 0 and 1 and the model's cross-entropy estimate (+ the ANS state) for modes
    2 and 3."""
    if span == 0:
        return 1 + len(varint(lo)), 0, 0, 0, None
    width = span.bit_length()
    best = (1 + len(varint(lo)) + 1 + packed_nbytes(n, width), 1, width, 0, None)
    head = 1 + len(varint(lo)) + len(varint(span)) + 1
    if head + packed_nbytes(span + 1, min(TABLE_BITS)) >= best[0]:
        return best  # the model table alone costs more than packing: rANS cannot win
    counts = np.asarray(counts_fn(), dtype=np.int64)
    used = counts > 0
    rare = used & (counts < (n >> RARE_SHIFT))
    model = np.append(np.where(rare, 0, counts), counts[rare].sum())  # (span+2,) last: escape
    in_model = model > 0
    if 3 in modes and 2 <= int(in_model.sum()) <= rans.MAX_PRESENT:
        # the table covers the core: the symbols from the first to the last one not escaped
        kept = np.flatnonzero(in_model[:-1])
        c_lo, c_hi = (int(kept[0]), int(kept[-1])) if kept.size else (0, -1)
        model = np.append(model[c_lo : c_hi + 1], model[-1])  # (core+1,) last: escape
        in_model = model > 0
        cu = model[in_model]
        raw = packed_nbytes(int(model[-1]), width)
        head3 = head + len(varint(c_lo)) + len(varint(max(0, c_hi - c_lo)))
        for b in table3:
            codes = _table_codes3(model, b)
            f = rans.freqs(_weights3(codes))
            xent_bits = float((cu * (rans.PROB_BITS - np.log2(f[in_model]))).sum())
            # rANS with 16-bit states codes ~0.02% above the model's cross-entropy (522,219
            # bytes for an estimate of 522,121 on 524k Gaussian symbols): a margin of 0.05%
            # keeps the estimate an upper bound, so a rate search rarely packs twice.
            words = max(math.ceil(xent_bits * 1.0005 / 16) + 2, _mode3_pad_words(n))
            nr = 4 * rans.LANES + 2 * words
            est = head3 + packed_nbytes(model.size, b) + len(varint(nr)) + nr + raw
            if est < best[0]:
                best = (est, 3, width, b, (codes, int(model[-1]), c_lo))
    if 2 not in modes:
        return best
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


def _plan(symbols: np.ndarray, alphabet_size: int, modes=V1_MODES, hist=None):
    """(bytes, mode, sym int64, lo, span, width, table_bits, codes) for these symbols."""
    _check_alphabet(alphabet_size)
    sym = np.asarray(symbols).reshape(-1)
    if sym.size == 0:
        return 0, -1, sym, 0, 0, 0, 0, None
    if sym.dtype.kind not in "iu":
        raise CodecError(f"symbols must be integers, got dtype {sym.dtype}")
    sym = sym.astype(np.int64, copy=False)
    if hist is not None:  # (lo, counts of lo..hi) from the caller's own pass over the symbols
        lo, counts = hist
        nz = np.flatnonzero(counts)
        lo, counts = lo + int(nz[0]), counts[nz[0] : nz[-1] + 1]
        hi = lo + counts.size - 1
        counts_fn = lambda: counts  # noqa: E731
    else:
        lo, hi = int(sym.min()), int(sym.max())
        counts_fn = lambda: np.bincount(sym - lo, minlength=hi - lo + 1)  # noqa: E731
    if lo < 0 or hi >= alphabet_size:
        raise CodecError(f"symbols span [{lo}, {hi}], outside the alphabet 0..{alphabet_size - 1}")
    est, mode, width, b, codes = _plan_hist(sym.size, lo, hi - lo, counts_fn, modes)
    return est, mode, sym, lo, hi - lo, width, b, codes


def estimate_nbytes_hist(n: int, lo: int, span: int, counts_fn, modes=V1_MODES, table3=TABLE3_BITS) -> int:
    """``estimate_nbytes`` from a histogram instead of the symbols: ``n`` symbols in
    lo..lo+span (lo and lo+span both occurring), ``counts_fn()`` their span+1 counts,
    called only when an entropy-coded stream could be the smallest."""
    if n == 0:
        return 0
    return _plan_hist(n, lo, span, counts_fn, modes, table3)[0]


def estimate_nbytes(symbols: np.ndarray, alphabet_size: int, modes=V1_MODES) -> int:
    """Bytes ``encode_symbols`` will write (exact unless it chooses rANS, then the model's
    cross-entropy rounded up to words + the state: the real stream is within a few bytes)."""
    return _plan(symbols, alphabet_size, modes)[0]


def encode_symbols(symbols: np.ndarray, alphabet_size: int, modes=V1_MODES, hist=None) -> bytes:
    """Entropy-code ``symbols`` (non-negative ints, each < ``alphabet_size``) with a
    static model carried in the stream, in the smallest of ``modes``. Near the empirical
    entropy for n ≥ a few thousand; for tiny n it falls back to plain bit packing when
    that is smaller. ``hist`` = (lo, counts of lo, lo+1, …) saves the pass that counts
    the symbols where the caller has them (zero counts at either end are trimmed)."""
    _, mode, sym, lo, span, width, b, codes = _plan(symbols, alphabet_size, modes, hist)
    if mode == -1:
        return b""
    if mode == 0:
        return bytes((0,)) + varint(lo)
    if mode == 1:
        return bytes((1,)) + varint(lo) + bytes((width,)) + pack_bits(sym - lo, width)
    if mode == 3:
        return encode_mode3(sym, lo, span, b, *codes)  # (table codes, escaped count)
    c = _constriction()
    model = c.stream.model.Categorical(_weights(codes, b), perfect=False)
    coder = c.stream.stack.AnsCoder()
    coder.encode_reverse((sym - lo).astype(np.int32), model)
    words = coder.get_compressed().astype("<u4")
    if 32 * words.size + _STATE_BITS + 32 < sym.size * MIN_BITS_PER_SYMBOL:  # pragma: no cover (planned out above)
        return bytes((1,)) + varint(lo) + bytes((width,)) + pack_bits(sym - lo, width)
    return bytes((2,)) + varint(lo) + varint(span) + bytes((b,)) + pack_bits(codes, b) + words.tobytes()


def encode_mode3(sym: np.ndarray, lo: int, span: int, b: int, codes: np.ndarray, nesc: int, c_lo: int) -> bytes:
    """A mode 3 stream of the symbols ``sym`` (in lo..lo+span) with these table codes for
    the core lo+c_lo.. (and the escape last); a symbol outside the core or with code 0 is
    escaped (``nesc`` occurrences)."""
    core = codes.size - 1
    esc = core
    remap = np.full(span + 1, esc, dtype=np.int64)  # (span+1,) symbol - lo -> model index
    remap[c_lo : c_lo + core] = np.where(codes[:-1] == 0, esc, np.arange(core))
    stream, raw = rans.encode(sym, rans.freqs(_weights3(codes)), lo, remap, esc, nesc)
    if raw.size != nesc:
        raise CodecError(f"mode 3: {raw.size} escaped symbols found, {nesc} counted")
    pad = bytes(2 * max(0, _mode3_pad_words(sym.size) - (len(stream) - 4 * rans.LANES) // 2))
    head = bytes((3,)) + varint(lo) + varint(span) + bytes((b,)) + varint(c_lo) + varint(core - 1)
    head += pack_bits(codes, b) + varint(len(stream) + len(pad))
    return b"".join((head, stream, pad, pack_bits(raw, span.bit_length())))  # one copy of the words


def _rans_header(cur: Cursor, alphabet_size: int, widths, what: str) -> tuple[int, int, int]:
    """The symbol range and table width that open an rANS stream (modes 2 and 3), validated."""
    lo = cur.varint("lowest symbol", alphabet_size - 1)
    span = cur.varint("symbol span", alphabet_size - 1 - lo)
    if span < 1:
        raise CodecError("entropy stream: rANS mode with a single-symbol alphabet")
    b = cur.u8("table width")
    if b not in widths:
        raise CodecError(f"entropy stream: {what} {b} invalid: allowed {widths}")
    return lo, span, b


def decode_mode3(buf: bytes | memoryview, n: int, alphabet_size: int, lut=None) -> np.ndarray:
    """A mode 3 stream's n symbols (int64), or with ``lut(lo, span)`` (the values of the
    symbols lo..lo+span, an array built once the header is validated) their values,
    gathered in the decoding loop. Every field is validated and the work bound checked
    before any decoding."""
    view = memoryview(buf).cast("B") if not isinstance(buf, memoryview) else buf.cast("B")
    cur = Cursor(view, context="entropy stream")
    if cur.u8("mode") != 3:
        raise CodecError("entropy stream: not a mode 3 stream")
    lo, span, b = _rans_header(cur, alphabet_size, TABLE3_BITS, "mode 3 table width")
    c_lo = cur.varint("core start", span)
    core = cur.varint("core span", span - c_lo) + 1
    codes = unpack_bits(cur.take(packed_nbytes(core + 1, b), "model table"), core + 1, b)  # last: escape
    present = int((codes > 0).sum())
    if not 2 <= present <= rans.MAX_PRESENT:
        raise CodecError(f"entropy stream: mode 3 table holds {present} symbols, allowed 2..{rans.MAX_PRESENT}")
    nr = cur.varint("rANS bytes", cur.end - cur.pos)
    coded = cur.take(nr, "rANS section")
    raw = cur.buf[cur.pos : cur.end]
    if (nr - 4 * rans.LANES) // 2 < _mode3_pad_words(n):
        raise CodecError(
            f"entropy stream of {nr} rANS bytes cannot hold {n} symbols "
            f"(mode 3 holds at least {MODE3_MIN_BITS:g} bits per symbol)"
        )
    width = span.bit_length()
    max_esc = len(raw) * 8 // width if codes[-1] else 0
    f = rans.freqs(_weights3(codes))
    full = None if lut is None else lut(lo, span)  # (span+1,) values of lo..lo+span
    # per model index: the core symbols' values (or symbols - lo), the escape's overwritten
    per_model = np.arange(c_lo, c_lo + core + 1, dtype=np.int64) if full is None else np.append(
        full[c_lo : c_lo + core], np.zeros(1, dtype=full.dtype))
    out, esc_pos = rans.decode(coded, n, f, _mode3_pad_words(n), per_model, core, max_esc)
    k = esc_pos.shape[0]
    if len(raw) != packed_nbytes(k, width):
        raise CodecError(f"entropy stream: {len(raw)} bytes of escaped symbols, {k} need {packed_nbytes(k, width)}")
    if k:
        rel = unpack_bits(raw, k, width, "escaped symbols")
        if int(rel.max()) > span:
            raise CodecError("entropy stream: an escaped symbol outside the span (corrupt)")
        inside = (rel >= c_lo) & (rel < c_lo + core)
        if bool((codes[np.where(inside, rel - c_lo, 0)][inside] != 0).any()):
            raise CodecError("entropy stream: an escaped symbol the table holds (corrupt)")
        out[esc_pos] = rel if full is None else full[rel]
    return out if full is not None else out + lo


def decode_symbols(buf: bytes | memoryview, n: int, alphabet_size: int, modes=V1_MODES) -> np.ndarray:
    """Inverse of ``encode_symbols``: ``n`` symbols as int64. Raises ``CodecError`` on any
    corrupt, truncated or over-long stream, or a mode outside ``modes``."""
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
    if mode not in modes:
        raise CodecError(f"entropy stream mode {mode} not allowed here: allowed {', '.join(map(str, modes))}")
    if mode == 3:
        return decode_mode3(view, n, alphabet_size)
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
    lo, span, b = _rans_header(cur, alphabet_size, TABLE_BITS, "table width")
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

