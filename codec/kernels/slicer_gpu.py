"""The SLICER encoder on the tensor's own device: Triton kernels for the passes over the
input (radix-select ATKF, the MS block cuts, bit packing) and on-device torch ops for the
small glue (block ranges, AIQ/ABQ arithmetic, prefix sums), giving the reference's bytes.

Byte identity with ``codec/slicer.py`` rests on the reference's exact arithmetic: every
float step is one IEEE float32 operation in eager torch (each op its own kernel, so no
fused multiply-add), ``torch.round`` rounds half to even like ``np.rint``, integer sums
are exact. What stays on the host: the scalar decisions (k, block sizes, ABQ's pass/fail
per block, the index coding's size comparison) and the assembly of the params section, a
few dozen bytes. Entropy-coded values (rANS) have no GPU coder yet: ``entropy=True``
falls back to the reference.
"""
from __future__ import annotations

import numpy as np
import torch

from codec import ratemodel
from codec.config import CodecConfig
from codec.errors import CodecError
from codec.kernels.atkf import topk_mask
from codec.kernels.bitpack import pack_bits
from codec.reference import index as _index
from codec.reference import quant
from codec.reference.atkf import keep_count
from codec.reference.bitpack import pack_bits as ref_pack_bits
from codec.reference.ms import all_block_sizes, block_sizes


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


def _labels(mags: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor, blocks: tuple[int, int], seed: int) -> torch.Tensor:
    """MS block labels (``ms.split_blocks``): per sign, the number of block cuts an entry
    lies beyond in the order (magnitude desc, tie hash of its flat position asc)."""
    labels = torch.zeros_like(pos)
    for sel, m, offset in ((~neg, blocks[0], 0), (neg, blocks[1], blocks[0])):
        idx = torch.nonzero(sel).reshape(-1)
        n = idx.numel()
        lab = torch.full((n,), offset, dtype=torch.int64, device=pos.device)
        for c in np.cumsum(block_sizes(n, m))[:-1].tolist():
            if c <= 0:
                lab += 1
            elif c < n:
                lab += (~topk_mask(mags[idx], c, 0.0, seed, index=pos[idx])).long()
        labels[idx] = lab
    return labels


def _codes(m: torch.Tensor, lab: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor, widths: torch.Tensor) -> torch.Tensor:
    d = hi - lo  # float32
    levels = ((1 << widths) - 1).to(torch.float32)
    inv = levels / d
    inv = torch.where(torch.isfinite(inv) & (d > 0), inv, torch.zeros_like(inv))
    c = torch.round((m - lo[lab]) * inv[lab])  # subtract, multiply: separate float32 ops
    return torch.minimum(torch.clamp(c, min=0), levels[lab]).long()


def encode_sections(x: torch.Tensor, cfg: CodecConfig) -> list[bytes]:
    """The four SLICER sections of ``x``, equal to ``codec.slicer.SLICER.encode``."""
    if cfg.entropy:
        from codec.slicer import SLICER

        return SLICER.encode(x, cfg)
    if cfg.rotate:
        raise CodecError("CodecConfig.rotate=True is not supported by method 'slicer' (use 'ecsq')")
    shape = tuple(int(d) for d in x.shape)
    xf = x.detach().float().reshape(-1).contiguous()  # (N,) float32 on the device
    numel = xf.numel()
    dev = xf.device
    blocks = cfg.blocks
    mtot = blocks[0] + blocks[1]
    if cfg.fixed_bits:
        widths_np = quant.fixed_widths(cfg.bits, blocks)
    k = keep_count(numel, cfg.sparsity)
    pos = torch.nonzero(topk_mask(xf, k, cfg.asymmetry, cfg.seed)).reshape(-1)  # (k,) ascending
    vals = xf[pos]
    neg = vals < 0
    mags = vals.abs()
    n_pos = int(k - int(neg.sum()))
    labels = _labels(mags, pos, neg, blocks, cfg.seed)  # (k,)
    sizes = all_block_sizes(k, n_pos, blocks)  # (Mtot,) host
    lab_sorted, order = torch.sort(labels, stable=True)  # block-major, ascending position within
    m_sorted = mags[order]
    lo = torch.zeros(mtot, dtype=torch.float32, device=dev).scatter_reduce(0, lab_sorted, m_sorted, "amin", include_self=False)
    hi = torch.zeros(mtot, dtype=torch.float32, device=dev).scatter_reduce(0, lab_sorted, m_sorted, "amax", include_self=False)
    q_bit = int(cfg.bits) if not cfg.fixed_bits else 0
    w_dev = torch.as_tensor(widths_np if cfg.fixed_bits else np.full(mtot, q_bit), dtype=torch.int64, device=dev)
    codes = _codes(m_sorted, lab_sorted, lo, hi, w_dev)
    if not cfg.fixed_bits and q_bit > 1 and k:
        # ABQ (quant.choose_widths): greedy per block, exact integer DS sums
        allowed = np.floor(float(cfg.delta) * sizes.astype(np.float64))
        active = sizes > 0
        widths_np = np.full(mtot, q_bit, dtype=np.int64)
        for q in range(q_bit - 1, 0, -1):
            if not active.any():
                break
            tq = _codes(m_sorted, lab_sorted, lo, hi, torch.full_like(w_dev, q))
            diff = ((codes >> (q_bit - q)) - tq).abs()
            ds = torch.zeros(mtot, dtype=torch.int64, device=dev).scatter_add_(0, lab_sorted, diff).cpu().numpy()
            passed = active & (ds <= allowed)
            widths_np[passed] = q
            active = passed
        if np.any(widths_np != q_bit):
            w_dev = torch.as_tensor(widths_np, device=dev)
            codes = _codes(m_sorted, lab_sorted, lo, hi, w_dev)
    elif not cfg.fixed_bits:
        widths_np = np.full(mtot, q_bit, dtype=np.int64)
    cid, idx_sec, lab_sec = _index_sections(cfg.index, shape, pos, labels, mtot, numel)
    values = _values(codes, lab_sorted, sizes, widths_np, w_dev)
    nb = ratemodel.count_nbytes(numel)
    params = b"".join([
        bytes((cid,)),
        k.to_bytes(nb, "little"), n_pos.to_bytes(nb, "little"),
        bytes(blocks),
        ref_pack_bits(widths_np - 1, 4),
        torch.stack([lo, hi], dim=1).cpu().numpy().astype("<f4").tobytes(),
    ])
    return [params, idx_sec, lab_sec, values]


def _values(codes, lab_sorted, sizes, widths_np, w_dev) -> bytes:
    used = np.flatnonzero(sizes > 0)
    if used.size == 0:
        return b""
    if len(set(widths_np[used].tolist())) == 1:
        return _bytes(_pack(codes, int(widths_np[used[0]])))
    # variable widths: code i at bit offset Σ_{j<i} w_j, written bit by bit
    w_e = w_dev[lab_sorted]  # (k,)
    start = torch.cumsum(w_e, 0) - w_e
    total = int((w_e.sum()).item())
    bits = torch.zeros(total, dtype=torch.int32, device=codes.device)
    for j in range(int(widths_np.max())):
        sel = w_e > j
        bits[start[sel] + j] = ((codes[sel] >> j) & 1).to(torch.int32)
    return _bytes(_pack(bits, 1))


def _index_sections(coding: str, shape, pos: torch.Tensor, labels: torch.Tensor, mtot: int, numel: int):
    k = pos.numel()
    gaps = torch.diff(pos, prepend=pos.new_tensor([-1])) - 1 if k else pos
    rice_r, rice_size = 0, 1
    if k:
        cands = _index.rice_candidates(numel, k)
        sums = {r: int((gaps >> r).sum().item()) for r in cands}
        rice_r, rice_size = min(((r, _index._rice_size(k, r, sums[r])) for r in cands), key=lambda t: (t[1], t[0]))
    if coding == "auto":
        lab_b = _index.labels_nbytes(k, mtot)
        sizes = {
            "csr": _index.csr_nbytes(shape, k, mtot),
            "bitmap": _index.bitmap_nbytes(numel) + lab_b,
            "rice": rice_size + lab_b,
            "ef": _index.ef_nbytes(numel, k) + lab_b,
        }
        coding = min(_index.CODING_IDS, key=lambda c: (sizes[c], _index.CODING_IDS[c]))
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
        return cid, _bytes(_pack_bitvector(pos, numel)), lab_sec
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
