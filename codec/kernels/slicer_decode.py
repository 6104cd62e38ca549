"""The SLICER decoder on the target device: the payload's bytes are copied to the device
once, and the dense tensor is written there, never on the host.

Steps (``codec/slicer.py`` and ``codec/reference/`` are the spec):

1. params section (a few dozen bytes) parsed and validated on the host;
2. the positions: bitmap, Rice or Elias-Fano bit streams unpacked on the device
   (``torch.nonzero`` compacts the set bits); the labels with the Triton bit unpacker;
   CSR (chosen only when very few entries are kept) is decoded on the host;
3. one Triton pass counts the labels per program (``tl.histogram``); a prefix sum over
   programs gives every program the rank its entries of each block start from;
4. one fused Triton kernel, per kept entry: its rank within its block (a one-hot cumsum
   inside the program), the bit offset of its code in the block-major value stream, the
   unpacked code, ``lo + c·o`` (no FMA; the top code gives ``hi``), the sign of its block,
   and the store at its position in the output's dtype.

Validation: every length and padding check reads host bytes; the checks on decoded
content (set-bit counts, label counts, gap sizes, increasing positions) are device
reductions read back together once. Whenever one fails, the payload is handed to the
reference decoder, which raises the precise ``CodecError``: both decoders accept and
reject the same payloads. Entropy-coded values (rANS) have no GPU decoder: such payloads
are decoded by the reference and copied to the device.
"""
from __future__ import annotations

import numpy as np
import torch
import triton
import triton.language as tl

from slicer.codec.kernels.bitpack import unpack_bits
from slicer.codec.kernels.ranks import label_bases, rank_in_block
from slicer.codec.reference import index as _index
from slicer.codec.reference import quant
from slicer.codec.reference.bitpack import packed_nbytes
from slicer.codec.slicer import SLICER
from slicer.codec.wire import Frame

_KERNEL_DTYPES = (torch.float32, torch.float16, torch.bfloat16)  # written by the kernel; float64 via float32


@triton.jit
def _dequant_scatter_kernel(pos_ptr, lab_ptr, k, base_ptr, vstart_ptr, w_ptr, lo_ptr, hi_ptr, o_ptr,
                            words_ptr, out_ptr, m_pos, MT: tl.constexpr, OUT_BF16: tl.constexpr,
                            BLOCK: tl.constexpr):
    pid = tl.program_id(0)
    offs = pid * BLOCK + tl.arange(0, BLOCK)
    m = offs < k
    lab = tl.load(lab_ptr + offs, mask=m, other=0)  # (BLOCK,) int32
    pos = tl.load(pos_ptr + offs, mask=m, other=0)  # (BLOCK,) int64
    rank = rank_in_block(lab, m, base_ptr, MT)
    w = tl.load(w_ptr + lab, mask=m, other=1).to(tl.int64)
    bit = tl.load(vstart_ptr + lab, mask=m, other=0) + rank * w  # int64 offset in the value stream
    wi = bit >> 5
    w0 = tl.load(words_ptr + wi, mask=m, other=0).to(tl.uint32, bitcast=True).to(tl.int64)
    w1 = tl.load(words_ptr + wi + 1, mask=m, other=0).to(tl.uint32, bitcast=True).to(tl.int64)
    top = (tl.full((BLOCK,), 1, tl.int64) << w) - 1
    code = ((w0 | (w1 << 32)) >> (bit & 31)) & top
    lo = tl.load(lo_ptr + lab, mask=m, other=0.0)
    o = tl.load(o_ptr + lab, mask=m, other=0.0)
    v = lo + code.to(tl.float32) * o  # launched with enable_fp_fusion=False: multiply, then add
    v = tl.where(code == top, tl.load(hi_ptr + lab, mask=m, other=0.0), v)
    v = tl.where(lab >= m_pos, -v, v)
    if OUT_BF16:  # out_ptr is int16: round to nearest even by hand (the interpreter's cast does not)
        b = v.to(tl.int32, bitcast=True)
        b = (b + 0x7FFF + ((b >> 16) & 1)) >> 16
        tl.store(out_ptr + pos, b.to(tl.int16), mask=m)
    else:  # float32, or float16 (rounded to nearest even by the cast)
        tl.store(out_ptr + pos, v.to(out_ptr.dtype.element_ty), mask=m)


def _packed_ok(buf, n: int, bits: int) -> bool:
    """Exactly ``packed_nbytes(n, bits)`` bytes with zero padding (host bytes)."""
    if len(buf) != packed_nbytes(n, bits):
        return False
    total = n * bits
    return not (total % 8 and buf[-1] >> (total % 8))


def _set_bits(buf: torch.Tensor, nbits: int) -> torch.Tensor:
    """Indices (int64, ascending) of the set bits among the first ``nbits`` of an LSB-first
    byte stream on the device."""
    bits = (buf[:, None] >> torch.arange(8, device=buf.device, dtype=torch.uint8)) & 1  # (nbytes, 8)
    return torch.nonzero(bits.reshape(-1)[:nbits]).reshape(-1)


def _unpack(buf: torch.Tensor, n: int, bits: int) -> torch.Tensor:
    return unpack_bits(buf, n, bits).to(torch.int64) if bits else torch.zeros(n, dtype=torch.int64, device=buf.device)


def _positions(coding_id: int, idx: torch.Tensor, idx_host, numel: int, k: int, checks: list):
    """Ascending flat positions (int64, on the device) of a bitmap / Rice / EF index, or
    None where a host-side check already fails. Device-side checks go to ``checks``."""
    dev = idx.device
    if coding_id == 1:  # bitmap
        if not _packed_ok(idx_host, numel, 1):
            return None
        pos = _set_bits(idx, numel)
        return pos if pos.numel() == k else None
    if coding_id == 3:  # Elias-Fano
        if k == 0:
            return None if len(idx_host) else _no_positions(dev)
        low = _index._ef_low_bits(numel, k)
        nlow = packed_nbytes(k, low)
        nup = k + ((numel - 1) >> low) + 1
        if len(idx_host) != _index.ef_nbytes(numel, k) or not (
            (not low or _packed_ok(idx_host[:nlow], k, low)) and _packed_ok(idx_host[nlow:], nup, 1)
        ):
            return None
        ones = _set_bits(idx[nlow:], nup)
        if ones.numel() != k:
            return None
        pos = ((ones - torch.arange(k, device=dev)) << low) | _unpack(idx[:nlow], k, low)
        if k > 1:
            checks.append((torch.diff(pos) > 0).all())
        checks.append(pos[-1] < numel)
        return pos
    # Rice
    if len(idx_host) < 1:
        return None
    r = idx_host[0]
    if r not in _index.rice_candidates(numel, k):
        return None
    if k == 0:
        return None if len(idx_host) != 1 else _no_positions(dev)
    nlow = packed_nbytes(k, r)
    if len(idx_host) < 1 + nlow + 1 or idx_host[-1] == 0 or (r and not _packed_ok(idx_host[1 : 1 + nlow], k, r)):
        return None
    unary = idx[1 + nlow :]
    ones = _set_bits(unary, unary.numel() * 8)
    if ones.numel() != k:
        return None
    quot = torch.diff(ones, prepend=ones.new_tensor([-1])) - 1
    g = (quot << r) | _unpack(idx[1 : 1 + nlow], k, r)
    checks += [quot.max() <= (numel >> r), g.max() < numel]
    pos = torch.cumsum(g + 1, 0) - 1
    checks.append(pos[-1] < numel)
    return pos


def _no_positions(dev) -> torch.Tensor:
    return torch.zeros(0, dtype=torch.int64, device=dev)


def _device_bytes(buf, dev) -> torch.Tensor:
    """Host bytes -> uint8 tensor on ``dev``, padded with 8 zero bytes (a 64-bit read of
    the last code stays inside) and 4-byte aligned (readable as int32 words)."""
    n = len(buf)
    host = torch.zeros((n + 11) // 4 * 4, dtype=torch.uint8)
    if n:
        host[:n] = torch.frombuffer(bytearray(buf), dtype=torch.uint8)
    return host.to(dev)


def decode(frame: Frame, device: torch.device | str, block: int = 128) -> torch.Tensor:
    """Decode a SLICER frame into a tensor of its shape and dtype on ``device``, equal to
    the reference decoder's result (bit for bit, signed zeros included)."""
    dev = torch.device(device)
    h = SLICER.parse_params(frame)  # raises CodecError on a bad params section
    if h.entropy:
        return SLICER.decode(frame).to(frame.dtype).to(dev)
    y = _decode_values(frame, h, dev, block)
    if y is None:  # a check failed: the reference names the defect (or, if it finds none, decodes)
        return SLICER.decode(frame).to(frame.dtype).to(dev)
    return y


def _decode_values(frame: Frame, h, dev: torch.device, block: int) -> torch.Tensor | None:
    _, idx_host, lab_host, val_host = frame.sections
    numel, k, mtot = frame.numel, h.k, len(h.sizes)
    checks: list[torch.Tensor] = []
    # the value stream (host checks: length, padding)
    vbits = (h.sizes * h.widths).astype(np.int64)
    tail = int(vbits.sum()) % 8
    if len(val_host) != quant.stream_nbytes(h.sizes, h.widths) or (tail and val_host[-1] >> tail):
        return None
    if h.coding_id == 0:  # CSR: block-major positions from the host decoder
        if len(lab_host):
            return None
        parts = _index.csr_decode(idx_host, frame.shape, h.sizes)
        pos = torch.from_numpy(np.concatenate(parts) if parts else np.zeros(0, np.int64)).to(dev)
        lab = torch.repeat_interleave(torch.arange(mtot, dtype=torch.int32), torch.from_numpy(h.sizes)).to(dev)
    else:
        if not _packed_ok(lab_host, k, _index.label_bits(mtot)):
            return None
        pos = _positions(h.coding_id, _device_bytes(idx_host, dev)[: len(idx_host)], idx_host, numel, k, checks)
        if pos is None:
            return None
        lab = _unpack(_device_bytes(lab_host, dev)[: len(lab_host)], k, _index.label_bits(mtot)).to(torch.int32)
    out_dtype = frame.dtype if frame.dtype in _KERNEL_DTYPES else torch.float32
    out = torch.zeros(numel, dtype=out_dtype, device=dev)
    if k:
        base, total, mt = label_bases(lab, mtot, block)  # mt = 2**label_bits: every stored label is < mt
        grid = (triton.cdiv(k, block),)
        sizes = torch.zeros(mt, dtype=torch.int64)
        sizes[:mtot] = torch.from_numpy(h.sizes)
        checks.append((total == sizes.to(dev)).all())
        vstart = np.cumsum(vbits) - vbits
        o = quant.step(h.lo, h.hi, h.widths)
        params = [torch.from_numpy(np.ascontiguousarray(a)).to(dev) for a in (vstart, h.widths.astype(np.int32), h.lo, h.hi, o)]
        words = _device_bytes(val_host, dev).view(torch.int32)
        if not bool(torch.stack(checks).all()):  # the one read-back of the device checks
            return None
        bf16 = out_dtype == torch.bfloat16
        _dequant_scatter_kernel[grid](pos, lab, k, base, *params, words, out.view(torch.int16) if bf16 else out,
                                      h.blocks[0], MT=mt, OUT_BF16=bf16, BLOCK=block, enable_fp_fusion=False)
    elif checks and not bool(torch.stack(checks).all()):
        return None
    return out.to(frame.dtype).reshape(frame.shape)
