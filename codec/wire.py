"""The wire format: versioned, self-describing, checksummed, never pickle.

Frozen layout of versions 1 and 2 (all integers little-endian; ``varint`` is unsigned LEB128,
at most 5 bytes)::

    magic    4 bytes  b"SLCR"
    version  u8       1, or 2 for ECSQ payloads with the fast entropy stream
    method   u8       method id (codec.methods.METHOD_IDS)
    dtype    u8       0 float32, 1 float16, 2 bfloat16, 3 float64
    ndim     u8       0..8
    shape    ndim × varint   each dim ≤ MAX_DIM
    nsec     u8       number of sections, 0..MAX_SECTIONS
    lengths  nsec × varint   byte length of each section
    sections          concatenated; their lengths must add up to exactly what is left
    crc32    u32      zlib.crc32 of everything before it

A method's parameters travel inside its own sections (usually section 0, a small packed
struct), so this header stays a few bytes: for a (1, 64) feature with three sections it is
4+1+1+1+1+2+1+3+4 = 18 bytes.

Canonical: every varint is minimal (no trailing ``0x80 … 0x00`` continuation: ``unpack``
and every section parser refuse one), so each header has exactly one valid byte string.

``unpack`` checks every length and count before it slices or allocates and raises
``CodecError`` on anything wrong; the payload size counted in every bits-per-element
figure is ``len(payload)``, this header included.
"""
from __future__ import annotations

import math
import zlib
from dataclasses import dataclass

import torch

from slicer.codec.errors import CodecError

MAGIC = b"SLCR"
#: The newest version this build writes and reads. Version 2 (ECSQ only: its symbol
#: stream uses entropy mode 3, ``codec/reference/rans.py``) has version 1's layout; a
#: method writes the version its ``wire_version`` names (1 if none) and reads that one
#: or older, so every version 1 payload still decodes.
VERSION = 2
VERSIONS = (1, 2)
MAX_NDIM = 8
MAX_DIM = 1 << 31
#: Largest tensor a payload may declare (elements). 2**28 float32 = 1 GiB decoded.
MAX_ELEMENTS = 1 << 28
#: ``slicer.codec.decode``'s default cap on the declared elements (2**24 float32 = 64 MiB):
#: a caller that expects more passes ``max_elements`` (at most MAX_ELEMENTS) or ``shape``.
DEFAULT_MAX_ELEMENTS = 1 << 24
MAX_SECTIONS = 32

DTYPES: dict[int, torch.dtype] = {0: torch.float32, 1: torch.float16, 2: torch.bfloat16, 3: torch.float64}
DTYPE_CODES: dict[torch.dtype, int] = {v: k for k, v in DTYPES.items()}
CRC_BYTES = 4


@dataclass(frozen=True)
class Frame:
    """A parsed payload: the header fields and the raw sections (views, no copies)."""

    method_id: int
    dtype: torch.dtype
    shape: tuple[int, ...]
    sections: tuple[memoryview, ...]
    version: int = 1

    @property
    def numel(self) -> int:
        return math.prod(self.shape)


def varint(n: int) -> bytes:
    """Unsigned LEB128: the codec's one variable-length integer (≤ 5 bytes where read)."""
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def varint_len(n: int) -> int:
    return max(1, (n.bit_length() + 6) // 7)


def header_nbytes(shape: tuple[int, ...], section_lengths: list[int]) -> int:
    """Bytes of header + checksum for this shape and these section lengths (exact)."""
    return (
        len(MAGIC) + 4 + sum(varint_len(d) for d in shape) + 1
        + sum(varint_len(n) for n in section_lengths) + CRC_BYTES
    )


def pack(method_id: int, dtype: torch.dtype, shape: tuple[int, ...], sections: list[bytes], version: int = 1) -> bytes:
    if dtype not in DTYPE_CODES:
        raise CodecError(f"dtype {dtype} not supported: allowed {sorted(str(d) for d in DTYPE_CODES)}")
    if len(shape) > MAX_NDIM:
        raise CodecError(f"tensor has {len(shape)} dimensions, at most {MAX_NDIM} allowed")
    if math.prod(shape) > MAX_ELEMENTS:
        raise CodecError(f"tensor has {math.prod(shape)} elements, at most {MAX_ELEMENTS} allowed")
    if len(sections) > MAX_SECTIONS:
        raise CodecError(f"{len(sections)} sections, at most {MAX_SECTIONS} allowed")
    head = bytearray(MAGIC)
    if version not in VERSIONS:
        raise CodecError(f"wire version {version} unknown: allowed {VERSIONS}")
    head += bytes((version, method_id, DTYPE_CODES[dtype], len(shape)))
    for d in shape:
        head += varint(int(d))
    head.append(len(sections))
    for s in sections:
        head += varint(len(s))
    body = bytes(head) + b"".join(sections)
    return body + zlib.crc32(body).to_bytes(4, "little")


class Cursor:
    """Bounds-checked reading of a byte buffer: every read checks what is left first and
    raises ``CodecError`` naming ``context`` and the field. Used by the wire header and by
    every section parser that reads varints."""

    __slots__ = ("buf", "context", "end", "pos")

    def __init__(self, buf: memoryview, end: int | None = None, context: str = "payload", pos: int = 0):
        self.buf, self.end, self.context, self.pos = buf, len(buf) if end is None else end, context, pos

    def u8(self, what: str) -> int:
        if self.pos >= self.end:
            raise CodecError(f"{self.context} truncated while reading {what}")
        v = self.buf[self.pos]
        self.pos += 1
        return int(v)

    def varint(self, what: str, limit: int) -> int:
        n = shift = 0
        for _ in range(5):
            b = self.u8(what)
            n |= (b & 0x7F) << shift
            shift += 7
            if not b & 0x80:
                if b == 0 and shift > 7:
                    raise CodecError(f"{self.context}: {what} varint is not minimal (a trailing zero byte)")
                if n > limit:
                    raise CodecError(f"{self.context}: {what} = {n} exceeds the limit {limit}")
                return n
        raise CodecError(f"{self.context}: {what} varint longer than 5 bytes")

    def take(self, nbytes: int, what: str) -> memoryview:
        if nbytes > self.end - self.pos:
            raise CodecError(f"{self.context} truncated: {what} needs {nbytes} bytes, {self.end - self.pos} left")
        v = self.buf[self.pos : self.pos + nbytes]
        self.pos += nbytes
        return v


def unpack(payload: bytes | bytearray | memoryview) -> Frame:
    """Parse and verify a payload. Raises ``CodecError`` on any defect."""
    if not isinstance(payload, (bytes, bytearray, memoryview)):
        raise CodecError(f"payload must be bytes, got {type(payload).__name__}")
    buf = memoryview(payload).cast("B") if isinstance(payload, memoryview) else memoryview(payload)
    if len(buf) < len(MAGIC) + 5 + CRC_BYTES:
        raise CodecError(f"payload of {len(buf)} bytes is shorter than any header")
    if bytes(buf[:4]) != MAGIC:
        raise CodecError(f"bad magic {bytes(buf[:4])!r}: not a slicer codec payload (expected {MAGIC!r})")
    end = len(buf) - CRC_BYTES
    crc = int.from_bytes(buf[end:], "little")
    if zlib.crc32(buf[:end]) != crc:
        raise CodecError("checksum mismatch: payload corrupt or truncated")
    r = Cursor(buf, end, "payload", pos=4)
    version = r.u8("version")
    if version not in VERSIONS:
        raise CodecError(f"payload version {version} not supported (this build reads versions {', '.join(map(str, VERSIONS))})")
    method_id = r.u8("method id")
    dcode = r.u8("dtype")
    if dcode not in DTYPES:
        raise CodecError(f"dtype code {dcode} unknown: allowed {sorted(DTYPES)}")
    ndim = r.u8("ndim")
    if ndim > MAX_NDIM:
        raise CodecError(f"ndim {ndim} exceeds {MAX_NDIM}")
    shape = tuple(r.varint(f"shape[{i}]", MAX_DIM) for i in range(ndim))
    numel = math.prod(shape)
    if numel > MAX_ELEMENTS:
        raise CodecError(f"payload declares {numel} elements, at most {MAX_ELEMENTS} allowed")
    nsec = r.u8("section count")
    if nsec > MAX_SECTIONS:
        raise CodecError(f"section count {nsec} exceeds {MAX_SECTIONS}")
    lengths = [r.varint(f"section[{i}] length", end) for i in range(nsec)]
    if r.pos + sum(lengths) != end:
        raise CodecError(
            f"section lengths add up to {sum(lengths)} bytes but {end - r.pos} bytes follow the header"
        )
    sections = []
    pos = r.pos
    for n in lengths:
        sections.append(buf[pos : pos + n])
        pos += n
    return Frame(method_id=method_id, dtype=DTYPES[dcode], shape=shape, sections=tuple(sections), version=version)
