"""Writes the golden payloads (run once per wire-format change, never to "fix" a failing
golden test: a failure there means a later version no longer decodes old payloads).

    python tests/codec/golden/make_golden.py

Each case: ``<name>.bin`` (the payload), ``<name>.npy`` (the decoded tensor as float32, or
float64 for float64 tensors; ``np.save`` without pickle), and a line in ``MANIFEST.json``
(config spec, dtype, shape).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from slicer.codec import CodecConfig, decode, encode

HERE = Path(__file__).resolve().parent


def inputs() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(2026)
    a = torch.randn(6, 40, generator=g)
    a[:, 5] *= 20  # an outlier channel
    b = (torch.randn(3, 5, 16, generator=g) * 3).to(torch.bfloat16)
    c = torch.randn(7, generator=g).to(torch.float16)
    d = torch.randn(2, 33, generator=g).double()
    return {"a": a, "b": b, "c": c, "d": d}


CASES: list[tuple[str, str, str]] = [
    # (name, input, config spec)
    ("raw_a", "a", "lossless"),
    ("raw_b", "b", "lossless"),
    ("fp16_a", "a", "fp16"),
    ("bf16_d", "d", "bf16"),
    ("fp16-zstd_a", "a", "fp16-zstd"),
    ("int8_a", "a", "int8"),
    ("int8_b", "b", "int8"),
    ("q8_0_a", "a", "q8_0"),
    ("q8_0_c", "c", "q8_0"),
    ("fp8_a", "a", "fp8"),
    ("opsc_a", "a", "opsc"),
    ("opsc_b", "b", "opsc:bits=6,delta=0.001,threshold=3.0"),
    ("opsc_d", "d", "opsc:bits=4,delta=none"),
    ("ecsq_a", "a", "ecsq:rate=3.0"),
    ("ecsq_a_rot", "a", "ecsq:rate=2.0,rotate=true,seed=5"),
    ("ecsq_b", "b", "ecsq:sparsity=0.5,bits=6"),
    ("ecsq_d", "d", "ecsq:rate=8.0"),
]


def main() -> None:
    xs = inputs()
    manifest = []
    for name, inp, spec in CASES:
        x = xs[inp]
        p = encode(x, CodecConfig.parse(spec))
        y = decode(p)
        (HERE / f"{name}.bin").write_bytes(p)
        arr = y.double().numpy() if y.dtype == torch.float64 else y.float().numpy()
        np.save(HERE / f"{name}.npy", arr, allow_pickle=False)
        manifest.append({"name": name, "spec": spec, "dtype": str(y.dtype), "shape": list(y.shape)})
    (HERE / "MANIFEST.json").write_text(json.dumps(manifest, indent=1) + "\n")


if __name__ == "__main__":
    main()
