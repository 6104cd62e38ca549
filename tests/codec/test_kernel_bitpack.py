"""Triton bit packing equals the reference byte for byte (CPU: TRITON_INTERPRET=1)."""
from __future__ import annotations

import os

import numpy as np
import pytest

import torch

if not torch.cuda.is_available():
    # The interpreter is chosen when a kernel is decorated: set it before the import.
    os.environ.setdefault("TRITON_INTERPRET", "1")
pytest.importorskip("triton")

from slicer.codec.reference import bitpack as ref


def _device():
    return "cuda" if torch.cuda.is_available() else "cpu"


@pytest.mark.parametrize("bits", list(range(1, 17)))
@pytest.mark.parametrize("n", [1, 31, 257])
def test_pack_unpack_match_reference(bits, n):
    from slicer.codec.kernels import bitpack as kb

    rng = np.random.default_rng(bits * 1000 + n)
    codes = rng.integers(0, 2**bits, size=n, dtype=np.int64)
    want = ref.pack_bits(codes, bits)
    got = kb.pack_bits(torch.from_numpy(codes).to(_device()), bits).cpu().numpy().tobytes()
    assert got == want
    back = kb.unpack_bits(torch.frombuffer(bytearray(want), dtype=torch.uint8).to(_device()), n, bits)
    assert np.array_equal(back.cpu().numpy().astype(np.int64), codes)
