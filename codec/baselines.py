"""Baseline codecs for comparison, same API and wire format as the rest.

``raw`` is the lossless reference (the tensor's own bytes). The lossy baselines are what
split-inference systems send today:

- ``fp16`` / ``bf16``: a cast, rounding to nearest. A value the cast would round to ±inf
  (|x| ≥ 65520 for fp16, ≥ 3.3961e38 for bf16) is refused with a ``CodecError`` naming
  the range; nothing is clipped.
- ``fp16-zstd``: fp16 bytes through zstd (level 3), or the plain fp16 bytes when zstd
  does not help (a one-byte flag says which), so ``predict_bytes`` = 1 + 2N bounds it.
- ``int8``: per-token absmax (a token = a row = all dims but the last flattened): one fp16
  scale d = absmax/127 per row, q = round(x/d) ∈ [-127, 127]; |x - q·d| ≤ d/2.
- ``q8_0``: the flat tensor in blocks of 32 (the last may be shorter), each 32 int8 and one
  fp16 scale d = absmax/127 (llama.cpp's ``quantize_row_q8_0``; distributed-llama sends
  activations this way); 8.5 bits per element.
- ``fp8``: float8 e4m3fn per token with one fp16 scale d = absmax/448 per row (448 is
  e4m3fn's largest finite value; |x/d| ≤ 448, so the cast never saturates).

Range: the fp16 scale d (rounded up, so |x/d| never exceeds the code range and nothing
clips) must itself be finite: int8 and q8_0 take |x| ≤ 65504·127 = 8,319,008, fp8
|x| ≤ 65504·448 = 29,345,792. A tensor beyond that is refused with a ``CodecError``
naming the range (the fp16 scale is the format: q8_0 is llama.cpp's block); use ``ecsq``
(every finite float32) or ``raw``. Decoding into float16/bfloat16 saturates at the dtype's
largest value, which is within that dtype's rounding of any value an encoder accepted
(``slicer.codec.decode`` does it for every method).

Section layouts (frozen, wire version 1): ``fp16``/``bf16`` one section of 2-byte values;
``fp16-zstd`` one section ``u8 flag | data``; ``int8``/``fp8`` two sections (rows fp16
scales, N one-byte codes); ``q8_0`` two sections (ceil(N/32) fp16 scales, N int8 codes).
Every decode checks section count and sizes against the header's shape before it
allocates, and rejects non-finite or negative scales and fp8's NaN codes. Every rate is
data-independent except zstd's, so ``predict_bytes`` is exact for all but ``fp16-zstd``,
and ``section_nbytes(shape, dtype, cfg)`` gives each section's exact length; as
``section_bounds`` it lets ``slicer.codec.predict_bytes`` compute the header exactly too, so its
prediction equals ``len(payload)`` for every baseline but ``fp16-zstd`` (a bound there).
"""
from __future__ import annotations

import math

import numpy as np
import torch

from slicer.codec.config import CodecConfig
from slicer.codec.errors import CodecError
from slicer.codec.wire import Frame

FP16_MAX = 65504.0
Q8_BLOCK = 32
E4M3_MAX = 448.0
ZSTD_LEVEL = 3


def _as_bytes(x: torch.Tensor) -> bytes:
    x = x.detach().contiguous().cpu()
    if x.dtype == torch.bfloat16:
        return x.view(torch.int16).numpy().tobytes()
    return x.numpy().tobytes()


def _from_bytes(buf: memoryview, dtype: torch.dtype, shape: tuple[int, ...]) -> torch.Tensor:
    itemsize = torch.empty(0, dtype=dtype).element_size()
    need = math.prod(shape) * itemsize
    if len(buf) != need:
        raise CodecError(f"data section holds {len(buf)} bytes, shape {shape} of {dtype} needs {need}")
    if need == 0:
        return torch.zeros(shape, dtype=dtype)
    if dtype == torch.bfloat16:
        return torch.frombuffer(bytearray(buf), dtype=torch.int16).view(torch.bfloat16).reshape(shape)
    return torch.frombuffer(bytearray(buf), dtype=dtype).reshape(shape)


def rows_cols(shape: tuple[int, ...]) -> tuple[int, int]:
    """(tokens, width): a token is a row of the last dim; an empty tensor has 0 rows."""
    cols = shape[-1] if shape else 1
    n = math.prod(shape)
    return (n // cols if n else 0), cols


def _sections(frame: Frame, want: int, name: str) -> tuple[memoryview, ...]:
    if len(frame.sections) != want:
        raise CodecError(f"{name} payload has {len(frame.sections)} sections, expected {want}")
    return frame.sections


def _need(buf: memoryview, nbytes: int, what: str) -> None:
    if len(buf) != nbytes:
        raise CodecError(f"{what} section holds {len(buf)} bytes, expected {nbytes}")


def _scales_from(buf: memoryview, count: int, what: str) -> torch.Tensor:
    """fp16 scales as float32, validated (finite, ≥ 0)."""
    _need(buf, 2 * count, what)
    s = torch.from_numpy(np.frombuffer(buf, dtype="<f2").astype(np.float32))  # (count,)
    if count and not bool((torch.isfinite(s) & (s >= 0)).all()):
        raise CodecError(f"{what} holds a negative or non-finite scale")
    return s


def _cast_or_refuse(x: torch.Tensor, dtype: torch.dtype, name: str) -> torch.Tensor:
    """``x`` rounded to ``dtype``; a value that rounds to ±inf is refused, never clipped."""
    y = x.to(dtype)
    if y.numel() and bool(torch.isinf(y).any()):
        amax = float(x.double().abs().max())
        limit = "|x| < 65520 (float16)" if dtype == torch.float16 else "|x| < 3.3961e38 (bfloat16)"
        raise CodecError(f"method {name!r} represents {limit}; the tensor holds max|x| = {amax:.6g}: use 'ecsq' or 'raw'")
    return y


def _fp16_scales(absmax: torch.Tensor, qmax: float, name: str) -> torch.Tensor:
    """d = absmax/qmax as fp16, rounded UP, so |x/d| ≤ qmax and nothing clips: rounding to
    nearest would clip in fp16's subnormal range (d < 2^-14, i.e. absmax < 0.0078 for
    int8), where the relative rounding error reaches 50%. A d past 65504 is refused (it
    used to saturate, which clipped every |x| > 65504·qmax silently)."""
    d = absmax.float() / qmax
    if d.numel() and bool((d > FP16_MAX).any()):
        raise CodecError(
            f"method {name!r} keeps one fp16 scale absmax/{qmax:g}, so it represents |x| ≤ {FP16_MAX * qmax:,.0f}; "
            f"the tensor holds max|x| = {float(absmax.max()):.6g}: use 'ecsq' or 'raw'"
        )
    d16 = d.to(torch.float16)
    up = torch.nextafter(d16, torch.full_like(d16, float("inf")))
    return torch.where(d16.float() < d, up, d16)


def _safe_div(x: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
    # Rows whose scale underflows fp16 (absmax < ~4e-6) quantize to 0.
    return torch.where(d > 0, x / torch.where(d > 0, d, torch.ones_like(d)), torch.zeros_like(x))


class _Raw:
    """Lossless: the tensor's own bytes in its own dtype."""

    def encode(self, x: torch.Tensor, cfg: CodecConfig) -> list[bytes]:
        return [_as_bytes(x)]

    def decode(self, frame: Frame) -> torch.Tensor:
        (data,) = _sections(frame, 1, "raw")
        return _from_bytes(data, frame.dtype, frame.shape)

    def predict_bytes(self, shape, dtype, cfg) -> int:
        return sum(self.section_nbytes(shape, dtype, cfg))

    def section_bounds(self, shape, dtype, cfg) -> list[int]:
        return self.section_nbytes(shape, dtype, cfg)

    def section_nbytes(self, shape, dtype, cfg) -> list[int]:
        return [math.prod(shape) * torch.empty(0, dtype=dtype).element_size()]

    def max_sections(self, cfg) -> int:
        return 1


class _Cast:
    """A cast to a 2-byte float type."""

    def __init__(self, name: str, dtype: torch.dtype):
        self.name, self.dtype = name, dtype

    def encode(self, x: torch.Tensor, cfg: CodecConfig) -> list[bytes]:
        return [_as_bytes(_cast_or_refuse(x, self.dtype, self.name))]

    def decode(self, frame: Frame) -> torch.Tensor:
        (data,) = _sections(frame, 1, self.name)
        y = _from_bytes(data, self.dtype, frame.shape)
        if y.numel() and not bool(torch.isfinite(y).all()):
            raise CodecError(f"{self.name} payload holds NaN or Inf (an encoder never writes them)")
        return y

    def predict_bytes(self, shape, dtype, cfg) -> int:
        return sum(self.section_nbytes(shape, dtype, cfg))

    def section_bounds(self, shape, dtype, cfg) -> list[int]:
        return self.section_nbytes(shape, dtype, cfg)

    def section_nbytes(self, shape, dtype, cfg) -> list[int]:
        return [2 * math.prod(shape)]

    def max_sections(self, cfg) -> int:
        return 1


class _Fp16Zstd:
    """fp16 bytes through zstd, or stored when zstd would not shrink them."""

    def encode(self, x: torch.Tensor, cfg: CodecConfig) -> list[bytes]:
        import zstandard  # noqa: PLC0415

        data = _as_bytes(_cast_or_refuse(x, torch.float16, "fp16-zstd"))
        packed = zstandard.ZstdCompressor(level=ZSTD_LEVEL, write_content_size=True).compress(data)
        if len(packed) < len(data):
            return [b"\x01" + packed]
        return [b"\x00" + data]

    def decode(self, frame: Frame) -> torch.Tensor:
        import zstandard  # noqa: PLC0415

        (sec,) = _sections(frame, 1, "fp16-zstd")
        if len(sec) < 1:
            raise CodecError("fp16-zstd section is empty (needs a flag byte)")
        flag, body = sec[0], sec[1:]
        need = 2 * frame.numel
        if flag == 0:
            data = body
        elif flag == 1:
            try:
                declared = zstandard.frame_content_size(body)
            except zstandard.ZstdError as e:
                raise CodecError(f"fp16-zstd: bad zstd frame: {e}") from e
            if declared != need:  # checked before decompressing allocates
                raise CodecError(f"fp16-zstd: zstd frame declares {declared} bytes, shape needs {need}")
            try:
                data = zstandard.ZstdDecompressor().decompress(body, max_output_size=need)
            except zstandard.ZstdError as e:
                raise CodecError(f"fp16-zstd: zstd data corrupt: {e}") from e
        else:
            raise CodecError(f"fp16-zstd flag {flag} unknown: allowed 0 (stored), 1 (zstd)")
        y = _from_bytes(memoryview(data), torch.float16, frame.shape)
        if y.numel() and not bool(torch.isfinite(y).all()):
            raise CodecError("fp16-zstd payload holds NaN or Inf (an encoder never writes them)")
        return y

    def predict_bytes(self, shape, dtype, cfg) -> int:
        return 1 + 2 * math.prod(shape)  # stored mode is the fallback, so this bounds it

    def section_bounds(self, shape, dtype, cfg) -> list[int]:
        return [self.predict_bytes(shape, dtype, cfg)]

    def max_sections(self, cfg) -> int:
        return 1


class _Int8Token:
    """int8 per-token absmax."""

    def encode(self, x: torch.Tensor, cfg: CodecConfig) -> list[bytes]:
        rows, cols = rows_cols(tuple(x.shape))
        x2 = x.detach().float().reshape(rows, cols)  # (rows, cols)
        d = _fp16_scales(x2.abs().amax(dim=1, keepdim=True) if rows else x2[:, :1], 127.0, "int8")  # (rows, 1)
        q = torch.round(_safe_div(x2, d.float())).clamp(-127, 127).to(torch.int8)  # (rows, cols)
        return [_as_bytes(d.reshape(-1)), q.cpu().numpy().tobytes()]

    def decode(self, frame: Frame) -> torch.Tensor:
        sc, data = _sections(frame, 2, "int8")
        rows, cols = rows_cols(frame.shape)
        d = _scales_from(sc, rows, "int8 scales")
        _need(data, rows * cols, "int8 codes")
        q = torch.from_numpy(np.frombuffer(data, dtype=np.int8).astype(np.float32))
        if q.numel() and int(q.min()) < -127:
            raise CodecError("int8 codes hold -128 (an encoder writes -127..127)")
        return (q.reshape(rows, cols) * d[:, None]).reshape(frame.shape)

    def predict_bytes(self, shape, dtype, cfg) -> int:
        return sum(self.section_nbytes(shape, dtype, cfg))

    def section_bounds(self, shape, dtype, cfg) -> list[int]:
        return self.section_nbytes(shape, dtype, cfg)

    def section_nbytes(self, shape, dtype, cfg) -> list[int]:
        rows, cols = rows_cols(tuple(shape))
        return [2 * rows, rows * cols]

    def max_sections(self, cfg) -> int:
        return 2


class _Q8_0:
    """llama.cpp Q8_0 over the flat tensor: blocks of 32 int8 with one fp16 scale."""

    def encode(self, x: torch.Tensor, cfg: CodecConfig) -> list[bytes]:
        flat = x.detach().float().reshape(-1)
        n = flat.numel()
        nblk = -(-n // Q8_BLOCK)
        pad = torch.zeros(nblk * Q8_BLOCK, dtype=torch.float32, device=flat.device)
        pad[:n] = flat
        blocks = pad.reshape(nblk, Q8_BLOCK)  # (nblk, 32)
        d = _fp16_scales(blocks.abs().amax(dim=1, keepdim=True), 127.0, "q8_0")  # (nblk, 1)
        q = torch.round(_safe_div(blocks, d.float())).clamp(-127, 127).to(torch.int8).reshape(-1)[:n]
        return [_as_bytes(d.reshape(-1)), q.cpu().numpy().tobytes()]

    def decode(self, frame: Frame) -> torch.Tensor:
        sc, data = _sections(frame, 2, "q8_0")
        n = frame.numel
        nblk = -(-n // Q8_BLOCK)
        d = _scales_from(sc, nblk, "q8_0 scales")
        _need(data, n, "q8_0 codes")
        q = torch.from_numpy(np.frombuffer(data, dtype=np.int8).astype(np.float32))
        if n and int(q.min()) < -127:
            raise CodecError("q8_0 codes hold -128 (an encoder writes -127..127)")
        return (q * d.repeat_interleave(Q8_BLOCK)[:n]).reshape(frame.shape)

    def predict_bytes(self, shape, dtype, cfg) -> int:
        return sum(self.section_nbytes(shape, dtype, cfg))

    def section_bounds(self, shape, dtype, cfg) -> list[int]:
        return self.section_nbytes(shape, dtype, cfg)

    def section_nbytes(self, shape, dtype, cfg) -> list[int]:
        n = math.prod(shape)
        return [2 * (-(-n // Q8_BLOCK)), n]

    def max_sections(self, cfg) -> int:
        return 2


class _Fp8Token:
    """float8 e4m3fn per token with one fp16 scale per row."""

    def encode(self, x: torch.Tensor, cfg: CodecConfig) -> list[bytes]:
        rows, cols = rows_cols(tuple(x.shape))
        x2 = x.detach().float().reshape(rows, cols)  # (rows, cols)
        d = _fp16_scales(x2.abs().amax(dim=1, keepdim=True) if rows else x2[:, :1], E4M3_MAX, "fp8")  # (rows, 1)
        f8 = _safe_div(x2, d.float()).clamp(-E4M3_MAX, E4M3_MAX).to(torch.float8_e4m3fn)
        return [_as_bytes(d.reshape(-1)), f8.view(torch.uint8).cpu().numpy().tobytes()]

    def decode(self, frame: Frame) -> torch.Tensor:
        sc, data = _sections(frame, 2, "fp8")
        rows, cols = rows_cols(frame.shape)
        d = _scales_from(sc, rows, "fp8 scales")
        _need(data, rows * cols, "fp8 codes")
        b = torch.from_numpy(np.frombuffer(data, dtype=np.uint8).copy())
        if b.numel() and bool(((b & 0x7F) == 0x7F).any()):
            raise CodecError("fp8 codes hold NaN (0x7F/0xFF; an encoder never writes them)")
        v = b.view(torch.float8_e4m3fn).float()
        return (v.reshape(rows, cols) * d[:, None]).reshape(frame.shape)

    def predict_bytes(self, shape, dtype, cfg) -> int:
        return sum(self.section_nbytes(shape, dtype, cfg))

    def section_bounds(self, shape, dtype, cfg) -> list[int]:
        return self.section_nbytes(shape, dtype, cfg)

    def section_nbytes(self, shape, dtype, cfg) -> list[int]:
        rows, cols = rows_cols(tuple(shape))
        return [2 * rows, rows * cols]

    def max_sections(self, cfg) -> int:
        return 2


RAW = _Raw()
FP16 = _Cast("fp16", torch.float16)
BF16 = _Cast("bf16", torch.bfloat16)
FP16_ZSTD = _Fp16Zstd()
INT8 = _Int8Token()
Q8_0 = _Q8_0()
FP8 = _Fp8Token()
