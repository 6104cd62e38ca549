"""Triton ATKF radix select keeps exactly the reference's k entries, ties included."""
from __future__ import annotations

import os

import numpy as np
import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")  # chosen at decoration: before import
pytest.importorskip("triton")


def _spec_mask(x: torch.Tensor, k: int, lam: float, seed: int) -> np.ndarray:
    """The total order of the ATKF spec, by a full sort (test oracle only)."""
    from slicer.codec.kernels.atkf import weights as _weights

    f = x.reshape(-1).float()
    wp, wn = _weights(lam)
    s = (f.abs() * torch.where(f > 0, torch.tensor(wp), torch.tensor(wn))).numpy().astype(np.float64)
    i = np.arange(f.numel(), dtype=np.uint64)
    h = (i * np.uint64(0x9E3779B1) + np.uint64(seed)) & np.uint64(0xFFFFFFFF)
    for sh, mul in ((16, 0x85EBCA6B), (13, 0xC2B2AE35)):
        h ^= h >> np.uint64(sh)
        h = (h * np.uint64(mul)) & np.uint64(0xFFFFFFFF)
    h ^= h >> np.uint64(16)
    m = np.zeros(f.numel(), bool)
    m[np.lexsort((h, -s))[:k]] = True
    return m


@pytest.mark.parametrize(
    "shape,sparsity,lam,dtype",
    [((3, 257), 0.75, 0.0, torch.float32), ((17, 64), 0.5, 0.3, torch.float16),
     ((1, 100), 0.9, 0.0, torch.bfloat16), ((2, 3, 5, 7), 0.25, 0.6, torch.float32)],
)
def test_topk_mask_matches_spec_with_ties(shape, sparsity, lam, dtype):
    from slicer.codec.kernels.atkf import topk_mask

    dev = "cuda" if torch.cuda.is_available() else "cpu"
    g = torch.Generator().manual_seed(0)
    x = (torch.round(torch.randn(shape, generator=g) * 4) / 4).to(dtype)  # many exact ties
    k = int((1 - sparsity) * x.numel())
    for seed in (0, 12345):
        got = topk_mask(x.to(dev), k, lam, seed).cpu().reshape(-1).numpy()
        assert got.sum() == k
        assert np.array_equal(got, _spec_mask(x, k, lam, seed))


def test_seed_changes_only_the_tie_choice():
    from slicer.codec.kernels.atkf import topk_mask

    x = torch.ones(4, 64)
    a = topk_mask(x, 100, 0.0, seed=1)
    b = topk_mask(x, 100, 0.0, seed=2)
    assert a.sum() == b.sum() == 100 and not torch.equal(a, b)


def test_edges_k_zero_and_all():
    from slicer.codec.kernels.atkf import topk_mask

    x = torch.randn(3, 5)
    assert topk_mask(x, 0).sum() == 0
    assert topk_mask(x, 15).all()
