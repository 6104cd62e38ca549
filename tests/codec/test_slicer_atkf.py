"""ATKF and MS primitives against independent readings of the spec (pure Python / full sorts)."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from slicer.codec.reference.atkf import (
    keep_count,
    rank_cuts,
    score_weights,
    scores,
    tie_hash,
    top_mask,
)
from slicer.codec.reference.ms import block_sizes

M32 = 0xFFFFFFFF


def fmix32_py(i: int, seed: int) -> int:
    """The spec's hash with Python ints and ``& 0xFFFFFFFF`` (what an int64 port does)."""
    h = (i * 0x9E3779B1 + seed) & M32
    h ^= h >> 16
    h = (h * 0x85EBCA6B) & M32
    h ^= h >> 13
    h = (h * 0xC2B2AE35) & M32
    h ^= h >> 16
    return h


def test_tie_hash_matches_python_reference():
    idx = np.array([0, 1, 2, 3, 1000, 2**20 + 7, 2**28 - 1], dtype=np.int64)
    for seed in (0, 1, 12345, 2**32 - 1):
        got = tie_hash(idx, seed).tolist()
        assert got == [fmix32_py(int(i), seed) for i in idx]
    assert tie_hash(np.array([0]), 0).tolist() == [0]  # fmix32(0) = 0
    # a bijection on the indices a payload can hold: no two equal hashes
    h = tie_hash(np.arange(1 << 18), 99)
    assert np.unique(h).shape[0] == 1 << 18


def test_keep_count_is_floor_in_float64():
    assert keep_count(10, 0.75) == 2
    assert keep_count(10, 0.7) == 3  # (1-0.7)*10 = 3.0000000000000004
    assert keep_count(524288, 0.75) == 131072
    assert keep_count(0, 0.5) == 0
    assert keep_count(7, 0.0) == 7


def test_score_weights_are_float32_of_float64_quotients():
    wp, wn = score_weights(0.3)
    assert wp == np.float32(1 / 1.3) and wn == np.float32(1 / 0.7)
    assert wp.dtype == np.float32 and scores(np.array([1.0, -1.0], dtype=np.float32), 0.3).dtype == np.float32
    assert score_weights(0.0) == (1.0, 1.0)


def _brute_top(v, k, seed, index=None):
    idx = np.arange(v.shape[0]) if index is None else index
    order = np.lexsort((tie_hash(idx, seed).astype(np.int64), -v.astype(np.float64)))
    mask = np.zeros(v.shape[0], dtype=bool)
    mask[order[:k]] = True
    return mask


@settings(max_examples=150, deadline=None)
@given(
    n=st.integers(1, 300),
    levels=st.sampled_from([1, 2, 5, 1000]),
    kfrac=st.floats(0, 1),
    seed=st.integers(0, 2**32 - 1),
    use_index=st.booleans(),
)
def test_top_mask_and_cuts_match_a_full_sort(n, levels, kfrac, seed, use_index):
    g = np.random.default_rng(seed % 1000)
    v = g.integers(0, levels, n).astype(np.float32) * np.float32(0.5)  # heavy ties
    index = np.sort(g.choice(10 * n, n, replace=False)) if use_index else None
    k = int(kfrac * n)
    assert np.array_equal(top_mask(v, k, seed, index), _brute_top(v, k, seed, index))
    m = int(g.integers(1, 7))
    cuts = np.cumsum(block_sizes(n, m))[:-1].tolist()
    want = sum((~_brute_top(v, c, seed, index)).astype(np.int64) for c in cuts) if cuts else np.zeros(n, np.int64)
    assert np.array_equal(rank_cuts(v, cuts, seed, index), want)


def test_block_sizes_equal_cardinality():
    assert block_sizes(10, 3).tolist() == [4, 3, 3]
    assert block_sizes(2, 4).tolist() == [1, 1, 0, 0]
    assert block_sizes(0, 2).tolist() == [0, 0]
    with pytest.raises(ZeroDivisionError):
        block_sizes(3, 0)
