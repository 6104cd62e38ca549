"""Sign separation and magnitude splitting (MS) into equal-cardinality blocks (seed 001, §3.2).

Spec:

- Sign: a kept entry is negative when ``x < 0``, positive otherwise. Kept zeros (only when
  fewer than k scores are nonzero, see ``atkf.py``) are positive entries of magnitude 0,
  and decode to +0.0 (a kept -0.0 decodes to +0.0 too).
- Per sign with ``n`` entries and ``M`` blocks: entries ordered by magnitude ``|x|``
  descending (float32; not the λ-weighted score, which may merge distinct magnitudes), then
  by ``atkf.tie_hash`` of the flat index ascending, and cut into M consecutive blocks whose
  sizes differ by at most one: the first ``n mod M`` blocks hold ``floor(n/M) + 1``. Block 0
  holds the largest magnitudes. When ``n < M`` the last ``M - n`` blocks are empty (allowed:
  they carry no values and their range fields are zero).
- Global block label: positive blocks ``0 .. M+-1``, then negative blocks
  ``M+ .. M+ + M- - 1``.

The paper sorts each sign's nonzeros; here only the ``M-1`` cut points are selected (one
``np.partition`` per sign), which gives the same blocks without an O(n log n) sort.
"""
from __future__ import annotations

import numpy as np

from slicer.codec.reference.atkf import rank_cuts


def block_sizes(n: int, m: int) -> np.ndarray:
    """Sizes of the ``m`` blocks of ``n`` entries (first ``n mod m`` get one more)."""
    base, extra = divmod(int(n), int(m))
    sizes = np.full(m, base, dtype=np.int64)
    sizes[:extra] += 1
    return sizes


def all_block_sizes(k: int, n_pos: int, blocks: tuple[int, int]) -> np.ndarray:
    """Sizes of every block in global label order (positive blocks, then negative)."""
    return np.concatenate([block_sizes(n_pos, blocks[0]), block_sizes(k - n_pos, blocks[1])])


def split_blocks(values: np.ndarray, positions: np.ndarray, blocks: tuple[int, int], seed: int) -> tuple[np.ndarray, np.ndarray, int]:
    """Labels of the kept entries.

    ``values``: float32 kept values in ascending position order (k,); ``positions``: their
    flat indices (k,). Returns ``(labels (k,) int64, magnitudes (k,) float32, n_pos)``."""
    neg = values < 0  # (k,) zeros count as positive
    mags = np.abs(values)  # (k,) float32
    labels = np.empty(values.shape[0], dtype=np.int64)
    n_pos = int(values.shape[0] - np.count_nonzero(neg))
    for sign, (sel, m, offset) in enumerate(((~neg, blocks[0], 0), (neg, blocks[1], blocks[0]))):
        idx = np.flatnonzero(sel)
        n = idx.shape[0]
        cuts = np.cumsum(block_sizes(n, m))[:-1].tolist()
        labels[idx] = offset + rank_cuts(mags[idx], cuts, seed, positions[idx])
    return labels, mags, n_pos
