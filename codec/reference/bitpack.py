"""Fixed-width bit packing: the one layout every section of the codec uses.

Layout (frozen, wire version 1): codes ``c_0, c_1, ...`` of width ``b`` bits (1..32) are
written as one little-endian bit stream, LSB first: bit ``j`` of code ``i`` is stream bit
``i*b + j``, and stream bit ``t`` is bit ``t % 8`` of byte ``t // 8``. The last byte is
zero-padded. ``n`` codes of width ``b`` take exactly ``ceil(n*b/8)`` bytes: no per-group
padding, so the payload model is exact. A GPU kernel produces the same bytes by computing
each output 32-bit word from the (at most ``32//b + 2``) codes that overlap it
(``codec/kernels/bitpack.py``).

The stream is built one bit column at a time: for 3-bit labels of 131,072 entries this
packs in 0.19 ms and unpacks in 0.17 ms, against 1.36 ms for a bit matrix of all widths at
once and 7-9 ms for a ``packbits(axis=1)`` unpack (measured by the SLICER helper on this
machine). Decoding is canonical: padding bits must be zero.
"""
from __future__ import annotations

import numpy as np

from slicer.codec.errors import CodecError


def packed_nbytes(n: int, bits: int) -> int:
    """Bytes taken by ``n`` codes of ``bits`` bits."""
    return (n * bits + 7) // 8


def _word(bits: int):
    return np.uint16 if bits <= 16 else np.uint32


def code_bits(codes: np.ndarray, bits: int) -> np.ndarray:
    """(n·bits,) uint8 stream bits of codes < 2^bits, LSB first."""
    w = _word(bits)
    c = np.asarray(codes).astype(w)
    m = np.empty((c.shape[0], bits), dtype=np.uint8)  # (n, bits)
    for j in range(bits):
        m[:, j] = (c >> w(j)) & w(1)
    return m.reshape(-1)


def bits_to_codes(stream_bits: np.ndarray, n: int, bits: int) -> np.ndarray:
    """Inverse of ``code_bits``: int64 codes from (n·bits,) uint8 bits."""
    w = _word(bits)
    m = stream_bits.reshape(n, bits)
    acc = m[:, 0].astype(w)
    for j in range(1, bits):
        acc |= m[:, j].astype(w) << w(j)
    return acc.astype(np.int64)


def pack_bits(codes: np.ndarray, bits: int) -> bytes:
    """Pack non-negative integer ``codes`` (any integer dtype, each < 2**bits)."""
    if not 1 <= bits <= 32:
        raise CodecError(f"bit width {bits} not in 1..32")
    codes = np.ascontiguousarray(codes).reshape(-1)
    if codes.size == 0:
        return b""
    if bits in (8, 16, 32):
        return codes.astype({8: np.uint8, 16: "<u2", 32: "<u4"}[bits]).tobytes()
    return np.packbits(code_bits(codes, bits), bitorder="little").tobytes()


def unpack_bits(buf: bytes | memoryview, n: int, bits: int, what: str = "packed section") -> np.ndarray:
    """Inverse of ``pack_bits``: ``n`` codes as ``int64``. Raises ``CodecError`` (naming
    ``what``) unless ``buf`` is exactly ``packed_nbytes(n, bits)`` long with zero padding."""
    if not 1 <= bits <= 32:
        raise CodecError(f"{what}: bit width {bits} not in 1..32")
    need = packed_nbytes(n, bits)
    if len(buf) != need:
        raise CodecError(f"{what} holds {len(buf)} bytes, {n} codes of {bits} bits need {need}")
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    if bits in (8, 16, 32):
        return np.frombuffer(buf, dtype={8: np.uint8, 16: "<u2", 32: "<u4"}[bits]).astype(np.int64)
    raw = np.frombuffer(buf, dtype=np.uint8)
    total = n * bits
    if total % 8 and raw[-1] >> (total % 8):
        raise CodecError(f"{what}: padding bits are not zero")
    return bits_to_codes(np.unpackbits(raw, bitorder="little", count=total), n, bits)
