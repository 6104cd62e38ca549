"""Every method × every input dtype on extreme values (dtype maxima, 3e38, 8.4e6, 65504,
subnormals, signed zeros, constant and one-element tensors): the encoder either refuses
with a ``CodecError`` that names the range the method supports, exactly where the
method's documentation says it does, or its payload decodes (the encoder's output always
decodes) to finite values within the method's documented error bound. Nothing clips
silently and nothing finite comes back as ±inf or NaN."""
from __future__ import annotations

import math
import struct

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from slicer.codec import CodecConfig, CodecError, decode, encode, wire

DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.float64]
F32_MAX = float(torch.finfo(torch.float32).max)
#: Half an ulp relative to the value (round to nearest) of each output dtype; float64
#: outputs come from float32 reconstructions, so they carry float32's rounding.
U_OUT = {torch.float32: 2.0**-24, torch.float16: 2.0**-11, torch.bfloat16: 2.0**-8, torch.float64: 2.0**-24}
#: Half the subnormal spacing of each output dtype (absolute rounding near zero).
TINY_OUT = {torch.float32: 2.0**-150, torch.float16: 2.0**-25, torch.bfloat16: 2.0**-134, torch.float64: 2.0**-150}


def _pool(dt: torch.dtype) -> list[float]:
    fi = torch.finfo(dt)
    vals = [0.0, -0.0, 1.0, -1.5, 0.3, 7.0, fi.max, -fi.max, fi.max / 3, fi.tiny, -fi.tiny, fi.tiny / 8,
            float(fi.smallest_normal) * 2.0**-(fi.bits - 9) if dt != torch.float64 else 1e-300,
            3e38, -3e38, 1e38, 8.4e6, -8.4e6, 3e7, 65504.0, -65519.0, 65520.0, 1e-30, 1e-42, 2.0**-149]
    return [v for v in vals if math.isfinite(v) and abs(v) <= fi.max]


@st.composite
def tensors(draw, dt: torch.dtype) -> torch.Tensor:
    shape = draw(st.sampled_from([(), (1,), (1, 1), (3,), (2, 5), (4, 33), (1, 40), (2, 3, 7)]))
    n = math.prod(shape)
    pool = _pool(dt)
    if draw(st.booleans()):  # constant
        vals = [draw(st.sampled_from(pool))] * n
    else:
        vals = draw(st.lists(st.sampled_from(pool), min_size=n, max_size=n))
    x = torch.tensor(vals, dtype=torch.float64).reshape(shape)
    return x.to(dt)


def _rows(x: torch.Tensor) -> torch.Tensor:
    cols = x.shape[-1] if x.dim() else 1
    return x.reshape(-1, cols)


def _row_absmax(x: torch.Tensor) -> torch.Tensor:
    """max|x| of each element's row (a token: the last dim), broadcast to x's shape."""
    r = _rows(x).abs()
    return r.amax(dim=1, keepdim=True).expand_as(r).reshape(x.shape)


def _block_absmax(x: torch.Tensor, block: int = 32) -> torch.Tensor:
    flat = x.reshape(-1).abs()
    n = flat.numel()
    pad = torch.zeros(-(-n // block) * block, dtype=flat.dtype)
    pad[:n] = flat
    m = pad.reshape(-1, block).amax(dim=1, keepdim=True).expand(-1, block).reshape(-1)[:n]
    return m.reshape(x.shape)


def _fp16_scale_bound(absmax: torch.Tensor, qmax: float) -> torch.Tensor:
    # The fp16 scale is absmax/qmax rounded up: relative 2^-10 above, or one subnormal step.
    return absmax / qmax * (1 + 2.0**-10) + 2.0**-24


def _ecsq_step(payload: bytes) -> float:
    head = wire.unpack(payload).sections[0]
    return struct.unpack_from("<f", head, 5 if head[0] & 1 else 1)[0]


# (spec, expected refusal predicate on float64 |x| (None: never), bound(x, y, payload) on float64 tensors)
def _refuse_range(limit: float, strict: bool):
    return lambda a: (a >= limit) if strict else (a > limit)


CASES = {
    "raw": (None, lambda x, y, p: torch.zeros_like(x)),
    "fp16": ("cast16", lambda x, y, p: 2.0**-11 * x.abs() + 2.0**-25),
    "fp16-zstd": ("cast16", lambda x, y, p: 2.0**-11 * x.abs() + 2.0**-25),
    "bf16": ("castbf", lambda x, y, p: 2.0**-8 * x.abs() + 2.0**-134),
    "int8": ((65504.0 * 127, 1e-6), lambda x, y, p: 0.5 * (1 + 2.0**-16) * _fp16_scale_bound(_row_absmax(x), 127.0)),
    "q8_0": ((65504.0 * 127, 1e-6), lambda x, y, p: 0.5 * (1 + 2.0**-16) * _fp16_scale_bound(_block_absmax(x), 127.0)),
    "fp8": ((65504.0 * 448, 1e-6), lambda x, y, p: 2.0**-4 * x.abs() + 2.0**-9 * _fp16_scale_bound(_row_absmax(x), 448.0)),
    # delta=none: every row at 8 bits over its fp16-rounded inlier range.
    "opsc:delta=none": ((65520.0, 0.0), lambda x, y, p: (2 * _row_absmax(x) * (1 + 2.0**-10) + 2.0**-23) / 255 / 2
                        + 2.0**-11 * _row_absmax(x) + 2.0**-24),
    # keep everything, one 8-bit block per sign: error ≤ half a step of [lo, hi] ⊂ [0, max|x|]
    # (a block narrower than ~7.5e-37 is sent as constant lo: error < 1e-36).
    "slicer:sparsity=0,bits=8,delta=none,blocks=1": (None, lambda x, y, p: x.abs().max() / 255 / 2 * (1 + 2.0**-16) + 1e-36),
    "slicer:sparsity=0,bits=8,delta=none,blocks=1,entropy=true": (
        None, lambda x, y, p: x.abs().max() / 255 / 2 * (1 + 2.0**-16) + 1e-36),
    # uniform quantizer (r = 1/2): within Δ of every value (the all-zero payload's Δ ≥ 2·max|x|)
    "ecsq:rate=16": (None, lambda x, y, p: _ecsq_step(p) * (1 + 1e-6) + 2.0**-22 * x.abs()),
    "ecsq:rate=2": (None, lambda x, y, p: _ecsq_step(p) * (1 + 1e-6) + 2.0**-22 * x.abs()),
    "ecsq:sparsity=0.5,bits=4": (None, lambda x, y, p: _ecsq_step(p) * (1 + 1e-6) + 2.0**-22 * x.abs()),
    "ecsq:rate=8,rotate=true": ((2.0**64, 0.0), None),
    # default configurations: the payload decodes to finite values (bounds: test_slicer/test_ecsq)
    "slicer": (None, None),
    "slicer:asymmetry=0.5,entropy=true,index=rice": (None, None),
    "slicer:sparsity=0.5,bits=3/1,blocks=2,delta=none,index=ef": (None, None),
    "opsc": ((65520.0, 0.0), None),
    "ecsq": (None, None),
}


def _must_refuse(spec: str, x: torch.Tensor) -> bool | None:
    """True: the method's documented range excludes x; False: it includes it; None: on the
    boundary (within float rounding of the limit), either is allowed."""
    xd = x.double()
    if x.numel() and x.dtype == torch.float64 and float(xd.abs().max()) > F32_MAX:
        return spec != "raw"  # every lossy method works in float32
    rule = CASES[spec][0]
    if rule is None or not x.numel():
        return False
    if rule == "cast16":
        return bool(torch.isinf(x.to(torch.float16)).any())
    if rule == "castbf":
        return bool(torch.isinf(x.to(torch.bfloat16)).any())
    limit, margin = rule
    a = float(x.float().abs().max()) if x.dtype != torch.float64 else float(xd.abs().max())
    if margin and abs(a - limit) <= margin * limit:
        return None
    return a > limit if margin else a >= limit


@pytest.mark.parametrize("spec", list(CASES))
@pytest.mark.parametrize("dt", DTYPES, ids=str)
@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_extreme_values_decode_finite_within_bound_or_refuse(spec, dt, data):
    x = data.draw(tensors(dt))
    cfg = CodecConfig.parse(spec)
    expect = _must_refuse(spec, x)
    try:
        p = encode(x, cfg)
    except CodecError as e:
        assert expect is not False, f"{spec} refused a tensor in its range: {e}"
        assert "|x|" in str(e) or "2^64" in str(e), f"the refusal must name the supported range: {e}"
        return
    assert expect is not True, f"{spec} accepted max|x| = {float(x.double().abs().max())} outside its documented range"
    y = decode(p)  # the encoder's output always decodes
    assert y.shape == x.shape and y.dtype == x.dtype
    assert bool(torch.isfinite(y).all()), f"{spec}: finite in, non-finite out"
    bound = CASES[spec][1]
    if bound is None or not x.numel():
        return
    xd, yd = x.double(), y.double()
    tol = bound(xd, yd, p) + U_OUT[dt] * (xd.abs() + yd.abs()) + TINY_OUT[dt]
    err = (yd - xd).abs()
    worst = int(torch.argmax(err - tol))
    assert bool((err <= tol).all()), (spec, float(xd.reshape(-1)[worst]), float(yd.reshape(-1)[worst]))


@pytest.mark.parametrize(
    "spec,value,fragment",
    [
        ("int8", 3e38, r"\|x\| ≤ 8,319,008"),
        ("q8_0", 3e38, r"\|x\| ≤ 8,319,008"),
        ("fp8", 3e38, r"\|x\| ≤ 29,345,792"),
        ("fp16", 1e6, r"\|x\| < 65520"),
        ("bf16", F32_MAX, r"\|x\| < 3.3961e38"),
        ("opsc", 1e5, r"\|x\| < 65520"),
    ],
)
def test_reported_silent_clips_are_refused_with_the_range(spec, value, fragment):
    # Reported: 3e38 decoded to 8,319,008 under int8/q8_0 with no error.
    x = torch.tensor([[value, 1.0, -2.0, 0.5]])
    with pytest.raises(CodecError, match=fragment):
        encode(x, CodecConfig.parse(spec))
    below = torch.tensor([[8e6 if spec in ("int8", "q8_0", "fp8") else 6e4, 1.0, -2.0, 0.5]])
    y = decode(encode(below, CodecConfig.parse(spec)))
    assert bool(torch.isfinite(y).all()) and abs(float(y[0, 0]) - float(below[0, 0])) <= 0.01 * float(below[0, 0])


@pytest.mark.parametrize("spec", ["int8", "q8_0", "fp8", "bf16"])
def test_float16_maximum_stays_finite(spec):
    # Reported: decode(encode(tensor([65504.], float16), int8)) was inf (127·516 = 65532).
    x = torch.tensor([65504.0, -65504.0, 1.0], dtype=torch.float16)
    y = decode(encode(x, CodecConfig.parse(spec)))
    assert bool(torch.isfinite(y).all()) and float(y[0]) == 65504.0 and float(y[1]) == -65504.0
