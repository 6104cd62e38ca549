"""ECSQ (ours): payload ≤ rate·N/8 with rate set, error bounds of the uniform quantizer,
rotation invertible, sparsity mode within predict_bytes, and it beats top-k + fixed-width
blocks at equal rate."""
from __future__ import annotations

import math
import struct

import hypothesis.extra.numpy as hnp
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from slicer.codec import CodecConfig, CodecError, decode, encode, predict_bytes, wire
from slicer.codec.ecsq import ECSQ, RATE_ROUND_CODE, _min_body
from slicer.codec.reference import hadamard

DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.float64]


def _x(shape, dtype, seed, heavy=False):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g)
    if heavy and x.dim() and x.shape[-1] > 3:
        x[..., 3] *= 25  # an outlier channel
    return x.to(dtype)


def _delta_of(payload: bytes) -> tuple[float, bool]:
    head = wire.unpack(payload).sections[0]
    rotated = head[0] == 1
    return struct.unpack_from("<f", head, 5 if rotated else 1)[0], rotated


@settings(max_examples=40, deadline=None)
@given(
    shape=hnp.array_shapes(min_dims=0, max_dims=3, min_side=1, max_side=40),
    dt=st.sampled_from(DTYPES),
    rate=st.sampled_from([0.25, 0.7, 1.0, 2.0, 3.5, 6.0, 12.0]),
    rotate=st.booleans(),
    seed=st.integers(0, 2**31 - 1),
)
def test_rate_is_a_hard_cap(shape, dt, rate, rotate, seed):
    x = _x(shape, dt, seed, heavy=True)
    cfg = CodecConfig(method="ecsq", rate=rate, rotate=rotate, seed=seed % 1000)
    p = encode(x, cfg)
    n = x.numel()
    cap = math.floor(rate * n / 8)
    pb = predict_bytes(x.shape, cfg, dt)
    assert len(p) <= pb
    if pb <= cap:
        assert len(p) <= cap
    else:  # only when even the all-zero payload exceeds the cap (documented fallback)
        assert len(p) == pb
        assert pb == _min_body(rotate) + wire.header_nbytes(tuple(x.shape), [_min_body(rotate)] * 2)
        assert torch.count_nonzero(decode(p)) == 0
    y = decode(p)
    assert y.shape == x.shape and y.dtype == x.dtype
    # Uniform quantizer (r = 1/2): every element within Δ (bin width) of its value, in the
    # rotated domain; the rotation is orthonormal, so the L2 error obeys the same bound.
    delta, _ = _delta_of(p)
    err = float((y.double() - x.double()).norm())
    tol_cast = float(y.double().abs().max()) * (2**-7 if dt == torch.bfloat16 else 2**-10) * math.sqrt(n)
    assert err <= delta * math.sqrt(n) * 1.001 + tol_cast + 1e-6


@settings(max_examples=25, deadline=None)
@given(
    shape=hnp.array_shapes(min_dims=1, max_dims=3, min_side=1, max_side=30),
    s=st.sampled_from([0.0, 0.3, 0.75, 0.95]),
    bits=st.integers(1, 10),
    rotate=st.booleans(),
    seed=st.integers(0, 2**31 - 1),
)
def test_sparsity_mode_within_bound(shape, s, bits, rotate, seed):
    x = _x(shape, torch.float32, seed)
    cfg = CodecConfig(method="ecsq", sparsity=s, bits=bits, rotate=rotate)
    p = encode(x, cfg)
    assert len(p) <= predict_bytes(x.shape, cfg)
    y = decode(p)
    assert y.shape == x.shape
    # |q| ≤ 2^(bits-1)-1 keeps every value within the dead zone or a bin.
    delta, _ = _delta_of(p)
    assert float((y - x).norm()) <= delta * math.sqrt(x.numel()) * 1.001 + 1e-6


def test_rate_control_uses_the_budget_and_error_falls_with_rate():
    x = _x((64, 128), torch.float32, 0, heavy=True)
    errs = []
    for rate in (0.5, 1.0, 2.0, 4.0):
        cfg = CodecConfig(method="ecsq", rate=rate)
        p = encode(x, cfg)
        cap = math.floor(rate * x.numel() / 8)
        assert cap * 0.97 <= len(p) <= cap  # the search lands within 3% below the cap
        errs.append(float((decode(p) - x).norm() / x.norm()))
    assert errs == sorted(errs, reverse=True)
    # Each extra bit roughly halves the error of a uniform quantizer at these rates.
    assert errs[3] < 0.2 * errs[1]


def test_same_input_same_bytes_and_reencode_stable():
    x = _x((16, 48), torch.float32, 5, heavy=True)
    for cfg in (CodecConfig(method="ecsq", rate=2.0, rotate=True, seed=7), CodecConfig(method="ecsq", sparsity=0.5)):
        p = encode(x, cfg)
        assert p == encode(x.clone(), cfg)
        y = decode(p)
        assert len(encode(y, cfg)) <= predict_bytes(x.shape, cfg)


def test_rotation_is_orthonormal_and_invertible():
    g = torch.Generator().manual_seed(1)
    for width in (1, 3, 64, 96, 288, 1000):
        x = torch.randn(5, width, generator=g)
        y = hadamard.rotate(x, 11)
        assert sum(hadamard.chunks(width)) == width
        assert torch.allclose(y.norm(dim=1), x.norm(dim=1), rtol=1e-5)
        assert torch.allclose(hadamard.rotate(y, 11, inverse=True), x, atol=1e-5)
    # It spreads a lone outlier evenly over a power-of-two chunk.
    e = torch.zeros(1, 64)
    e[0, 5] = 8.0
    assert torch.allclose(hadamard.rotate(e, 3).abs(), torch.full((1, 64), 1.0), atol=1e-6)


def test_all_zero_and_constant_inputs():
    z = torch.zeros(4, 16)
    assert torch.equal(decode(encode(z, CodecConfig(method="ecsq", rate=1.0))), z)
    c = torch.full((4, 16), 2.5)
    y = decode(encode(c, CodecConfig(method="ecsq", rate=4.0)))
    assert torch.allclose(y, c, rtol=0.05)


def _topk_blocks_bitmap(x: torch.Tensor, rate: float) -> float:
    """Top-k + 3 equal-cardinality magnitude blocks per sign with 4-bit AIQ + a bitmap: the
    SLICER structure at a fixed width, with k chosen to spend `rate` bits per element."""
    flat = x.reshape(-1)
    n = flat.numel()
    k = int((rate - 1.0) * n / (4 + 0.0))  # bitmap 1 bit each, 4 bits per kept value
    idx = flat.abs().topk(k).indices
    y = torch.zeros_like(flat)
    for sign in (1, -1):
        sel = idx[flat[idx] * sign > 0]
        vals = flat[sel]
        order = vals.abs().argsort(descending=True)
        for blk in torch.tensor_split(order, 3):
            v = vals[blk]
            lo, hi = v.min(), v.max()
            sc = (hi - lo) / 15 if hi > lo else torch.tensor(1.0)
            y[sel[blk]] = lo + torch.round((v - lo) / sc) * sc
    return float((y - flat).norm() / flat.norm())


def test_beats_topk_plus_fixed_width_blocks_at_equal_rate():
    # NOTES.md: 2.2-4.6x lower error at equal rate; ask for 1.5x on a Gaussian with an
    # outlier channel at 2 bits per element.
    x = _x((64, 256), torch.float32, 3, heavy=True)
    rate = 2.0
    p = encode(x, CodecConfig(method="ecsq", rate=rate))
    ours = float((decode(p) - x).norm() / x.norm())
    theirs = _topk_blocks_bitmap(x, rate)
    assert ours * 1.5 < theirs, (ours, theirs)


def test_predict_bytes_with_rate_is_the_cap():
    for shape in ((128, 4096), (3, 7, 64), (1, 64)):
        cfg = CodecConfig(method="ecsq", rate=1.5)
        cap = math.floor(1.5 * math.prod(shape) / 8)
        pb = predict_bytes(shape, cfg)
        assert pb <= max(cap, 40)
        if cap > 100:
            assert pb >= cap - 3  # within a varint's slack of the cap
    assert ECSQ.max_sections(None) == 2 and RATE_ROUND_CODE == 128


# --- Extreme magnitudes: every finite float32/float16/bfloat16 input, 2^-149 .. 3.4e38 ---

F32_MAX = float(torch.finfo(torch.float32).max)
#: Relative rounding of the float32 reconstruction and of the cast to the dtype, and the
#: dtype's smallest subnormal (the absolute rounding there): slack on top of the Δ bound.
_EPS = {torch.float32: 2.0**-20, torch.float16: 2.0**-10, torch.bfloat16: 2.0**-7}
_TINY = {torch.float32: 2.0**-149, torch.float16: 2.0**-24, torch.bfloat16: 2.0**-133}


def _scaled(shape, dt, seed, amax, zeros, const):
    """A tensor of ``dt`` with max|x| ≈ amax (float64 scaling, then clamped into the dtype's
    finite range, so 3.4e38 stays finite), a fraction ``zeros`` of exact zeros, or constant."""
    g = torch.Generator().manual_seed(seed)
    z = torch.full(shape, -1.0, dtype=torch.float64) if const else torch.randn(shape, generator=g, dtype=torch.float64)
    if zeros:
        z[torch.rand(shape, generator=g) < zeros] = 0.0
    m = float(z.abs().max()) if z.numel() else 0.0
    x = z * (amax / m) if m else z
    fmax = float(torch.finfo(dt).max)
    return x.clamp(-fmax, fmax).to(dt)


def _check_roundtrip(x, cfg):
    """decode(encode(x)) holds the payload bounds and the error bound of the quantizer."""
    dt = x.dtype
    p = encode(x, cfg)
    pb = predict_bytes(x.shape, cfg, dt)
    assert len(p) <= pb
    if cfg.rate is not None and pb <= math.floor(cfg.rate * x.numel() / 8):
        assert len(p) <= math.floor(cfg.rate * x.numel() / 8)
    y = decode(p)
    assert y.shape == x.shape and y.dtype == dt
    assert bool(torch.isfinite(y).all()), "decoded values must stay finite"
    delta, _ = _delta_of(p)
    assert math.isfinite(delta) and delta > 0
    # Every element within Δ in the (rotated) domain, so the L2 error ≤ Δ·sqrt(N), plus the
    # float rounding of the reconstruction and the cast (float64 norms: 3.4e38² overflows f32).
    xd, yd = x.double(), y.double()
    n = x.numel()
    err = float((yd - xd).norm())
    tol = _EPS[dt] * (float(xd.norm()) + float(yd.norm())) + 64 * _TINY[dt] * math.sqrt(n)
    assert err <= delta * math.sqrt(n) * 1.001 + tol, (err, delta, tol)
    return p, y


@settings(max_examples=60, deadline=None)
@given(
    shape=hnp.array_shapes(min_dims=1, max_dims=2, min_side=1, max_side=24),
    dt=st.sampled_from([torch.float32, torch.float16, torch.bfloat16]),
    log10_amax=st.floats(-45.0, math.log10(F32_MAX)),
    zeros=st.sampled_from([0.0, 0.5, 0.95]),
    const=st.booleans(),
    rate=st.sampled_from([None, 0.25, 1.0, 4.0, 12.0]),
    rotate=st.booleans(),
    seed=st.integers(0, 2**31 - 1),
)
def test_every_finite_magnitude_roundtrips_within_the_bound(shape, dt, log10_amax, zeros, const, rate, rotate, seed):
    x = _scaled(shape, dt, seed, 10.0**log10_amax, zeros, const)
    cfg = CodecConfig(method="ecsq", rate=rate, rotate=rotate, seed=seed % 1000) if rate else CodecConfig(
        method="ecsq", sparsity=0.5, bits=4, rotate=rotate
    )
    if rotate and float(x.float().abs().max()) >= 2.0**64:
        with pytest.raises(CodecError, match=r"rotate=True.*2\^64"):
            encode(x, cfg)
        return
    _check_roundtrip(x, cfg)


@pytest.mark.parametrize(
    "amax", [2.0**-149, 1e-45, 1e-41, 2.0**-126, 1e-30, 1.0, 1e30, 7.5e37, 1e38, 1.7e38, 3e38, F32_MAX]
)
@pytest.mark.parametrize("rate", [None, 0.25, 1.0, 4.0, 24.0])
def test_reported_extremes(amax, rate):
    # Reported: amax ≥ 7.5e37 at a low rate gave a payload the decoder refused, 3e38 raised
    # struct's OverflowError from encode, subnormals overflowed the rate search.
    for zeros, const in ((0.0, False), (0.5, False), (0.0, True)):
        x = _scaled((4, 32), torch.float32, 0, amax, zeros, const)
        cfg = CodecConfig(method="ecsq", rate=rate) if rate else CodecConfig(method="ecsq", sparsity=0.5, bits=4)
        _check_roundtrip(x, cfg)


@pytest.mark.parametrize("log2_scale", [-120, -100, -60, 0, 60, 100, 119])
def test_relative_error_does_not_depend_on_the_scale(log2_scale):
    # A power-of-two scale is exact in float32 over the normal range, so the payload at
    # scale s is the payload at scale 1 with Δ·s: the same relative error at every scale.
    z = _x((16, 64), torch.float32, 9, heavy=True)  # max|z| < 2^8, so z·2^119 is finite
    for rate in (0.5, 2.0, 6.0):
        cfg = CodecConfig(method="ecsq", rate=rate)
        ref = float((decode(encode(z, cfg)) - z).norm() / z.norm())
        x = z * 2.0**log2_scale
        p, y = _check_roundtrip(x, cfg)
        rel = float((y.double() - x.double()).norm() / x.double().norm())
        assert rel == pytest.approx(ref, rel=0.01), (rate, rel, ref)
        assert len(p) <= math.floor(rate * z.numel() / 8)


def test_subnormal_inputs_at_a_high_rate_are_exact():
    # Subnormal float32 values are integer multiples of 2^-149, the smallest step.
    g = torch.Generator().manual_seed(4)
    k = torch.randint(-200, 201, (8, 32), generator=g).double()
    x = (k * 2.0**-149).float()  # (8, 32) subnormals and zeros
    y = decode(encode(x, CodecConfig(method="ecsq", rate=16.0)))
    assert torch.equal(y, x)


def test_float16_top_of_range_saturates_instead_of_inf():
    # The top bin reconstructs up to Δ past max|x|: 65504 + Δ must not round to inf.
    x = torch.linspace(-65504, 65504, 64, dtype=torch.float32).reshape(2, 32).to(torch.float16)
    for rate in (0.5, 1.0, 2.0, 3.0):
        _check_roundtrip(x, CodecConfig(method="ecsq", rate=rate))
