"""Bit packing in Triton, byte-identical to ``slicer.codec.reference.bitpack``.

The stream layout (LSB first, codes back to back, no per-group padding) is the frozen
wire layout. Each program computes ``BLOCK`` output 32-bit words; word ``w`` holds stream
bits ``[32w, 32w+32)``, which come from at most ``32 // b + 2`` codes, so every word is
built from a fixed, small gather: no atomics, and one pass over the codes.
Stored little-endian, the words are the reference's bytes (CUDA and x86 are little-endian).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _pack_kernel(codes_ptr, out_ptr, n_codes, n_words, BITS: tl.constexpr, BLOCK: tl.constexpr):
    pid = tl.program_id(0)
    w = pid * BLOCK + tl.arange(0, BLOCK)  # (BLOCK,) output word index
    wmask = w < n_words
    bit0 = w.to(tl.int64) * 32
    first = bit0 // BITS  # first code overlapping the word
    acc = tl.zeros((BLOCK,), dtype=tl.int64)
    MAXC: tl.constexpr = 32 // BITS + 2
    for j in tl.static_range(MAXC):
        idx = first + j
        m = wmask & (idx < n_codes)
        c = tl.load(codes_ptr + idx, mask=m, other=0).to(tl.int64) & ((1 << BITS) - 1)
        shift = idx * BITS - bit0  # where the code starts relative to the word
        part = tl.where(shift >= 0, c << tl.maximum(shift, 0), c >> tl.maximum(-shift, 0))
        part = tl.where(m & (shift < 32) & (shift > -BITS), part, 0)
        acc = acc | part
    acc = acc & 0xFFFFFFFF
    tl.store(out_ptr + w, acc.to(tl.uint32).to(tl.int32, bitcast=True), mask=wmask)


@triton.jit
def _unpack_kernel(words_ptr, out_ptr, n_codes, BITS: tl.constexpr, BLOCK: tl.constexpr):
    pid = tl.program_id(0)
    i = pid * BLOCK + tl.arange(0, BLOCK)
    m = i < n_codes
    t = i.to(tl.int64) * BITS
    wi = t >> 5
    off = t & 31
    w0 = tl.load(words_ptr + wi, mask=m, other=0).to(tl.uint32, bitcast=True).to(tl.int64)
    w1 = tl.load(words_ptr + wi + 1, mask=m, other=0).to(tl.uint32, bitcast=True).to(tl.int64)
    v = ((w0 | (w1 << 32)) >> off) & ((1 << BITS) - 1)
    tl.store(out_ptr + i, v.to(tl.int32), mask=m)


def pack_bits(codes: torch.Tensor, bits: int, block: int = 128) -> torch.Tensor:
    """``codes`` (n,) integer tensor on the kernel's device -> uint8 tensor of
    ``ceil(n*bits/8)`` bytes, equal to ``reference.bitpack.pack_bits``."""
    assert 1 <= bits <= 16, bits
    codes = codes.reshape(-1).to(torch.int32).contiguous()
    n = codes.numel()
    nbytes = (n * bits + 7) // 8
    n_words = (nbytes + 3) // 4
    out = torch.empty(max(1, n_words), dtype=torch.int32, device=codes.device)
    if n_words:
        _pack_kernel[(triton.cdiv(n_words, block),)](codes, out, n, n_words, BITS=bits, BLOCK=block)
    return out.view(torch.uint8)[:nbytes]


def unpack_bits(buf: torch.Tensor, n: int, bits: int, block: int = 128) -> torch.Tensor:
    """uint8 tensor of ``ceil(n*bits/8)`` bytes -> (n,) int32 codes (widths up to 31: a
    code is read from a 64-bit window starting in its first 32-bit word)."""
    assert 1 <= bits <= 31, bits
    nbytes = (n * bits + 7) // 8
    assert buf.numel() == nbytes, (buf.numel(), nbytes)
    n_words = (nbytes + 3) // 4 + 1  # one spare word: a code may straddle into it
    words = torch.zeros(n_words * 4, dtype=torch.uint8, device=buf.device)
    words[:nbytes] = buf
    out = torch.empty(n, dtype=torch.int32, device=buf.device)
    if n:
        _unpack_kernel[(triton.cdiv(n, block),)](words.view(torch.int32), out, n, BITS=bits, BLOCK=block)
    return out
