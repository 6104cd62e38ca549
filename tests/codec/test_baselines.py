"""Baselines: round trips on odd shapes and dtypes with each method's own error bound,
and predict_bytes exact (a bound for fp16-zstd)."""
from __future__ import annotations

import math

import hypothesis.extra.numpy as hnp
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from slicer.codec import CodecConfig, CodecError, decode, encode, predict_bytes
from slicer.codec.baselines import Q8_BLOCK

DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.float64]
shapes = hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=9)


def _tensor(shape, dtype, seed, scale):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g, dtype=torch.float64) * scale
    if x.numel() > 2:
        x.view(-1)[0] *= 30  # an outlier
    return x.to(dtype)


#: Scales are rounded up to fp16, so nothing clips and the error is at most half the
#: stored scale d16 < d + 2^-24 (the subnormal step): d/2 + 2^-25, with float slack.
SUB = 2.0**-24


def _fp16_ulp_half(v: torch.Tensor) -> torch.Tensor:
    """Half an fp16 ulp at |v| (normal range) or the subnormal step."""
    e = torch.floor(torch.log2(v.abs().clamp(min=2.0**-14)))
    return 2.0 ** (e - 11)


@settings(max_examples=40, deadline=None)
@given(shape=shapes, dt=st.sampled_from(DTYPES), seed=st.integers(0, 2**31 - 1), scale=st.sampled_from([1e-3, 1.0, 50.0]))
def test_round_trips_within_bounds(shape, dt, seed, scale):
    x = _tensor(shape, dt, seed, scale)
    xd = x.double()
    for method in ("raw", "fp16", "bf16", "fp16-zstd", "int8", "q8_0", "fp8"):
        cfg = CodecConfig(method=method)
        p = encode(x, cfg)
        y = decode(p)
        assert y.shape == x.shape and y.dtype == x.dtype, method
        pb = predict_bytes(x.shape, cfg, dt)
        # predict_bytes adds a header bound (section-length varints bounded by the body),
        # so it may exceed the real size by a byte or two; it is never below it.
        assert len(p) <= pb, (method, len(p), pb)
        if method != "fp16-zstd":  # data-independent rate: exact, header included
            assert pb == len(p), (method, len(p), pb)
        err = (y.double() - xd).abs()
        if method == "raw":
            assert torch.equal(y, x)
        elif method == "fp16":
            assert torch.equal(y, x.float().to(torch.float16).to(dt))
        elif method == "fp16-zstd":
            assert torch.equal(y, x.float().to(torch.float16).to(dt))
        elif method == "bf16":
            assert torch.equal(y, x.to(torch.bfloat16).to(dt))
        elif x.numel():
            rows = x.reshape(-1, x.shape[-1]) if x.dim() else x.reshape(1, 1)
            out_cast = _fp16_ulp_half(y.double()) if dt in (torch.float16, torch.bfloat16) else 0
            if dt == torch.bfloat16:
                out_cast = y.double().abs() * 2.0**-8
            if method == "int8":
                d = rows.double().abs().amax(dim=1, keepdim=True) / 127
                bound = (d * (0.5 + 2**-10) + SUB).expand_as(rows).reshape(x.shape)
                assert bool((err <= bound + out_cast).all()), float((err - bound).max())
            elif method == "q8_0":
                flat = xd.reshape(-1)
                nblk = -(-flat.numel() // Q8_BLOCK)
                pad = torch.zeros(nblk * Q8_BLOCK, dtype=torch.float64)
                pad[: flat.numel()] = flat.abs()
                d = pad.reshape(nblk, Q8_BLOCK).amax(dim=1) / 127
                bound = (d * (0.5 + 2**-10) + SUB).repeat_interleave(Q8_BLOCK)[: flat.numel()].reshape(x.shape)
                assert bool((err <= bound + out_cast).all()), float((err - bound).max())
            elif method == "fp8":
                # e4m3: 3 mantissa bits, so relative error ≤ 2^-4 in the normal range;
                # below 2^-6·d the subnormal step 2^-9·d bounds it.
                d = rows.double().abs().amax(dim=1, keepdim=True) / 448
                dd = d.expand_as(rows).reshape(x.shape)
                bound = xd.abs() * 2.0**-4 * (1 + 2**-9) + dd * 2.0**-10 + 2.0**-24
                assert bool((err <= bound + out_cast).all()), float((err - bound).max())


def test_fixed_rates():
    x = torch.randn(16, 960)  # large enough that the ~20-byte header is < 0.02 bit each
    n = x.numel()
    assert len(encode(x, CodecConfig(method="int8"))) * 8 / n == pytest.approx(8 + 16 / 960, abs=0.02)
    assert len(encode(x, CodecConfig(method="q8_0"))) * 8 / n == pytest.approx(8.5, abs=0.02)
    assert len(encode(x, CodecConfig(method="fp16"))) * 8 / n == pytest.approx(16, abs=0.02)


def test_fp16_refuses_what_would_overflow_instead_of_clipping():
    # It used to clip 1e6 to 65504 silently; 65519 still rounds to 65504 (half a step).
    for m in ("fp16", "fp16-zstd"):
        with pytest.raises(CodecError, match=r"\|x\| < 65520"):
            encode(torch.tensor([1e6, -1e6, 1.0]), CodecConfig(method=m))
        with pytest.raises(CodecError, match=r"\|x\| < 65520"):
            encode(torch.tensor([65520.0]), CodecConfig(method=m))
        y = decode(encode(torch.tensor([65519.0, -65519.0, 1.0]), CodecConfig(method=m)))
        assert torch.equal(y, torch.tensor([65504.0, -65504.0, 1.0]))


def test_zstd_helps_on_compressible_data():
    x = torch.zeros(64, 64)
    x[::7, ::5] = 1.5
    p = encode(x, CodecConfig(method="fp16-zstd"))
    assert len(p) < 0.25 * predict_bytes(x.shape, CodecConfig(method="fp16-zstd"))
    assert torch.equal(decode(p), x)


def test_int8_outlier_channel_hurts_per_token():
    # NOTES.md: outlier channels break per-token int8; q8_0's 32-blocks contain the damage.
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 256, generator=g)
    x[:, 3] *= 100
    rel = {}
    for m in ("int8", "q8_0"):
        y = decode(encode(x, CodecConfig(method=m)))
        rel[m] = float((y - x).norm() / x.norm())
    base = x.clone()
    base[:, 3] = 0
    y = decode(encode(base, CodecConfig(method="int8")))
    err_inliers = float(((y - base).norm() / base.norm()))
    assert err_inliers < 0.01
    # the outlier channel dominates the norm, so the inliers' error is what to compare:
    y8 = decode(encode(x, CodecConfig(method="int8")))
    y8[:, 3] = 0
    assert float((y8 - base).norm() / base.norm()) > 10 * err_inliers
    assert math.isfinite(rel["q8_0"])


@pytest.mark.parametrize("method", ["fp16", "bf16", "fp16-zstd", "int8", "q8_0", "fp8"])
def test_decode_rejects_wrong_section_sizes(method):
    from slicer.codec import methods, wire

    x = torch.randn(4, 40)
    frame = wire.unpack(encode(x, CodecConfig(method=method)))
    secs = [bytes(s) for s in frame.sections]
    for i in range(len(secs)):
        bad = list(secs)
        bad[i] = bad[i][:-1]
        p = wire.pack(methods.METHOD_IDS[method], frame.dtype, frame.shape, bad)
        with pytest.raises(CodecError):
            decode(p)
    with pytest.raises(CodecError):
        decode(wire.pack(methods.METHOD_IDS[method], frame.dtype, frame.shape, secs + [b""]))


def test_hostile_scales_and_codes_rejected():
    from slicer.codec import methods, wire

    x = torch.randn(2, 32)
    for method, sec, value in [
        ("int8", 0, np.float16(np.inf).tobytes()),
        ("int8", 0, np.float16(-1.0).tobytes()),
        ("q8_0", 0, np.float16(np.nan).tobytes()),
        ("fp8", 0, np.float16(-2.0).tobytes()),
        ("int8", 1, b"\x80"),  # -128
        ("fp8", 1, b"\x7f"),  # NaN code
        ("fp16", 0, np.float16(np.inf).tobytes()),
    ]:
        frame = wire.unpack(encode(x, CodecConfig(method=method)))
        secs = [bytearray(s) for s in frame.sections]
        secs[sec][: len(value)] = value
        p = wire.pack(methods.METHOD_IDS[method], frame.dtype, frame.shape, [bytes(s) for s in secs])
        with pytest.raises(CodecError):
            decode(p)


@pytest.mark.parametrize("method", ["raw", "fp16", "bf16", "int8", "q8_0", "fp8"])
@pytest.mark.parametrize("shape", [(3, 5, 33), (7,), (1, 4096), (0, 3), ()])
def test_section_nbytes_exact(method, shape):
    from slicer.codec import methods, wire

    x = torch.randn(shape)
    m = methods.get(method)
    lengths = m.section_nbytes(tuple(x.shape), x.dtype, CodecConfig(method=method))
    p = encode(x, CodecConfig(method=method))
    assert [len(s) for s in wire.unpack(p).sections] == lengths
    assert wire.header_nbytes(tuple(x.shape), lengths) + sum(lengths) == len(p)
    assert m.predict_bytes(tuple(x.shape), x.dtype, CodecConfig(method=method)) == sum(lengths)
    assert predict_bytes(tuple(x.shape), CodecConfig(method=method), x.dtype) == len(p)
