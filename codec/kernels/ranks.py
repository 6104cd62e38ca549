"""Block-major order without a sort: an entry's place in its block, from label counts.

The value stream lists each block's codes in ascending position. Entries visited in
ascending position (or already block-major) therefore sit at ``rank`` = the number of
earlier entries with the same label. ``count_labels`` histograms the labels of every
program's slice (``tl.histogram``) and returns, per program and label, how many entries
of that label come before the slice; ``rank_in_block`` adds the count among the earlier
entries of the slice (a one-hot cumulative sum inside the program). Encoder and decoder
share both, so their bit offsets agree by construction.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _label_count_kernel(lab_ptr, k, cnt_ptr, MT: tl.constexpr, BLOCK: tl.constexpr):
    pid = tl.program_id(0)
    offs = pid * BLOCK + tl.arange(0, BLOCK)
    m = offs < k
    lab = tl.load(lab_ptr + offs, mask=m, other=0).to(tl.int32)
    tl.store(cnt_ptr + pid * MT + tl.arange(0, MT), tl.histogram(lab, MT, mask=m))


@triton.jit
def rank_in_block(lab, m, base_ptr, MT: tl.constexpr):
    """Rank of every entry of this program's slice within its block (int64)."""
    pid = tl.program_id(0)
    onehot = (lab[:, None] == tl.arange(0, MT)[None, :]).to(tl.int32)  # (BLOCK, MT)
    before = tl.sum(tl.cumsum(onehot, axis=0) * onehot, axis=1) - 1
    return tl.load(base_ptr + pid * MT + lab, mask=m, other=0) + before


def label_bases(lab: torch.Tensor, nblocks: int, block: int) -> tuple[torch.Tensor, torch.Tensor, int]:
    """For labels (k,) in [0, nblocks): the per-program bases (programs, MT) int64, the
    total count of every label (MT,) int64 and MT (the padded label count, a power of 2)."""
    k = lab.numel()
    mt = max(2, triton.next_power_of_2(nblocks))
    grid = (triton.cdiv(k, block),)
    counts = torch.empty(grid[0], mt, dtype=torch.int32, device=lab.device)
    _label_count_kernel[grid](lab, k, counts, MT=mt, BLOCK=block)
    base = (torch.cumsum(counts, 0, dtype=torch.int64) - counts).contiguous()
    return base, counts.sum(0, dtype=torch.int64), mt
