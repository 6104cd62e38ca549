"""Seeded randomized Hadamard rotation along the last dim (orthonormal, exactly invertible).

A row of width W is cut into power-of-two chunks, largest first (W's binary digits:
288 = 256 + 32), and each chunk is rotated by H_c · diag(signs) / sqrt(c), where H_c is the
Sylvester Hadamard matrix and the ±1 signs come from ``numpy.random.default_rng(seed)``
(the seed travels in the payload, so the decoder rebuilds the same rotation). Chunks keep
N unchanged (padding to the next power of two would cost up to 2x the elements). A chunk of
c = 2^k is applied as H_{2^a} ⊗ H_{2^b} with a + b = k: two small batched matmuls,
O(rows · c · (2^a + 2^b)) instead of O(rows · c^2); for c = 4096 that is 64 + 64 per element.

The rotation spreads an outlier channel over its chunk (the use: outlier-heavy rows); it
preserves the L2 norm, so the quantization error in the rotated domain equals the error of
the reconstruction.
"""
from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
import torch


def chunks(width: int) -> list[int]:
    """Power-of-two chunk sizes of a row, largest first; they add up to ``width``."""
    return [1 << k for k in range(max(width, 1).bit_length() - 1, -1, -1) if width >> k & 1]


@lru_cache(maxsize=32)
def _sylvester(n: int) -> torch.Tensor:
    h = torch.ones(1, 1, dtype=torch.float32)
    while h.shape[0] < n:
        h = torch.cat([torch.cat([h, h], 1), torch.cat([h, -h], 1)], 0)
    return h  # (n, n), entries ±1


def signs(width: int, seed: int) -> torch.Tensor:
    """The ±1 diagonal for a row of ``width`` (float32)."""
    rng = np.random.default_rng(seed)
    return torch.from_numpy(rng.integers(0, 2, size=width).astype(np.float32) * 2 - 1)


#: Largest Hadamard factor (2^6): a chunk of 2^k is applied as ceil(k/6) small factors,
#: so the cost stays ≤ 64 multiply-adds per element per factor (≤ 5 factors for 2^28). A
#: chunk up to 2^12 (4096) is the two-factor product below, unchanged.
_FACTOR_BITS = 6


def _fwht(x: torch.Tensor) -> torch.Tensor:
    """Orthonormal Walsh-Hadamard transform of the last dim (a power of two); its own inverse."""
    rows, c = x.shape
    k = c.bit_length() - 1
    if k > 2 * _FACTOR_BITS:
        # H_{2^k} = H_{f1} ⊗ … ⊗ H_{fm}: one small matmul per axis of the row seen as an
        # (f1, …, fm) array. The old two-factor form cost 2·2^(k/2) per element: a rotated
        # row of 2^28 made decoding a 35-byte payload run for minutes.
        sizes = [_FACTOR_BITS] * (k // _FACTOR_BITS) + ([k % _FACTOR_BITS] if k % _FACTOR_BITS else [])
        y = x
        pre = rows
        for bits in sizes:
            f = 1 << bits
            post = y.numel() // (pre * f)
            y = (_sylvester(f).to(x.device) @ y.reshape(pre, f, post))  # (pre, f, post)
            pre *= f
        return y.reshape(rows, c) / math.sqrt(c)
    a = k // 2
    na, nb = 1 << a, 1 << (k - a)
    ha, hb = _sylvester(na).to(x.device), _sylvester(nb).to(x.device)
    # H_a ⊗ H_b on the row seen as an (na, nb) matrix M: H_a · M · H_b, done as two plain
    # 2-D matmuls (batched 3-D matmul with a broadcast operand was ~2x slower here).
    y = x.reshape(rows * na, nb) @ hb  # (rows·na, nb): M · H_b
    y = y.reshape(rows, na, nb).transpose(1, 2).reshape(rows * nb, na) @ ha  # (rows·nb, na)
    y = y.reshape(rows, nb, na).transpose(1, 2).reshape(rows, c)
    return y / math.sqrt(c)


def rotate(x: torch.Tensor, seed: int, inverse: bool = False) -> torch.Tensor:
    """Rotate each row of ``x`` (rows, W), float32. ``inverse=True`` undoes it."""
    rows, width = x.shape
    if rows == 0 or width == 0:
        return x.clone()
    s = signs(width, seed).to(x.device)  # (W,)
    out = torch.empty_like(x)
    start = 0
    for c in chunks(width):
        seg = x[:, start : start + c]  # (rows, c)
        sg = s[start : start + c]
        out[:, start : start + c] = _fwht(seg) * sg if inverse else _fwht(seg * sg)
        start += c
    return out
