"""The Triton SLICER decoder gives the reference decoder's tensor bit for bit, and accepts
and rejects the same payloads.

Runs on CPU under TRITON_INTERPRET=1 (small and odd shapes) and on CUDA when a GPU is
present. Covers every index coding, fixed Q and ABQ (mixed widths), block counts, the
float dtypes (bfloat16's round-to-nearest-even included), signed zeros, kept zeros and
entropy-coded values (decoded by the reference, then moved).
"""
from __future__ import annotations

import os
import random
import zlib

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")  # chosen at decoration: before import
pytest.importorskip("triton")

from slicer import codec  # noqa: E402
from slicer.codec import CodecConfig, CodecError, wire  # noqa: E402
from slicer.codec.slicer import inspect  # noqa: E402

DEV = "cuda" if torch.cuda.is_available() else "cpu"
INT_VIEW = {torch.float32: torch.int32, torch.float64: torch.int64, torch.float16: torch.int16, torch.bfloat16: torch.int16}


def _same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Equal dtype, shape and bit patterns (so -0.0 differs from 0.0)."""
    a, b = a.cpu(), b.cpu()
    return a.dtype == b.dtype and a.shape == b.shape and torch.equal(a.view(INT_VIEW[a.dtype]), b.view(INT_VIEW[b.dtype]))


def _input(shape, seed, dtype):
    g = torch.Generator().manual_seed(seed)
    return (torch.round(torch.randn(shape, generator=g) * 8) / 8).to(dtype)  # ties and zeros on purpose


CASES = [
    ((3, 257), dict(sparsity=0.75)),
    ((17, 64), dict(sparsity=0.5, blocks=(2, 3), asymmetry=0.3, index="bitmap")),
    ((5, 40), dict(sparsity=0.9, bits=(8, 4, 2), delta=None, index="rice")),
    ((2, 3, 5, 7), dict(sparsity=0.25, index="csr")),
    ((17, 64), dict(sparsity=0.75, index="ef", bits=6, delta=0.3)),
    ((17, 64), dict(sparsity=0.5, bits=8, delta=0.3, blocks=(3, 3))),
    ((1, 100), dict(sparsity=0.0, blocks=1, bits=16, delta=None)),
    ((33,), dict(sparsity=0.6, blocks=(4, 1), bits=3, delta=None, seed=99)),
    ((9, 31), dict(sparsity=0.95, blocks=(64, 64), bits=1, delta=None)),
]


@pytest.mark.parametrize("shape,kw", CASES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_triton_decode_equals_reference(shape, kw, dtype):
    x = _input(shape, zlib.crc32(repr((shape, sorted(kw.items()))).encode()), dtype)
    payload = codec.encode(x, CodecConfig(method="slicer", backend="torch", **kw))
    ref = codec.decode(payload, backend="torch")
    got = codec.decode(payload, device=DEV, backend="triton")
    assert got.device.type == torch.device(DEV).type
    assert _same_bits(got, ref)


def test_wide_rows_mixed_widths_and_all_dtypes():
    x = torch.randn(17, 4096, generator=torch.Generator().manual_seed(3)) * 3
    for dtype in (torch.bfloat16, torch.float64):
        payload = codec.encode(x.to(dtype), CodecConfig(method="slicer", sparsity=0.75, bits=8, delta=0.3))
        assert len(set(inspect(payload).widths.tolist())) > 1  # the variable-width stream
        assert _same_bits(codec.decode(payload, device=DEV, backend="triton"), codec.decode(payload, backend="torch"))


def test_negative_zero_kept_zeros_and_bf16_rounding():
    z = torch.zeros(5, 40)
    z[0, :7] = torch.tensor([-1e-3, 2.0, -3.0, 1.00390625, -0.0, 7.0, 0.5])  # fewer nonzeros than k
    payload = codec.encode(z, CodecConfig(method="slicer", sparsity=0.5, bits=2, delta=None))
    ref = codec.decode(payload)
    assert (ref == 0).sum() > 100 and _same_bits(codec.decode(payload, device=DEV, backend="triton"), ref)
    # values halfway between two bfloat16 numbers: round half to even, as torch does
    x = torch.tensor([[1.0 + 2**-8, 1.0 + 3 * 2**-8, -(1.0 + 2**-8), 3.0, 2.0 ** 100, 1e-30]])
    for dtype in (torch.bfloat16, torch.float16):
        p = codec.encode(x.to(torch.float32), CodecConfig(method="slicer", sparsity=0.0, blocks=1, bits=16, delta=None))
        frame = wire.unpack(p)
        p = wire.pack(frame.method_id, dtype, frame.shape, [bytes(s) for s in frame.sections])
        assert _same_bits(codec.decode(p, device=DEV, backend="triton"), codec.decode(p, backend="torch"))


def test_entropy_payload_and_empty_tensor():
    x = _input((8, 64), 5, torch.float32)
    p = codec.encode(x, CodecConfig(method="slicer", sparsity=0.75, entropy=True))
    assert inspect(p).entropy
    assert _same_bits(codec.decode(p, device=DEV, backend="triton"), codec.decode(p))
    e = codec.encode(torch.zeros(0, 7), CodecConfig(method="slicer"))
    assert codec.decode(e, device=DEV, backend="triton").shape == (0, 7)


def _outcome(payload: bytes, **kw):
    try:
        return codec.decode(payload, **kw)
    except CodecError as e:
        return e


@pytest.mark.parametrize("index", ["bitmap", "rice", "ef", "csr"])
def test_same_payloads_rejected(index):
    """Mutated sections behind a valid checksum: both decoders raise CodecError, or both
    return the same tensor."""
    x = _input((6, 50), 7, torch.float32)
    payload = codec.encode(x, CodecConfig(method="slicer", sparsity=0.7, bits=4, delta=0.3, index=index))
    frame = wire.unpack(payload)
    sections = [bytes(s) for s in frame.sections]
    rng = random.Random(index)
    rejected = 0
    for trial in range(60):
        secs = list(sections)
        s = rng.randrange(1, 4) if trial % 4 else 0
        b = bytearray(secs[s])
        if trial % 5 == 4 and b:
            del b[rng.randrange(len(b))]  # a shorter section
        elif b:
            b[rng.randrange(len(b))] ^= 1 << rng.randrange(8)
        secs[s] = bytes(b)
        hostile = wire.pack(frame.method_id, frame.dtype, frame.shape, secs)
        ref = _outcome(hostile, backend="torch")
        got = _outcome(hostile, device=DEV, backend="triton")
        if isinstance(ref, CodecError):
            rejected += 1
            assert isinstance(got, CodecError) and str(got) == str(ref)
        else:
            assert not isinstance(got, CodecError), got
            assert _same_bits(got, ref)
    assert rejected >= 10  # the mutations do reach the validation


def test_backend_errors():
    p = codec.encode(torch.randn(4, 8), CodecConfig(method="slicer"))
    with pytest.raises(CodecError, match="allowed auto, torch, triton"):
        codec.decode(p, backend="cuda")
    q = codec.encode(torch.randn(4, 8), CodecConfig(method="int8"))
    assert torch.equal(codec.decode(q, backend="triton"), codec.decode(q))  # other methods: the reference
