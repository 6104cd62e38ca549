"""The server's batched step over sessions of different lengths equals one by one."""
from __future__ import annotations

import pytest
import torch

from slicer.actors.models import load_model
from slicer.actors.models.generate import EdgeSession, ServerSession, reference_generate
from slicer.actors.models.testing import TINY_LM, generate_batched, random_prompts
from slicer.codec import CodecConfig

LOSSLESS = CodecConfig(method="raw")


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module", params=["llama", "mistral", "qwen2_sliding", "gpt2", "gpt_neox"])
def lm(request):
    return load_model(TINY_LM[request.param], seed=0)


def test_run_batch_equals_one_by_one(lm):
    n = lm.num_units
    ell = 2
    prompts = random_prompts(lm.config.vocab_size, (3, 9, 1, 6))
    edge, one, bat = [], [], []
    for p in prompts:
        ce = lm.new_cache(0, ell)
        edge.append((ce, lm.run(0, ell, p, ce)))
        one.append(lm.new_cache(ell, n))
        bat.append(lm.new_cache(ell, n))
    # step 1: prefills of different lengths in one batch
    xs = [h for _, h in edge]
    ref = [lm.run(ell, n, x, c) for x, c in zip(xs, one)]
    got = lm.run_batch(ell, n, xs, bat)
    for r, g in zip(ref, got):
        assert g.shape == r.shape
        torch.testing.assert_close(g, r, atol=1e-5, rtol=0)
    assert [c.length for c in bat] == [3, 9, 1, 6]
    # steps 2..: one new token each, and a 2-token chunk for one session
    for step in range(4):
        xs = []
        for i, (ce, _) in enumerate(edge):
            t = 2 if (i == 1 and step == 0) else 1
            ids = torch.randint(3, lm.config.vocab_size, (1, t), generator=torch.Generator().manual_seed(10 * step + i))
            xs.append(lm.run(0, ell, ids, ce))
        ref = [lm.run(ell, n, x, c) for x, c in zip(xs, one)]
        got = lm.run_batch(ell, n, xs, bat)
        for r, g in zip(ref, got):
            torch.testing.assert_close(g, r, atol=1e-5, rtol=0)
            assert torch.equal(g[0, -1].argmax(), r[0, -1].argmax())
    for c1, c2 in zip(one, bat):
        assert c1.length == c2.length
        for lid in c1.layers:
            torch.testing.assert_close(c2.layers[lid][0], c1.layers[lid][0], atol=1e-5, rtol=0)


@pytest.mark.parametrize("split", [0, 1, 3])
def test_server_step_batch_gives_each_session_its_greedy_tokens(lm, split):
    """Sessions with different prompt lengths, stepped together by the server (cloud-only
    when split == 0), produce exactly the unsplit model's greedy tokens."""
    prompts = random_prompts(lm.config.vocab_size, (2, 7, 4), seed=split)
    n_new = 6
    refs = [reference_generate(lm, p, n_new)[0] for p in prompts]
    mode = "cloud-only" if split == 0 else "split"
    edges = [EdgeSession(lm, split, LOSSLESS, mode=mode) for _ in prompts]
    servers = [ServerSession(lm, split) for _ in prompts]
    assert generate_batched(edges, servers, prompts, n_new) == refs


def test_run_batch_rejects_bad_input(lm):
    n = lm.num_units
    c = lm.new_cache(1, n)
    with pytest.raises(ValueError, match="batch 1"):
        lm.run_batch(1, n, [torch.zeros(2, 1, 32)], [c])
    with pytest.raises(ValueError, match="caches"):
        lm.run_batch(1, n, [torch.zeros(1, 1, 32)], [])
    with pytest.raises(ValueError, match="segment"):
        lm.run_batch(1, n, [torch.zeros(1, 1, 32)], [lm.new_cache(2, n)])


def test_server_session_checks_hostile_payloads_before_compute():
    """The checks the server relies on live in ``ServerSession.decode_payload`` (the one
    server path): declared shape before decoding, room, vocabulary, finiteness, position."""
    from slicer.actors.models.generate import PayloadError, encode_ids
    from slicer.codec import encode

    m = load_model(TINY_LM["llama"], seed=0)
    h = m.config.hidden_size
    two = len(encode(torch.ones(1, 2, h), LOSSLESS))
    s = ServerSession(m, 2, capacity=8, max_payload_bytes=two)
    bomb = encode(torch.zeros(1, 9, h), CodecConfig(method="ecsq"))  # 9 tokens > capacity 8
    with pytest.raises(PayloadError, match=rf"declares shape \(1, 9, {h}\)"):
        s.decode_payload(bomb, 0)
    with pytest.raises(PayloadError, match="NaN or Inf"):
        s.decode_payload(encode(torch.full((1, 2, h), float("nan")), LOSSLESS), 0)
    with pytest.raises(PayloadError, match=f"max_payload_bytes={two}"):
        s.decode_payload(encode(torch.zeros(1, 8, h), LOSSLESS), 0)
    with pytest.raises(PayloadError, match="position 3"):
        s.decode_payload(encode(torch.zeros(1, 2, h), LOSSLESS), 3)
    with pytest.raises(PayloadError, match="magic"):
        s.decode_payload(b"\0" * 40, 0)
    assert s.decode_payload(encode(torch.ones(1, 2, h), LOSSLESS), 0).shape == (1, 2, h)
    assert s.cache.length == 0  # checking computes nothing
    ids = ServerSession(m, 0, capacity=8)
    with pytest.raises(PayloadError, match="outside"):
        ids.decode_payload(encode_ids(torch.tensor([[1, m.config.vocab_size]])), 0)
    assert ids.decode_payload(encode_ids(torch.tensor([[1, 2]])), 0).tolist() == [[1, 2]]


def test_server_computes_through_server_session(monkeypatch):
    """``Server`` has no compute of its own: every step goes through
    ``ServerSession.forward``, the code ``generate``/eval/fidelity use."""
    from slicer.actors.server import Server

    m = load_model(TINY_LM["llama"], seed=0)
    calls = []
    real = ServerSession.forward

    def spy(sessions, xs, *, last_only=False):
        calls.append(len(sessions))
        return real(sessions, xs, last_only=last_only)

    monkeypatch.setattr(ServerSession, "forward", staticmethod(spy))
    server = Server(m)
    sid = server.open_session("d", "r", 2, 16)
    edge = EdgeSession(m, 2, LOSSLESS)
    st = edge.begin(torch.tensor([[5, 6, 7]]))
    ref = ServerSession(m, 2)
    want = ref.step(st.payload)
    calls.clear()
    res = server.step_now(sid, st.payload, 0)
    assert calls == [1] and res.token == want and res.batch_size == 1 and res.position == 0


def test_a_session_never_outgrows_the_position_table_and_a_few_bytes_never_declare_huge_work():
    """Admission caps a session at the model's position table (a step past it would fail
    its whole batch group inside the model), and a session with no capacity and no table
    (generate, eval, fidelity) still refuses a tiny payload that declares a huge T."""
    from slicer.actors.models import load_model
    from slicer.actors.models.generate import PayloadError, ServerSession
    from slicer.actors.models.testing import TINY_LM
    from slicer.actors.protocol import AdmissionError
    from slicer.actors.server import Server, ServerConfig
    from slicer.codec import CodecConfig, encode

    gpt2 = load_model(dict(TINY_LM["gpt2"], n_positions=32))
    server = Server(gpt2, ServerConfig())
    with pytest.raises(AdmissionError, match=r"max_tokens=64 is invalid: allowed an integer 1\.\.32"):
        server.open_session("d", "d/r0", 1, 64)
    assert server.open_session("d", "d/r1", 1, 32)

    llama = load_model(TINY_LM["llama"])
    sess = ServerSession(llama, 2)  # no capacity; llama declares no position table here
    h = llama.adapter.hidden_size
    big = encode(torch.zeros(1, 2**20, h), CodecConfig.parse("ecsq:rate=4"))  # a few dozen bytes
    assert len(big) < 200
    with pytest.raises(PayloadError, match="declares shape"):
        sess.decode_payload(big)
