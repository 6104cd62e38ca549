"""Decode bombs: a payload's decoding costs at most a fixed multiple of what it can
legitimately declare. ``decode`` caps the declared elements (``max_elements``, default
2^24, or the exact ``shape``); past the cap an entropy stream must hold at least
``entropy.MIN_BITS_PER_SYMBOL`` per symbol whatever its table says, and a rotation costs
a bounded number of operations per element. Reported: a 43-byte ECSQ payload took 47.9 s
and 8 GiB, a 35-byte rotated one ran for over 300 s."""
from __future__ import annotations

import struct
import time
import tracemalloc

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from slicer.codec import CodecConfig, CodecError, decode, encode, wire
from slicer.codec.reference import entropy, hadamard
from slicer.codec.reference.bitpack import pack_bits

ECSQ_ID = 3


def ecsq_payload(shape, *, rotated: bool, stream: bytes, qmax: int = 1) -> bytes:
    head = bytes((1 if rotated else 0,)) + (struct.pack("<I", 7) if rotated else b"")
    head += struct.pack("<f", 1.0) + bytes((128, 128)) + wire.varint(qmax)
    return wire.pack(ECSQ_ID, torch.float32, tuple(shape), [head, stream])


def skewed_stream(minor_codes=(1, 1), words: int = 2, table_bits: int = 4) -> bytes:
    """An rANS stream whose table gives symbol 0 (q = -qmax .. ) almost all the mass: the
    model bound alone lets a few words 'hold' 2^28 symbols."""
    top = (1 << table_bits) - 1
    codes = np.array([top, *minor_codes], dtype=np.int64)
    span = len(codes) - 1
    body = bytes((2,)) + wire.varint(0) + wire.varint(span) + bytes((table_bits,)) + pack_bits(codes, table_bits)
    return body + (np.arange(words, dtype=np.uint32) * 0x9E3779B9 + 0x12345678).astype("<u4").tobytes()


def _run(p: bytes, **kw):
    tracemalloc.start()
    t0 = time.perf_counter()
    try:
        try:
            decode(p, **kw)
            err = None
        except CodecError as e:
            err = e
        return err, time.perf_counter() - t0, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


REPORTED = {
    # 43 bytes: 2^28 elements, an rANS table of three symbols, one at weight 1 and two at
    # 2^-22, and two ANS words.
    "ecsq-43": ecsq_payload((1 << 14, 1 << 14), rotated=False, stream=skewed_stream((1, 1))),
    # 35 bytes: 2^28 elements, rotated, every symbol +1 (a constant stream).
    "ecsq-rot-35": ecsq_payload((1 << 14, 1 << 14), rotated=True, stream=bytes((0,)) + wire.varint(2)),
}


def test_reported_sizes():
    assert len(REPORTED["ecsq-43"]) == 43 and len(REPORTED["ecsq-rot-35"]) == 35


@pytest.mark.parametrize("name", list(REPORTED))
def test_reported_bombs_fail_fast_and_small(name):
    err, dt, peak = _run(REPORTED[name])
    assert err is not None and "max_elements" in str(err)
    assert dt < 0.5 and peak < 4 << 20, (dt, peak)


def test_skewed_table_cannot_pass_the_work_bound():
    # Even with the cap raised to the wire's limit, the skewed stream is refused before
    # decoding: 8 bytes of ANS words cannot hold 2^28 symbols at >= 1/512 bit each.
    err, dt, peak = _run(REPORTED["ecsq-43"], max_elements=wire.MAX_ELEMENTS)
    assert err is not None and "cannot hold" in str(err)
    assert dt < 0.5 and peak < 4 << 20, (dt, peak)
    rot = ecsq_payload((1 << 14, 1 << 14), rotated=True, stream=skewed_stream((2, 3)))
    err, dt, peak = _run(rot, max_elements=wire.MAX_ELEMENTS)
    assert err is not None and "cannot hold" in str(err) and dt < 0.5


def test_rotated_constant_stream_rotates_one_row():
    # A legitimate constant payload (every symbol +1) of 2^20 elements in 2^10 rows: the
    # inverse rotation of a constant row is computed once, not once per row.
    p = ecsq_payload((1 << 10, 1 << 10), rotated=True, stream=bytes((0,)) + wire.varint(2))
    y = decode(p)
    row = hadamard.rotate(torch.full((1, 1 << 10), 1.0), 7, inverse=True)  # (|q| + ρ)Δ = (1 + 0)·1
    assert y.shape == (1 << 10, 1 << 10) and torch.equal(y[0], row[0]) and torch.equal(y[-1], row[0])


def test_shape_argument_is_exact():
    x = torch.randn(3, 8)
    p = encode(x, CodecConfig(method="ecsq", rate=4))
    assert decode(p, shape=(3, 8)).shape == (3, 8)
    with pytest.raises(CodecError, match=r"declares shape \(3, 8\), expected \(1, 3, 8\)"):
        decode(p, shape=(1, 3, 8))
    with pytest.raises(CodecError, match="more than max_elements=23"):
        decode(p, max_elements=23)
    for bad in (-1, wire.MAX_ELEMENTS + 1, 2.5, True):
        with pytest.raises(CodecError, match="max_elements"):
            decode(p, max_elements=bad)


@settings(max_examples=40, deadline=None)
@given(
    log2_n=st.integers(16, 28),
    minor=st.lists(st.integers(1, 15), min_size=1, max_size=6),
    words=st.integers(1, 64),
    rotated=st.booleans(),
)
def test_generated_skewed_streams_fail_or_decode_within_the_work_bound(log2_n, minor, words, rotated):
    n = 1 << log2_n
    shape = (n >> 8, 256) if log2_n >= 8 else (n,)
    stream = skewed_stream(tuple(minor), words)
    p = ecsq_payload(shape, rotated=rotated, stream=stream, qmax=len(minor))
    err, dt, peak = _run(p, max_elements=wire.MAX_ELEMENTS)
    ans_bits = 32 * words
    if n * entropy.MIN_BITS_PER_SYMBOL > ans_bits + 96:
        assert err is not None and "cannot hold" in str(err), (n, words, err)
        assert dt < 0.5 and peak < 4 << 20, (dt, peak)
    # otherwise at most ~512 symbols per stream bit: decoded (or refused as corrupt) in
    # bounded time whatever the table
    assert dt < 5.0


@pytest.mark.parametrize("k", [13, 14, 17])
def test_large_rotation_chunks_use_small_factors(k):
    # A chunk of 2^k > 4096 is applied as factors of ≤ 64: the same orthonormal transform
    # (checked against the two-factor form) at ≤ 64 multiply-adds per element per factor.
    g = torch.Generator().manual_seed(k)
    x = torch.randn(2, 1 << k, generator=g, dtype=torch.float64).float()
    a = k // 2
    na, nb = 1 << a, 1 << (k - a)
    ha, hb = hadamard._sylvester(na).double(), hadamard._sylvester(nb).double()
    ref = (ha @ x.double().reshape(2, na, nb) @ hb).reshape(2, -1) / (1 << k) ** 0.5
    got = hadamard._fwht(x)
    assert torch.allclose(got.double(), ref, atol=1e-4 * float(ref.abs().max()))
    assert torch.allclose(hadamard._fwht(got), x, atol=1e-4)


def test_non_minimal_varints_are_refused():
    x = torch.randn(3, 8)
    good = encode(x, CodecConfig(method="ecsq", rate=4))
    assert decode(good).shape == (3, 8)
    body = bytearray(good[:-4])
    # shape[0] = 3 as 0x83 0x00 (two bytes): the same number, a second byte string
    i = body.index(bytes((3, 8)), 8)
    bad = bytes(body[:i]) + bytes((0x83, 0x00)) + bytes(body[i + 1 :])
    import zlib

    bad += zlib.crc32(bad).to_bytes(4, "little")
    with pytest.raises(CodecError, match="not minimal"):
        decode(bad)
    with pytest.raises(CodecError, match="not minimal"):
        entropy.decode_symbols(bytes((0, 0x81, 0x00)), 4, 16)


def test_version_2_stream_cannot_pass_the_work_bound():
    # The same bomb in wire version 2 (entropy mode 3): a two-symbol table and one word of
    # rANS data declaring 2^28 symbols; mode 3 holds at least 1/32 bit a symbol.
    codes = pack_bits(np.array([63, 1, 0]), 6)  # symbols 0, 1 and the escape (absent)
    stream = bytes((3,)) + wire.varint(0) + wire.varint(1) + bytes((6,)) + wire.varint(0) + wire.varint(1)
    stream += codes + wire.varint(18) + (np.full(4, 1 << 16, dtype="<u4").tobytes() + bytes(2))
    head = bytes((0,)) + struct.pack("<f", 1.0) + bytes((128, 128)) + wire.varint(1)
    p = wire.pack(ECSQ_ID, torch.float32, (1 << 14, 1 << 14), [head, stream], version=2)
    err, dt, peak = _run(p, max_elements=wire.MAX_ELEMENTS)
    assert err is not None and "cannot hold" in str(err), err
    assert dt < 0.5 and peak < 4 << 20, (dt, peak)
