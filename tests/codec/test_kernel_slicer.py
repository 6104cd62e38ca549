"""The Triton SLICER encoder gives the reference's payload byte for byte.

Runs on CPU under TRITON_INTERPRET=1 (slow: small and odd shapes) and on CUDA when a GPU
is present. Covers sparsities, block counts, λ, fixed Q, ABQ (mixed widths), every index
coding, dtypes, ties and kept zeros.
"""
from __future__ import annotations

import os
import zlib

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")  # chosen at decoration: before import
pytest.importorskip("triton")

from slicer import codec  # noqa: E402
from slicer.codec import CodecConfig  # noqa: E402
from slicer.codec.slicer import inspect  # noqa: E402

DEV = "cuda" if torch.cuda.is_available() else "cpu"

CASES = [
    ((3, 257), dict(sparsity=0.75)),
    ((17, 64), dict(sparsity=0.5, blocks=(2, 3), asymmetry=0.3)),
    ((5, 40), dict(sparsity=0.9, bits=(8, 4, 2), delta=None)),
    ((2, 3, 5, 7), dict(sparsity=0.25, index="csr")),
    ((17, 64), dict(sparsity=0.75, index="rice", bits=4, delta=None)),
    ((17, 64), dict(sparsity=0.75, index="ef", bits=6, delta=0.3)),
    ((17, 64), dict(sparsity=0.5, bits=8, delta=0.3, blocks=(3, 3))),
    ((1, 100), dict(sparsity=0.0, blocks=1, bits=16, delta=None)),
    ((33,), dict(sparsity=0.6, blocks=(4, 1), bits=3, delta=None, seed=99)),
    ((9, 31), dict(sparsity=0.95, blocks=(64, 64), bits=1, delta=None)),  # empty leading blocks, 126 cuts
    ((7, 50), dict(sparsity=0.3, blocks=(5, 5), bits=(9, 16, 3, 1, 12), delta=None)),  # widths 1..16 mixed
]


@pytest.mark.parametrize("shape,kw", CASES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_triton_payload_equals_reference(shape, kw, dtype):
    g = torch.Generator().manual_seed(zlib.crc32(repr((shape, sorted(kw.items()))).encode()))  # stable across runs
    x = (torch.round(torch.randn(shape, generator=g) * 8) / 8).to(dtype)  # exact ties on purpose
    ref = codec.encode(x, CodecConfig(method="slicer", backend="torch", **kw))
    got = codec.encode(x.to(DEV), CodecConfig(method="slicer", backend="triton", **kw))
    assert got == ref
    assert torch.equal(codec.decode(got), codec.decode(ref))


def test_abq_mixed_widths_and_kept_zeros_exercised():
    x = torch.randn(17, 64, generator=torch.Generator().manual_seed(1))
    cfg = dict(method="slicer", sparsity=0.5, bits=8, delta=0.3)
    got = codec.encode(x.to(DEV), CodecConfig(backend="triton", **cfg))
    assert len(set(inspect(got).widths.tolist())) > 1  # the variable-width stream is used
    assert got == codec.encode(x, CodecConfig(backend="torch", **cfg))
    z = torch.zeros(5, 40)
    z[0, :7] = torch.randn(7)  # fewer nonzeros than k: zeros are kept
    cfg = CodecConfig(method="slicer", sparsity=0.5)
    assert codec.encode(z.to(DEV), cfg.replace(backend="triton")) == codec.encode(z, cfg.replace(backend="torch"))
    assert inspect(codec.encode(z, cfg)).k == 100


def test_wide_row_bf16():
    x = torch.randn(17, 4096, generator=torch.Generator().manual_seed(2)).to(torch.bfloat16)
    cfg = dict(method="slicer", sparsity=0.75)
    assert codec.encode(x.to(DEV), CodecConfig(backend="triton", **cfg)) == codec.encode(x, CodecConfig(backend="torch", **cfg))


def test_tie_free_float32_and_float64():
    """Distinct float32 scores: the hash passes read nothing (no ties at any threshold);
    float64 input is rounded to float32 first, as the reference does."""
    x = torch.randn(13, 300, generator=torch.Generator().manual_seed(4), dtype=torch.float64) * 1e3
    for dtype in (torch.float32, torch.float64):
        for kw in (dict(sparsity=0.75, asymmetry=0.2), dict(sparsity=0.5, blocks=(4, 4), bits=8, delta=0.2)):
            cfg = CodecConfig(method="slicer", **kw)
            got = codec.encode(x.to(dtype).to(DEV), cfg.replace(backend="triton"))
            assert got == codec.encode(x.to(dtype), cfg.replace(backend="torch"))


def test_env_var_forces_backend(monkeypatch):
    from slicer.codec.config import CodecConfig as C

    monkeypatch.setenv("SLICER_CODEC_BACKEND", "triton")
    assert C(method="slicer").resolved_backend("cpu") == "triton"
    monkeypatch.setenv("SLICER_CODEC_BACKEND", "torch")
    assert C(method="slicer").resolved_backend("cuda") == "torch"
    assert C(method="slicer", backend="triton").resolved_backend("cpu") == "triton"


def test_kernel_throughput_bench_rows():
    from slicer.orchestrator.bench.codec import kernel_throughput

    rows = kernel_throughput([2], dtypes=("bfloat16",), reps=1, width=64, device=DEV)
    (r,) = rows
    assert r["tokens"] == 2 and r["dtype"] == "bfloat16"
    assert r["decode_over_copy"] == pytest.approx(r["decode_GBps"] / r["copy_GBps"])
    assert r["encode_GBps"] > 0 and r["copy_GBps"] > 0 and r["encode_over_copy"] == pytest.approx(
        r["encode_GBps"] / r["copy_GBps"])
    x_bytes = 2 * 64 * 2
    assert r["encode_GBps"] == pytest.approx(x_bytes / 1e9 / (r["encode_ms"] / 1e3))


EDGE_INPUTS = {
    "zeros": torch.zeros(4, 33),
    "all_negative": -torch.rand(4, 33, generator=torch.Generator().manual_seed(5)) - 0.1,
    "constant": torch.full((5, 20), -2.5),
    "empty": torch.zeros(0, 5),
    "signed_zeros": torch.tensor([[-0.0, 0.0, -0.0, 1.0]]),
    "subnormal": torch.randn(6, 50, generator=torch.Generator().manual_seed(6)) * 1e-39,
    "mixed_scales": torch.cat([torch.randn(100, generator=torch.Generator().manual_seed(7)) * 1e-40,
                               torch.randn(100, generator=torch.Generator().manual_seed(8)) * 1e30]),
}


@pytest.mark.parametrize("name", sorted(EDGE_INPUTS))
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_edge_inputs(name, dtype):
    """Degenerate inputs (one sign only, all equal, empty, subnormal: bf16 subnormals are
    widened by a shift in the kernels) give the reference's bytes, for every config."""
    x = EDGE_INPUTS[name].to(dtype)
    for kw in (dict(sparsity=0.0, blocks=(2, 5), bits=8, delta=0.3), dict(sparsity=0.9, index="ef", asymmetry=0.5),
               dict(sparsity=0.5, index="rice", bits=3, delta=None)):
        cfg = CodecConfig(method="slicer", **kw)
        assert codec.encode(x.to(DEV), cfg.replace(backend="triton")) == codec.encode(x, cfg.replace(backend="torch"))
