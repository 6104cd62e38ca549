"""Split execution equals the unsplit model: every family, every split, every AR mode.

The lossless codec (``raw``) is in the loop, so these are the end-to-end exactness tests
of DESIGN.md's Segments contract (Petals' ``test_block_exact_match`` in spirit)."""
from __future__ import annotations

import pytest
import torch

from slicer.actors.models import load_model
from slicer.actors.models.generate import generate, reference_generate, single_shot
from slicer.actors.models.testing import TINY_LM, TINY_VISION
from slicer.codec import CodecConfig

LOSSLESS = CodecConfig(method="raw")
N_NEW = 8
# Chunked prefill vs one-token steps reorders float sums: logits agree to ~1e-5 on
# stories260k (max seen 2.2e-5), ~1e-7 on the random tiny models.
ATOL = 1e-4


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module", params=sorted(TINY_LM))
def lm(request):
    return load_model(TINY_LM[request.param], seed=0)


@pytest.fixture(scope="module")
def stories(stories260k_path):
    return load_model(stories260k_path)


def _hf_greedy(m, prompt, n):
    out = m.hf.generate(prompt, max_new_tokens=n, min_new_tokens=n, do_sample=False, pad_token_id=0,
                        output_logits=True, return_dict_in_generate=True)
    return out.sequences[0, prompt.shape[1]:].tolist(), [l[0] for l in out.logits]


def _check_all_modes(m, prompt, n_new):
    ref, ref_logits = reference_generate(m, prompt, n_new)
    hf_tokens, hf_logits = _hf_greedy(m, prompt, n_new)
    assert ref == hf_tokens  # our unsplit loop is the model's own greedy decoding
    for a, b in zip(ref_logits, hf_logits):
        torch.testing.assert_close(a, b.float(), atol=ATOL, rtol=0)
    n = m.num_units
    runs = [("edge-only", n, None), ("cloud-only", 0, None)]
    for ell in range(1, n):
        runs.append(("split", ell, None))
        for w in (1, 2, n_new // 2 + 1):
            runs.append(("local-then-offload", ell, w))
    for mode, ell, w in runs:
        r = generate(m, prompt, n_new, mode, ell, w, LOSSLESS, return_logits=True)
        assert r.tokens == ref, (mode, ell, w)
        for a, b in zip(r.logits, ref_logits):
            torch.testing.assert_close(a, b, atol=ATOL, rtol=0)
        if mode == "split":
            assert r.server_steps == n_new and len(r.payload_bytes) == n_new
        if mode == "local-then-offload":
            assert r.server_steps == n_new - (w - 1)
        if mode == "edge-only":
            assert r.server_steps == 0 and r.payload_bytes == []


def test_tiny_families_every_split_every_mode(lm):
    g = torch.Generator().manual_seed(1)
    prompt = torch.randint(3, lm.config.vocab_size, (1, 5), generator=g)
    _check_all_modes(lm, prompt, N_NEW)


def test_stories260k_every_split_every_mode(stories):
    prompt = torch.tensor([[1, 403, 407, 261, 378]])  # BOS + four ids
    _check_all_modes(stories, prompt, 12)


def test_projects_model_every_split_every_mode():
    from pathlib import Path

    folder = Path(__file__).resolve().parents[2] / "examples" / "models" / "slicer-tiny"
    if not (folder / "model.safetensors").exists():
        pytest.skip("examples/models/slicer-tiny not present")
    m = load_model(folder)
    prompt = torch.tensor([[0, 300, 17, 512, 9]])  # EOS/BOS (id 0) + four ids
    _check_all_modes(m, prompt, 8)


def test_per_token_split_is_bitwise_equal_to_unsplit(stories):
    # Per-token split runs the very same ops as the unsplit loop: logits bitwise equal.
    prompt = torch.tensor([[1, 403, 407]])
    _, ref_logits = reference_generate(stories, prompt, 6)
    for ell in (1, 3, stories.num_units - 1):
        r = generate(stories, prompt, 6, "split", ell, None, LOSSLESS, return_logits=True)
        for a, b in zip(r.logits, ref_logits):
            assert torch.equal(a, b)


def test_segments_compose_to_the_hf_forward(lm):
    ids = torch.randint(3, lm.config.vocab_size, (2, 9), generator=torch.Generator().manual_seed(2))
    ref = lm.hf(ids).logits  # (2, 9, V)
    n = lm.num_units
    for ell in range(1, n):
        for cut in (1, 4, 9):  # prefill a chunk, then the rest as a second chunk
            c_edge, c_srv = lm.new_cache(0, ell), lm.new_cache(ell, n)
            outs = []
            for chunk in (ids[:, :cut], ids[:, cut:]):
                if chunk.shape[1] == 0:
                    continue
                outs.append(lm.run(ell, n, lm.run(0, ell, chunk, c_edge), c_srv))
            torch.testing.assert_close(torch.cat(outs, 1), ref, atol=ATOL, rtol=0)
            assert c_edge.length == c_srv.length == 9
            assert set(c_edge.layers) == set(range(ell - 1)) and set(c_srv.layers) == set(range(max(ell - 1, 0), n - 2))


def test_feature_shapes_follow_the_unit_layout(lm):
    ids = torch.randint(3, lm.config.vocab_size, (1, 4))
    n = lm.num_units
    assert n == lm.config.num_hidden_layers + 2
    h = lm.run(0, 1, ids)
    assert h.shape == (1, 4, lm.profile.hidden_size)
    assert lm.run(0, n, ids).shape == (1, 4, lm.config.vocab_size)
    assert [l.out_elements for l in lm.profile.layers] == [lm.profile.hidden_size] * (n - 1) + [lm.config.vocab_size]


def test_position_must_match_cache(lm):
    c = lm.new_cache(0, 2)
    lm.run(0, 2, torch.tensor([[5, 6, 7]]), c)
    with pytest.raises(ValueError, match="position=1"):
        lm.run(0, 2, torch.tensor([[8]]), c, position=1)
    with pytest.raises(ValueError, match="segment"):
        lm.run(2, 1, torch.zeros(1, 1, 32))
    with pytest.raises(ValueError, match="cache is for segment"):
        lm.run(0, 3, torch.tensor([[8]]), c)


@pytest.mark.parametrize("name", sorted(TINY_VISION))
def test_vision_single_shot_every_split(name):
    m = load_model(TINY_VISION[name], seed=0)
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    ref = m.hf(pixel_values=x).logits  # (2, 5)
    for ell in range(m.num_units + 1):
        logits, nbytes = single_shot(m, x, ell, LOSSLESS)
        torch.testing.assert_close(logits, ref, atol=1e-5, rtol=0)
        assert torch.equal(logits.argmax(-1), ref.argmax(-1))
        if 0 < ell < m.num_units:
            assert nbytes > m.profile.layers[ell - 1].out_elements * 2 * 4  # two images, fp32, plus header


def test_eager_attention_gets_an_additive_mask():
    m = load_model(TINY_LM["llama"], seed=3)
    m.config._attn_implementation = "eager"  # the layers read it at call time
    ids = torch.randint(3, 256, (1, 7), generator=torch.Generator().manual_seed(3))
    ref = m.hf(ids).logits
    c_edge, c_srv = m.new_cache(0, 2), m.new_cache(2, m.num_units)
    outs = [m.run(2, m.num_units, m.run(0, 2, ids[:, s], c_edge), c_srv) for s in (slice(0, 4), slice(4, 5), slice(5, 7))]
    torch.testing.assert_close(torch.cat(outs, 1), ref, atol=ATOL, rtol=0)


def test_learned_position_table_limit_is_a_clear_error():
    m = load_model(TINY_LM["gpt2"])  # n_positions 128
    m.run(0, 2, torch.zeros(1, 3, dtype=torch.long), position=125)
    with pytest.raises(ValueError, match="outside the model's learned position table"):
        m.run(0, 2, torch.zeros(1, 3, dtype=torch.long), position=126)


def test_bfloat16_split_is_exact(stories260k_path):
    m = load_model(stories260k_path, dtype=torch.bfloat16)
    prompt = torch.tensor([[1, 403, 407, 261]])
    ref, _ = reference_generate(m, prompt, 8)
    for mode, ell, w in (("split", 3, None), ("local-then-offload", 2, 4), ("cloud-only", 0, None)):
        assert generate(m, prompt, 8, mode, ell, w, LOSSLESS).tokens == ref
