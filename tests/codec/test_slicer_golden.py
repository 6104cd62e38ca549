"""Golden SLICER payloads: every later version must still decode them to the same tensor.

The payloads ``tests/codec/golden/slicer_*.bin`` and the SHA-256 of their decoded float32
bytes (``slicer_golden.json``) are committed. To add a case, append it to ``CASES`` and run
``python tests/codec/test_slicer_golden.py --regen``: existing files are never overwritten
(``--force`` does, and should only ever be needed before a format is released).
"""
from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from slicer import codec
from slicer.codec import CodecConfig

GOLDEN = Path(__file__).parent / "golden"
MANIFEST = GOLDEN / "slicer_golden.json"


def _input(kind: str, shape, dtype, seed: int) -> torch.Tensor:
    g = np.random.default_rng(seed)
    if kind == "gauss":
        a = g.standard_normal(shape)
    elif kind == "ints":
        a = g.integers(-4, 5, shape).astype(np.float64)
    else:  # laplace with a few outliers
        a = g.laplace(size=shape) * np.where(g.random(shape) < 0.01, 30.0, 1.0)
    return torch.from_numpy(a).to(dtype)


#: name -> (input kind, shape, dtype, seed, codec spec)
CASES = {
    "slicer_default_3x257_f32": ("gauss", (3, 257), torch.float32, 1, "slicer:sparsity=0.75"),
    "slicer_tiny_1x64_f32": ("gauss", (1, 64), torch.float32, 2, "slicer:sparsity=0.75,blocks=1"),
    "slicer_bitmap_abq_17x64_bf16": (
        "ints", (17, 64), torch.bfloat16, 3, "slicer:sparsity=0.5,asymmetry=0.3,blocks=2/5,index=bitmap,delta=0.25,seed=7"),
    "slicer_csr_q_2x3x5x7_f16": ("gauss", (2, 3, 5, 7), torch.float16, 4, "slicer:sparsity=0.6,bits=8/4/2,index=csr"),
    "slicer_ef_entropy_64x128_f32": ("laplace", (64, 128), torch.float32, 5, "slicer:sparsity=0.8,index=ef,entropy=true"),
    "slicer_abq_mixed_32x64_f32": ("gauss", (32, 64), torch.float32, 7, "slicer:sparsity=0.75,delta=0.2"),
    "slicer_rice_q3_1d_f64": ("laplace", (1000,), torch.float64, 6, "slicer:sparsity=0.9,bits=3,delta=none,index=rice"),
}


def _digest(t: torch.Tensor) -> str:
    return hashlib.sha256(t.float().contiguous().numpy().tobytes()).hexdigest()


def regenerate(force: bool = False) -> None:
    GOLDEN.mkdir(exist_ok=True)
    manifest = json.loads(MANIFEST.read_text()) if MANIFEST.exists() else {}
    for name, (kind, shape, dtype, seed, spec) in CASES.items():
        path = GOLDEN / f"{name}.bin"
        if path.exists() and not force:
            continue
        payload = codec.encode(_input(kind, shape, dtype, seed), CodecConfig.parse(spec))
        path.write_bytes(payload)
        y = codec.decode(payload)
        manifest[name] = {"spec": spec, "shape": list(shape), "dtype": str(dtype), "decoded_sha256": _digest(y)}
        print(f"wrote {path} ({len(payload)} bytes)")
    MANIFEST.write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")


@pytest.mark.parametrize("name", sorted(CASES))
def test_golden_payload_decodes_to_the_recorded_tensor(name):
    meta = json.loads(MANIFEST.read_text())[name]
    y = codec.decode((GOLDEN / f"{name}.bin").read_bytes())
    assert list(y.shape) == meta["shape"] and str(y.dtype) == meta["dtype"]
    assert _digest(y) == meta["decoded_sha256"]


@pytest.mark.parametrize("name", sorted(CASES))
def test_encoder_still_writes_the_golden_bytes(name):
    """The reference encoder is the spec a GPU kernel must match byte for byte: a change
    here is a format change (add new golden cases; never rewrite the old ones)."""
    kind, shape, dtype, seed, spec = CASES[name]
    assert codec.encode(_input(kind, shape, dtype, seed), CodecConfig.parse(spec)) == (GOLDEN / f"{name}.bin").read_bytes()


if __name__ == "__main__":
    if "--regen" in sys.argv:
        regenerate(force="--force" in sys.argv)
    else:
        print(__doc__)
