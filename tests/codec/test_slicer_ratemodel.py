"""B^UB payload model and the measured time model ζ̂."""
from __future__ import annotations

import itertools
import json

import numpy as np
import pytest
import torch

from slicer import codec
from slicer.codec import CodecConfig, ratemodel, wire
from slicer.codec.reference.ms import block_sizes
from slicer.codec.slicer import SLICER


@pytest.mark.parametrize("k", [0, 1, 2, 5, 7, 13, 64])
@pytest.mark.parametrize("q", [(8, 2), (1, 4, 4), (8, 4, 2), (5,)])
def test_list_value_bits_bound_is_the_max_over_sign_splits(k, q):
    m = len(q)
    brute = max(
        int(np.dot(block_sizes(n, m), q) + np.dot(block_sizes(k - n, m), q)) for n in range(k + 1)
    )
    assert ratemodel._max_list_value_bits(k, q) == brute


def test_sections_model_is_exact_for_fixed_width_and_closed_form_index():
    g = np.random.default_rng(0)
    for shape, coding, bits in itertools.product([(5, 33), (128,), (2, 2, 9)], ["csr", "bitmap", "ef"], [1, 5, 8, 16]):
        cfg = CodecConfig(sparsity=0.6, index=coding, bits=bits, delta=None)
        x = torch.from_numpy(g.standard_normal(shape).astype(np.float32))
        secs = wire.unpack(codec.encode(x, cfg)).sections
        model = ratemodel.slicer_sections(shape, cfg)
        assert model["exact"]
        assert [len(s) for s in secs] == [model["params"], model["index"], model["labels"], model["values"]]
        assert sum(len(s) for s in secs) == SLICER.predict_bytes(shape, torch.float32, cfg)
        bounds = SLICER.section_bounds(shape, torch.float32, cfg)
        assert len(codec.encode(x, cfg)) == sum(bounds) + wire.header_nbytes(shape, bounds)


def test_time_model_fits_caches_and_predicts(tmp_path, monkeypatch):
    monkeypatch.setenv("SLICER_CACHE", str(tmp_path))
    model = ratemodel.fit_time_model(sizes=(512, 4096), sparsities=(0.5, 0.9), reps=1)
    files = list(tmp_path.glob("codec_time_v*.json"))
    assert len(files) == 1 and json.loads(files[0].read_text())["rows"] == model["rows"]
    assert len(model["rows"]) == 4 and all(r["encode_s"] > 0 and r["decode_s"] > 0 for r in model["rows"])

    def refit(*a, **k):
        raise AssertionError("the cached table must be reused")

    monkeypatch.setattr(ratemodel, "fit_time_model", refit)
    cfg = CodecConfig(sparsity=0.75)
    t = ratemodel.predict_time_s((64, 64), cfg)
    assert t > 0 and t == ratemodel.predict_time_s((64, 64), cfg, model=model)
    assert ratemodel.predict_time_s((64, 64), cfg, which="decode_s") > 0


def test_time_model_interpolates_the_table():
    rows = [
        {"numel": n, "k": 0, "sparsity": s, "encode_s": n * 1e-6 * (2 if s == 0.9 else 1), "decode_s": 1e-3}
        for n in (1000, 100000) for s in (0.5, 0.9)
    ]
    model = {"rows": rows}
    at = lambda n, s, w="encode_s": ratemodel.predict_time_s((n,), CodecConfig(sparsity=s), model=model, which=w)
    assert at(1000, 0.5) == pytest.approx(1e-3)
    assert at(10000, 0.5) == pytest.approx(1e-2)  # log-log between the sizes
    assert at(10000, 0.7) == pytest.approx(1.5e-2)  # linear between the sparsities
    assert at(10, 0.5) == pytest.approx(1e-3)  # below the table: the smallest time
    assert at(200000, 0.9) == pytest.approx(0.4)  # above: linear in N
    assert at(10000, 0.99) == pytest.approx(2e-2)  # clamped sparsity
    with pytest.raises(ValueError):
        at(10, 0.5, "total")
