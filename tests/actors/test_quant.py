"""Weight-only int8 / int4 front segment: rounding bounds, packing, bytes in the profile,
fidelity on stories260k."""
from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from slicer.actors.models import load_model
from slicer.actors.models.generate import generate
from slicer.actors.models.quant import (
    QuantEmbedding,
    QuantLinear,
    quantize_front,
    quantized_front_profile,
)
from slicer.actors.models.testing import TINY_LM
from slicer.codec import CodecConfig

pytestmark = pytest.mark.usefixtures("one_thread")


@settings(max_examples=25, deadline=None)
@given(rows=st.integers(1, 9), cols=st.integers(1, 70), bits=st.sampled_from([8, 4]),
       group=st.sampled_from([2, 8, 32]), seed=st.integers(0, 2**16))
def test_dequantized_weight_is_within_half_a_step(rows, cols, bits, group, seed):
    w = torch.randn(rows, cols, generator=torch.Generator().manual_seed(seed)) * 3
    q = QuantLinear(w, None, bits, group)
    d = q.dequantized_weight()
    assert d.shape == w.shape
    if bits == 8:
        step = q.scales.float()  # (rows, 1)
        assert q.codes.dtype == torch.int8 and int(q.codes.abs().max()) <= 127
    else:
        step = q.scales.float().repeat_interleave(group, 1)[:, :cols]  # (rows, cols)
        assert q.codes.dtype == torch.uint8 and q.codes.shape == (rows, -(-cols // group) * group // 2)
    # round-to-nearest: |w - q s| <= s/2 (plus the fp16 rounding of s, 2^-11 relative, times |q| <= 127)
    assert bool(((w - d).abs() <= step * (0.5 + 127 * 2**-10) + 1e-6).all())


def test_linear_and_embedding_forward_match_their_dequantized_weights():
    g = torch.Generator().manual_seed(0)
    lin = torch.nn.Linear(20, 7)
    x = torch.randn(3, 5, 20, generator=g)
    for bits in (8, 4):
        q = QuantLinear(lin.weight, lin.bias, bits, 8)
        torch.testing.assert_close(q(x), x @ q.dequantized_weight().T + lin.bias)
        emb = torch.randn(11, 20, generator=g)
        qe = QuantEmbedding(emb, bits, 8)
        ids = torch.tensor([[0, 10, 3], [3, 3, 7]])
        torch.testing.assert_close(qe(ids), QuantLinear(emb, None, bits, 8).dequantized_weight()[ids])
    with pytest.raises(ValueError, match="bits=3"):
        QuantLinear(lin.weight, None, 3)


@pytest.mark.parametrize("family", ["llama", "gpt2", "gpt_neox"])
def test_quantized_front_stays_close_and_counts_bytes(family):
    m = load_model(TINY_LM[family], seed=0)
    ids = torch.randint(3, 256, (2, 9), generator=torch.Generator().manual_seed(1))
    ref = m.run(0, m.num_units, ids)
    for bits, max_rel in ((8, 0.03), (4, 0.4)):
        q = quantize_front(m, 3, bits)
        out = q.run(0, m.num_units, ids)
        rel = ((out - ref).norm() / ref.norm()).item()
        assert 0 < rel < max_rel  # changed (quantized), but only by quantization error
        p0, p1 = m.profile, q.profile
        assert [l.num_params for l in p1.layers] == [l.num_params for l in p0.layers]
        assert p1.layers[3:] == p0.layers[3:]  # the back segment is untouched
        assert p1.extra["front_bits"] == bits and p1.extra["front_units"] == 3
        assert p1.front_param_bytes(3) < p0.front_param_bytes(3) / (3.0 if bits == 8 else 5.0)
    assert not any(isinstance(mod, QuantLinear) for mod in m.hf.modules())  # the original is untouched


def test_int8_front_of_stories260k(stories260k_path):
    m = load_model(stories260k_path)
    # held-out stand-in: 8 sequences of 128 tokens sampled from the model (seed 0, T = 1)
    g = torch.Generator().manual_seed(0)
    ids = torch.ones(8, 1, dtype=torch.long)
    for _ in range(127):
        p = torch.softmax(m.run(0, m.num_units, ids)[:, -1], -1)
        ids = torch.cat([ids, torch.multinomial(p, 1, generator=g)], 1)
    ref = m.run(0, m.num_units, ids).argmax(-1)
    agree = {}
    for bits in (8, 4):
        for ell in (1, 4, m.num_units):
            q = quantize_front(m, ell, bits)
            ratio = m.profile.front_param_bytes(ell) / q.profile.front_param_bytes(ell)
            assert ratio >= (3.5 if bits == 8 else 6.5), (bits, ell, ratio)  # int8 3.87x, int4 6.86-7.11x
            agree[bits, ell] = (q.run(0, m.num_units, ids).argmax(-1) == ref).float().mean().item()
    # Measured (this test's data): int8 0.93 / 0.86 / 0.82 for ell = 1 / 4 / 7, int4 0.33 /
    # 0.19 / 0.17. A 260K-parameter model is this fragile: Gaussian noise of 1e-3 of each
    # matrix's std already gives 0.94 (int8 rounding is ~6e-3), so the issue's >= 0.97
    # for an int8 front is not reachable on it; see the report.
    for ell in (1, 4, 7):
        assert agree[8, ell] > agree[4, ell] + 0.3
    assert agree[8, 1] >= 0.88 and agree[8, 4] >= 0.78


def test_quantized_edge_runs_every_mode(stories260k_path):
    m = load_model(stories260k_path)
    prompt = torch.tensor([[1, 403, 407]])
    q = quantize_front(m, m.num_units, 8)
    for mode, ell, w in (("split", 3, None), ("local-then-offload", 3, 4), ("edge-only", m.num_units, None)):
        r = generate(m, prompt, 6, mode, ell, w, CodecConfig(method="raw"), edge_model=q)
        assert len(r.tokens) == 6 and all(0 <= t < 512 for t in r.tokens)


def test_meta_profile_of_a_quantized_70b_front():
    p = quantized_front_profile("llama-3-70b", 41, 4)
    H, kvh, hd, I, V = 8192, 8, 128, 28672, 128256
    # int4 with fp16 scale per 32 weights: 4.5 bits per weight; norms stay bf16
    per_block = (H * H * 2 + 2 * H * kvh * hd + 3 * H * I) * 4.5 / 8 + 2 * H * 2
    embed = V * H * 4.5 / 8
    assert p.front_param_bytes(41) == int(embed + 40 * per_block)
    assert p.layers[41].param_bytes == p.layers[40].param_bytes * 0 + (H * H * 2 + 2 * H * kvh * hd + 3 * H * I + 2 * H) * 2


def test_int8_front_of_the_projects_model_keeps_agreement():
    """The issue's bar: an int8 front cuts its weight bytes >= 3.5x against fp32 and keeps
    next-token agreement >= 0.97, here on slicer-tiny's held-out text (real trained
    activations, 1.22M parameters; measured 0.996-0.998 at ell = 2, 4, 6 with
    `slicer bench fidelity --front-bits 8`)."""
    from pathlib import Path

    from slicer.actors.models.fidelity import heldout_sequences

    folder = Path(__file__).resolve().parents[2] / "examples" / "models" / "slicer-tiny"
    if not (folder / "model.safetensors").exists():
        pytest.skip("examples/models/slicer-tiny not present")
    m = load_model(folder)
    seqs = heldout_sequences(folder, 4, 128)
    assert seqs is not None and seqs.shape == (4, 128)
    ref = m.run(0, m.num_units, seqs).argmax(-1)  # (4, 128)
    for ell in (2, 4, m.num_units - 1):
        q = quantize_front(m, ell, 8)
        ratio = m.profile.front_param_bytes(ell) / q.profile.front_param_bytes(ell)
        assert ratio >= 3.5, (ell, ratio)
        h = q.run(0, ell, seqs)  # the int8 edge
        got = m.run(ell, m.num_units, h).argmax(-1)  # the fp32 server
        agree = (got == ref).float().mean().item()
        assert agree >= 0.97, (ell, agree)
