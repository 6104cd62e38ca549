"""The SLICER encoder on the tensor's own device, byte-identical to ``codec/slicer.py``.

Passes over the input (N elements, read in their own dtype, never copied to float32):

1. ATKF threshold: ``atkf.select``, 4 radix passes over the score bits, plus 4 over the
   tie hashes only where the threshold key is shared by more elements than still fit
   (bfloat16/float16 data; tie-free float32 skips them); the same histograms count the
   kept negatives, which fixes the MS block sizes of each sign (one host read);
2. all MS block cuts of both signs at once: ``atkf.select`` again, over the kept set
   (recomputed from the threshold, nothing gathered), 4 + (0 or 4) passes;
3. ``atkf.emit``: every element's block label, -1 where dropped (one pass; its ``>= 0``
   mask is the bitmap index).

Then, over the k kept entries only: the block ranges (``scatter_reduce``), ABQ's trial
widths (torch, exact integer sums per block), and one fused kernel that quantizes every
entry, finds its place in the block-major value stream without a sort (``ranks.py``)
and ORs its code into the stream's words (any widths 1..16, mixed). Labels and the
Rice/Elias-Fano parts go through the Triton bit packer.

Byte identity rests on the reference's exact arithmetic: ``rint`` from the truncation
and the exact remainder ``y - trunc(y)`` (0 <= y < 2^23: round half to even), kernels launched with
``enable_fp_fusion=False`` (no FMA), block parameters computed by single torch ops
(correctly rounded float32 division), integer sums. What stays on the host: the scalar
decisions (k, n+, block sizes, ABQ's pass/fail per block, the index coding's size
comparison) and the params section, a few dozen bytes. Entropy-coded values (rANS) have
no GPU coder: ``entropy=True`` falls back to the reference.
"""
from __future__ import annotations

import numpy as np
import torch
import triton
import triton.language as tl

from slicer.codec import ratemodel
from slicer.codec.config import CodecConfig
from slicer.codec.errors import CodecError
from slicer.codec.kernels.atkf import NEG, POS, _flat, emit, select, top_state, weights
from slicer.codec.kernels.bitpack import pack_bits
from slicer.codec.kernels.ranks import label_bases, rank_in_block
from slicer.codec.reference import index as _index
from slicer.codec.reference import quant
from slicer.codec.reference.atkf import keep_count
from slicer.codec.reference.bitpack import pack_bits as ref_pack_bits
from slicer.codec.reference.ms import all_block_sizes, block_sizes


def _bytes(t: torch.Tensor) -> bytes:
    return t.cpu().numpy().tobytes()


def _pack(codes: torch.Tensor, bits: int) -> torch.Tensor:
    if bits > 16:  # only Elias-Fano/Rice low parts of astronomically sparse tensors
        return torch.frombuffer(bytearray(ref_pack_bits(codes.cpu().numpy(), bits)), dtype=torch.uint8)
    return pack_bits(codes, bits)


def _pack_bitvector(ones: torch.Tensor, nbits: int) -> torch.Tensor:
    """An ``nbits``-bit LSB-first stream with the given bit indices set."""
    bits = torch.zeros(nbits, dtype=torch.int32, device=ones.device)
    bits[ones] = 1
    return _pack(bits, 1)


@triton.jit
def _quant_pack_kernel(mag_ptr, lab_ptr, k, base_ptr, vstart_ptr, w_ptr, lo_ptr, inv_ptr, words_ptr,
                       MT: tl.constexpr, BLOCK: tl.constexpr):
    """Per kept entry (ascending position): its code ``clamp(rint((v - lo)·inv), 0, 2^q-1)``
    and its place in the block-major value stream, OR-ed into the 32-bit words there."""
    pid = tl.program_id(0)
    offs = pid * BLOCK + tl.arange(0, BLOCK)
    m = offs < k
    lab = tl.load(lab_ptr + offs, mask=m, other=0).to(tl.int32)
    rank = rank_in_block(lab, m, base_ptr, MT)
    w = tl.load(w_ptr + lab, mask=m, other=1).to(tl.int64)
    top = (tl.full((BLOCK,), 1, tl.int64) << w) - 1
    y = (tl.load(mag_ptr + offs, mask=m, other=0.0) - tl.load(lo_ptr + lab, mask=m, other=0.0)) \
        * tl.load(inv_ptr + lab, mask=m, other=0.0)  # 0 <= y <= ~2^16: subtract, then multiply
    # rint, half to even, from exact steps: y >= 0, so the cast truncates, and y - trunc(y)
    # is exact below 2^23 (no constant-folding or contraction can change it)
    t = y.to(tl.int64)
    frac = y - t.to(tl.float32)
    code = tl.minimum(t + ((frac > 0.5) | ((frac == 0.5) & ((t & 1) == 1))).to(tl.int64), top)
    bit = tl.load(vstart_ptr + lab, mask=m, other=0) + rank * w
    word = bit >> 5
    v = code << (bit & 31)  # up to 47 bits: at most two words
    tl.atomic_or(words_ptr + word, (v & 0xFFFFFFFF).to(tl.uint32).to(tl.int32, bitcast=True), mask=m & (code != 0))
    tl.atomic_or(words_ptr + word + 1, (v >> 32).to(tl.uint32).to(tl.int32, bitcast=True), mask=m & ((v >> 32) != 0))


def _codes(m: torch.Tensor, lab: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor, widths: torch.Tensor) -> torch.Tensor:
    """Codes in torch (the ABQ trials): one float32 op at a time, like the reference."""
    levels = ((1 << widths) - 1).to(torch.float32)
    inv = _inv(lo, hi, widths)
    c = torch.round((m - lo[lab]) * inv[lab])  # subtract, multiply: separate float32 ops
    return torch.minimum(torch.clamp(c, min=0), levels[lab]).long()


def _inv(lo: torch.Tensor, hi: torch.Tensor, widths: torch.Tensor) -> torch.Tensor:
    """``quant.inv_step`` on the device (torch's float32 division is correctly rounded)."""
    d = hi - lo
    inv = ((1 << widths) - 1).to(torch.float32) / d
    return torch.where(torch.isfinite(inv) & (d > 0), inv, torch.zeros_like(inv))


def _cuts(k: int, n_pos: int, blocks: tuple[int, int]) -> tuple[list[int], list[int], list[int]]:
    """The MS cuts (``ms.split_blocks``): per sign, the block sizes' running sums inside
    (0, n); a sum <= 0 (an empty leading block) moves every entry of the sign one block on.
    Returns the cut ranks, their signs and the base label of each sign."""
    ranks, signs, base = [], [], [0, blocks[0]]
    for s, n, m in ((POS, n_pos, blocks[0]), (NEG, k - n_pos, blocks[1])):
        for c in np.cumsum(block_sizes(n, m))[:-1].tolist():
            if c <= 0:
                base[s] += 1
            elif c < n:
                ranks.append(int(c))
                signs.append(s)
    return ranks, signs, base


def encode_sections(x: torch.Tensor, cfg: CodecConfig, block: int = 1024) -> list[bytes]:
    """The four SLICER sections of ``x``, equal to ``slicer.codec.slicer.SLICER.encode``."""
    if cfg.entropy:
        from slicer.codec.slicer import SLICER

        return SLICER.encode(x, cfg)
    if cfg.rotate:
        raise CodecError("CodecConfig.rotate=True is not supported by method 'slicer' (use 'ecsq')")
    shape = tuple(int(d) for d in x.shape)
    flat = _flat(x.detach())  # (N,) in its own dtype (float64 rounded to float32)
    numel = flat.numel()
    dev = flat.device
    blocks = cfg.blocks
    mtot = blocks[0] + blocks[1]
    if cfg.fixed_bits:
        widths_np = quant.fixed_widths(cfg.bits, blocks)
    k = keep_count(numel, cfg.sparsity)
    top = top_state(flat, k, cfg.asymmetry, cfg.seed)  # 8 passes (4 when no ties at the threshold)
    n_pos = k - int(top[0, 4])  # the one host read of the selection
    ranks, signs, base = _cuts(k, n_pos, blocks)
    cuts = select(flat, ranks, signs, (1.0, 1.0), cfg.seed, top, weights(cfg.asymmetry), block) if ranks else None
    lab_all = emit(flat, cfg.asymmetry, cfg.seed, top, cuts, signs, base, block)  # (N,) int8, -1 = dropped
    kept = lab_all >= 0
    pos = torch.nonzero(kept).reshape(-1)  # (k,) ascending
    labels = lab_all[pos].long()  # (k,)
    mags = flat[pos].float().abs()  # (k,) float32
    sizes = all_block_sizes(k, n_pos, blocks)  # (Mtot,) host
    lo = torch.zeros(mtot, dtype=torch.float32, device=dev).scatter_reduce(0, labels, mags, "amin", include_self=False)
    hi = torch.zeros(mtot, dtype=torch.float32, device=dev).scatter_reduce(0, labels, mags, "amax", include_self=False)
    q_bit = int(cfg.bits) if not cfg.fixed_bits else 0
    if not cfg.fixed_bits:
        widths_np = np.full(mtot, q_bit, dtype=np.int64)
        if q_bit > 1 and k:
            # ABQ (quant.choose_widths): greedy per block, exact integer DS sums
            w0 = torch.full((mtot,), q_bit, dtype=torch.int64, device=dev)
            t0 = _codes(mags, labels, lo, hi, w0)
            allowed = np.floor(float(cfg.delta) * sizes.astype(np.float64))
            active = sizes > 0
            for q in range(q_bit - 1, 0, -1):
                if not active.any():
                    break
                diff = ((t0 >> (q_bit - q)) - _codes(mags, labels, lo, hi, torch.full_like(w0, q))).abs()
                ds = torch.zeros(mtot, dtype=torch.int64, device=dev).scatter_add_(0, labels, diff).cpu().numpy()
                passed = active & (ds <= allowed)
                widths_np[passed] = q
                active = passed
    w_dev = torch.as_tensor(widths_np, dtype=torch.int64, device=dev)
    cid, idx_sec, lab_sec = _index_sections(cfg.index, shape, pos, kept, labels, mtot, numel)
    values = _values(mags, labels, sizes, widths_np, w_dev, lo, hi, block)
    nb = ratemodel.count_nbytes(numel)
    params = b"".join([
        bytes((cid,)),
        k.to_bytes(nb, "little"), n_pos.to_bytes(nb, "little"),
        bytes(blocks),
        ref_pack_bits(widths_np - 1, 4),
        torch.stack([lo, hi], dim=1).cpu().numpy().astype("<f4").tobytes(),
    ])
    return [params, idx_sec, lab_sec, values]


def _values(mags, labels, sizes, widths_np, w_dev, lo, hi, block: int) -> bytes:
    """The block-major value stream, quantized and packed by one kernel (any widths)."""
    k = mags.numel()
    vbits = sizes.astype(np.int64) * widths_np
    total = int(vbits.sum())
    if k == 0 or total == 0:
        return b""
    dev = mags.device
    lab32 = labels.to(torch.int32)
    base, _, mt = label_bases(lab32, len(sizes), block)
    vstart = torch.as_tensor(np.cumsum(vbits) - vbits, dtype=torch.int64, device=dev)
    words = torch.zeros(total // 32 + 2, dtype=torch.int32, device=dev)
    _quant_pack_kernel[(triton.cdiv(k, block),)](mags, lab32, k, base, vstart, w_dev.to(torch.int32), lo,
                                                 _inv(lo, hi, w_dev), words, MT=mt, BLOCK=block, enable_fp_fusion=False)
    return _bytes(words.view(torch.uint8)[: (total + 7) // 8])


def _index_sections(coding: str, shape, pos: torch.Tensor, kept: torch.Tensor, labels: torch.Tensor, mtot: int,
                    numel: int):
    k = pos.numel()
    rice_r, rice_size, gaps = 0, 1, None
    if k and coding in ("auto", "rice"):  # the gaps only matter where Rice may be chosen
        gaps = torch.diff(pos, prepend=pos.new_tensor([-1])) - 1
        cands = _index.rice_candidates(numel, k)
        sums = dict(zip(cands, torch.stack([(gaps >> r).sum() for r in cands]).tolist()))  # one host read
        rice_r, rice_size = _index.rice_pick(k, numel, sums.__getitem__)
    if coding == "auto":
        coding = _index.smallest(shape, k, mtot, rice_size)
    cid = _index.CODING_IDS[coding]
    if coding == "csr":
        rows, cols = _index.view_2d(shape)
        parts = []
        for b in range(mtot):
            p = pos[labels == b]
            r, c = p // max(cols, 1), p % max(cols, 1)
            ptr = torch.zeros(rows + 1, dtype=torch.int64, device=pos.device)
            ptr[1:] = torch.cumsum(torch.bincount(r, minlength=rows), 0)
            parts.append(c.cpu().numpy().astype("<u2" if cols <= 65536 else "<u4").tobytes())
            parts.append(ptr.cpu().numpy().astype("<u4").tobytes())
        return cid, b"".join(parts), b""
    lab_sec = _bytes(_pack(labels, _index.label_bits(mtot))) if k else b""
    if coding == "bitmap":
        return cid, _bytes(_pack(kept.to(torch.int32), 1)), lab_sec  # the kept mask is the bitmap
    if coding == "ef":
        if k == 0:
            return cid, b"", lab_sec
        low = _index._ef_low_bits(numel, k)
        nbits = k + ((numel - 1) >> low) + 1
        upper = _pack_bitvector((pos >> low) + torch.arange(k, device=pos.device), nbits)
        lows = _bytes(_pack(pos & ((1 << low) - 1), low)) if low else b""
        return cid, lows + _bytes(upper), lab_sec
    # rice
    if k == 0:
        return cid, bytes((rice_r,)), lab_sec
    ones = torch.cumsum((gaps >> rice_r) + 1, 0) - 1
    unary = _pack_bitvector(ones, int(ones[-1].item()) + 1)
    lows = _bytes(_pack(gaps & ((1 << rice_r) - 1), rice_r)) if rice_r else b""
    return cid, bytes((rice_r,)) + lows + _bytes(unary), lab_sec
