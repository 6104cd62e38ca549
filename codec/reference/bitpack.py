"""Fixed-width bit packing: the one layout every section of the codec uses.

Layout (frozen, wire version 1): codes ``c_0, c_1, ...`` of width ``b`` bits (1..32) are
written as one little-endian bit stream, LSB first: bit ``j`` of code ``i`` is stream bit
``i*b + j``, and stream bit ``t`` is bit ``t % 8`` of byte ``t // 8``. The last byte is
zero-padded. ``n`` codes of width ``b`` take exactly ``ceil(n*b/8)`` bytes: no per-group
padding, so the payload model is exact. A GPU kernel produces the same bytes by computing
each output 32-bit word from the (at most ``32//b + 2``) codes that overlap it.
"""
from __future__ import annotations

import numpy as np

from codec.errors import CodecError


def packed_nbytes(n: int, bits: int) -> int:
    """Bytes taken by ``n`` codes of ``bits`` bits."""
    return (n * bits + 7) // 8


def pack_bits(codes: np.ndarray, bits: int) -> bytes:
    """Pack non-negative integer ``codes`` (any integer dtype, each < 2**bits)."""
    if not 1 <= bits <= 32:
        raise CodecError(f"bit width {bits} not in 1..32")
    codes = np.ascontiguousarray(codes, dtype=np.uint64).reshape(-1)
    n = codes.size
    if n == 0:
        return b""
    if bits == 8:
        return codes.astype(np.uint8).tobytes()
    if bits == 16:
        return codes.astype("<u2").tobytes()
    if bits == 32:
        return codes.astype("<u4").tobytes()
    shifts = np.arange(bits, dtype=np.uint64)
    bitmat = ((codes[:, None] >> shifts[None, :]) & np.uint64(1)).astype(np.uint8)  # (n, bits)
    return np.packbits(bitmat.reshape(-1), bitorder="little").tobytes()


def unpack_bits(buf: bytes | memoryview, n: int, bits: int) -> np.ndarray:
    """Inverse of ``pack_bits``: ``n`` codes as ``int64``. Raises ``CodecError`` if ``buf``
    is not exactly ``packed_nbytes(n, bits)`` long."""
    if not 1 <= bits <= 32:
        raise CodecError(f"bit width {bits} not in 1..32")
    need = packed_nbytes(n, bits)
    if len(buf) != need:
        raise CodecError(f"packed section holds {len(buf)} bytes, {n} codes of {bits} bits need {need}")
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    raw = np.frombuffer(buf, dtype=np.uint8)
    if bits == 8:
        return raw.astype(np.int64)
    if bits == 16:
        return np.frombuffer(buf, dtype="<u2").astype(np.int64)
    if bits == 32:
        return np.frombuffer(buf, dtype="<u4").astype(np.int64)
    bitstream = np.unpackbits(raw, bitorder="little", count=n * bits).reshape(n, bits)
    weights = (np.int64(1) << np.arange(bits, dtype=np.int64))
    return bitstream.astype(np.int64) @ weights
