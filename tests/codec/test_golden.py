"""Golden payloads: every committed ``tests/codec/golden/<name>.bin`` listed in
MANIFEST.json must still decode to its committed ``<name>.npy`` (written by
``golden/make_golden.py`` when the format was frozen). A failure means this version no
longer reads payloads an older one wrote: fix the decoder, never regenerate the files.
``ecsq_v2_*`` are wire version 2 (entropy mode 3), added when that version was frozen; the
other ECSQ goldens are version 1 (constriction's coder) and must keep decoding."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from slicer.codec import CodecConfig, decode, encode, predict_bytes

GOLDEN = Path(__file__).resolve().parent / "golden"
MANIFEST = json.loads((GOLDEN / "MANIFEST.json").read_text())


@pytest.mark.parametrize("case", MANIFEST, ids=[c["name"] for c in MANIFEST])
def test_golden_payload_decodes_identically(case):
    payload = (GOLDEN / f"{case['name']}.bin").read_bytes()
    want = np.load(GOLDEN / f"{case['name']}.npy", allow_pickle=False)
    y = decode(payload)
    assert str(y.dtype) == case["dtype"] and list(y.shape) == case["shape"]
    got = y.double().numpy() if y.dtype == torch.float64 else y.float().numpy()
    if "rotate=true" in case["spec"]:
        # The inverse Hadamard is a float32 matmul: BLAS kernels may sum in another order
        # on another CPU, so allow float32 rounding (2^-20 relative to the row scale).
        scale = float(np.abs(want).max())
        assert np.allclose(got, want, rtol=0, atol=scale * 2.0**-20)
    else:
        assert np.array_equal(got, want)


def test_manifest_covers_every_method_we_own():
    have = {c["spec"].split(":")[0] for c in MANIFEST}
    assert {"lossless", "fp16", "bf16", "fp16-zstd", "int8", "q8_0", "fp8", "opsc", "ecsq"} <= have


@pytest.mark.parametrize("case", MANIFEST, ids=[c["name"] for c in MANIFEST])
def test_golden_payload_within_predict_bytes(case):
    payload = (GOLDEN / f"{case['name']}.bin").read_bytes()
    cfg = CodecConfig.parse(case["spec"])
    dtype = getattr(torch, case["dtype"].removeprefix("torch."))
    assert len(payload) <= predict_bytes(tuple(case["shape"]), cfg, dtype)
    # and re-encoding the decoded tensor stays within the same bound
    y = decode(payload)
    assert len(encode(y, cfg)) <= predict_bytes(tuple(case["shape"]), cfg, dtype)
