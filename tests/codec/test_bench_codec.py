"""`slicer bench codec` plumbing on a tiny --input (the measured numbers live in the bench)."""
from __future__ import annotations

import json
import math

import pytest
import torch

from slicer.orchestrator.bench import codec as bench
from slicer.orchestrator.cli import main


def test_bits_to_reach_interpolates_in_log_error():
    pts = [(1.0, 0.5), (2.0, 0.25), (3.0, 0.125)]
    assert bench.bits_to_reach(pts, 0.25) == pytest.approx(2.0)
    assert bench.bits_to_reach(pts, math.sqrt(0.5 * 0.25)) == pytest.approx(1.5)
    assert bench.bits_to_reach(pts, 0.9) is None and bench.bits_to_reach(pts, 0.01) is None


def test_bench_rows_on_an_input_file(tmp_path):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(16, 64, generator=g)
    torch.save({"h": x}, tmp_path / "t.pt")
    out = tmp_path / "o.json"
    rc = main(["bench", "codec", "--input", str(tmp_path / "t.pt"), "--no-model", "--no-speed", "--reps", "1",
               "--methods", "slicer", "ecsq", "int8", "--json", str(out)])
    assert rc == 0
    data = json.loads(out.read_text())
    rows = data["rows"]
    assert {r["method"] for r in rows} <= {"slicer", "ecsq", "int8"}
    for r in rows:
        assert not r["error"], r
        for key in ("method", "config", "input", "bits_per_element", "rel_l2", "cosine", "encode_over_topk", "decode_over_topk"):
            assert key in r
        assert r["input"] == "t.pt:h" and r["payload_bytes"] <= r["predict_bytes"]
        assert r["bits_per_element"] == pytest.approx(r["payload_bytes"] * 8 / x.numel())
    int8 = next(r for r in rows if r["method"] == "int8")
    assert int8["rel_l2"] < 0.02 and int8["cosine"] > 0.999
    if any(r["method"] == "slicer" for r in rows):
        assert data["ours_vs_slicer"], "slicer rows must get an ours-vs-slicer comparison"
