"""The KV cache never copies its history: preallocated per-session buffers written in
place, and a batched step over sessions of different lengths and splits that attends
on views (exact greedy tokens against the unsplit model)."""
from __future__ import annotations

import asyncio

import pytest
import torch

from slicer.actors.models import load_model
from slicer.actors.models.cache import CacheFullError
from slicer.actors.models.generate import (
    EdgeSession,
    ServerSession,
    encode_ids,
    reference_generate,
    step_peak_bytes,
)
from slicer.actors.models.testing import TINY_LM, random_prompts
from slicer.actors.protocol import AdmissionError
from slicer.actors.server import Server, ServerConfig
from slicer.codec import CodecConfig, encode

LOSSLESS = CodecConfig(method="raw")

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module", params=["llama", "qwen2_sliding", "gpt2", "gpt_neox"])
def lm(request):
    return load_model(TINY_LM[request.param], seed=1)


def test_cache_is_written_in_place(lm):
    """Every step writes into the same buffers (same storage before and after), and the
    history a step attends to is a view of them, not a copy."""
    n = lm.num_units
    cache = lm.new_cache(1, n, capacity=20)
    ids = random_prompts(lm.config.vocab_size, (5,))[0]
    h = lm.run(0, 1, ids)
    lm.run(1, n, h, cache)
    ptrs = {lid: (k.data_ptr(), cache._v[lid].data_ptr()) for lid, k in cache._k.items()}
    hist = {lid: k[:, :, :5].clone() for lid, k in cache._k.items()}
    for t in range(3):
        lm.run(1, n, lm.run(0, 1, ids[:, :1], position=5 + t), cache)
    assert {lid: (k.data_ptr(), cache._v[lid].data_ptr()) for lid, k in cache._k.items()} == ptrs
    for lid, k in cache._k.items():
        assert k.shape[2] == 20  # sized once for the admitted context
        assert torch.equal(k[:, :, :5], hist[lid])  # history untouched by later writes
    assert cache.length == 8
    assert all(k.shape[2] == 8 for k, _ in cache.layers.values())
    assert cache.nbytes == sum(2 * k.numel() * k.element_size() for k in cache._k.values())


def test_capacity_is_enforced(lm):
    n = lm.num_units
    cache = lm.new_cache(1, n, capacity=4)
    h = lm.run(0, 1, random_prompts(lm.config.vocab_size, (5,))[0])
    with pytest.raises((CacheFullError, ValueError), match="capacity=4"):
        lm.run(1, n, h, cache)
    with pytest.raises(ValueError, match="capacity"):
        lm.run_batch(1, n, [h], [lm.new_cache(1, n, capacity=4)])
    with pytest.raises(ValueError, match="capacity"):
        lm.new_cache(1, n, capacity=0)
    c = lm.new_cache(1, n, capacity=8)
    with pytest.raises(ValueError, match="twice"):
        lm.run_batch(1, n, [h[:, :1], h[:, :1]], [c, c])


def test_growing_cache_without_capacity_matches_reference(lm):
    """A cache without a declared capacity grows by doubling and keeps its history."""
    p = random_prompts(lm.config.vocab_size, (3,))[0]
    toks, _ = reference_generate(lm, p, 40)  # 43 tokens through 16 -> 32 -> 64 buffers
    cache = lm.new_cache(0, lm.num_units, capacity=43)
    x, out = p, []
    for _ in range(40):
        out.append(int(lm.run(0, lm.num_units, x, cache)[0, -1].argmax()))
        x = torch.tensor([[out[-1]]])
    assert out == toks


def _step_allocations(lm, ell, lens):
    """Bytes allocated (sum over the step's ops) by one batched decode step over sessions
    with histories ``lens``, and the bytes of those histories."""
    from torch.profiler import ProfilerActivity, profile

    n = lm.num_units
    caches = [lm.new_cache(ell, n, capacity=120) for _ in lens]
    for c, p in zip(caches, random_prompts(lm.config.vocab_size, lens)):
        lm.run(ell, n, lm.run(0, ell, p), c)
    history = sum(c.nbytes * c.length // c.capacity for c in caches)
    xs = [lm.run(0, ell, torch.tensor([[5]]), position=L) for L in lens]
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        lm.run_batch(ell, n, xs, caches)
    assert [c.length for c in caches] == [L + 1 for L in lens]
    return sum(max(e.cpu_memory_usage, 0) for e in prof.key_averages()), history


def test_batched_step_does_not_restack_history(lm):
    """What a batched decode step allocates does not grow with the sessions' histories
    (the old path padded and stacked every session's cache each step, allocating more
    than the batch's whole KV cache): histories 12x longer add under a quarter of their
    bytes (what remains is the per-session attention scores, O(heads x context))."""
    short_alloc, short_hist = _step_allocations(lm, 1, (5, 3, 8, 2))
    long_alloc, long_hist = _step_allocations(lm, 1, (60, 36, 96, 24))
    assert long_alloc - short_alloc < 0.25 * (long_hist - short_hist), (short_alloc, long_alloc, long_hist)


def test_server_mixed_lengths_and_splits_give_unsplit_tokens(lm):
    """The server batches steps of sessions with different prompt lengths AND different
    splits (cloud-only included); every session gets exactly the unsplit greedy tokens."""
    n = lm.num_units
    splits = [0, 1, 2, n - 1, 1, 2]
    prompts = random_prompts(lm.config.vocab_size, (2, 9, 4, 1, 12, 6), seed=7)
    n_new = 7
    refs = [reference_generate(lm, p, n_new)[0] for p in prompts]
    server = Server(lm, ServerConfig(max_batch=16, batch_window_ms=50.0))

    async def one(i, p, split):
        mode = "cloud-only" if split == 0 else "split"
        edge = EdgeSession(lm, split, LOSSLESS, mode=mode)
        sid = server.open_session(f"dev-{i}", "r", split, p.shape[1] + n_new)
        st, pos, out = edge.begin(p), 0, []
        for k in range(n_new):
            res = await server.step(sid, st.payload, pos)
            pos += st.tokens_in_payload
            out.append(res.token)
            if k + 1 < n_new:
                st = edge.next(res.token)
        server.close_session(sid)
        return out

    async def main():
        return await asyncio.gather(*(one(i, p, s) for i, (p, s) in enumerate(zip(prompts, splits))))

    assert asyncio.run(main()) == refs
    assert max(server.batch_sizes) > 1  # steps of different splits and lengths were computed together


def test_server_session_buffers_are_sized_for_the_admitted_context(tiny_model):
    """The server preallocates a session's cache for its admitted context: the bytes it
    holds are what admission reserved."""
    m = tiny_model
    server = Server(m, ServerConfig())
    sid = server.open_session("d", "r", 2, 30)
    x = m.run(0, 2, torch.tensor([[3, 4, 5]]))
    server.step_now(sid, encode(x, LOSSLESS), 0)
    s = server._lookup_locked(sid)
    assert s.cache.nbytes == s.reserved_kv_bytes > 0
    with pytest.raises(Exception, match="admitted"):
        server.step_now(sid, encode(m.run(0, 2, torch.arange(28)[None] % 90 + 3, position=3), LOSSLESS), 3)
    sid2 = server.open_session("d", "r2", 0, 5)
    assert isinstance(server.step_now(sid2, encode_ids(torch.tensor([[3, 4]])), 0).token, int)


def test_other_threads_run_the_models_own_attention_during_a_batch():
    """The model's config is switched to the batched attention while a batched step runs;
    a single-session run of the same model in another thread meanwhile gets the model's
    own attention and the right result (the fuzz test shared one model between threads)."""
    import threading

    lm = load_model(TINY_LM["llama"], seed=1)
    n = lm.num_units
    ids = torch.tensor([[3, 9, 4, 7]])
    want = lm.run(0, n, ids)
    got, errors = [], []
    gate = threading.Event()

    def other():
        gate.wait(5)
        try:
            got.append(lm.run(0, n, ids))
        except Exception as e:  # noqa: BLE001
            errors.append(e)

    t = threading.Thread(target=other)
    t.start()
    caches = [lm.new_cache(1, n, capacity=8) for _ in range(2)]
    xs = [lm.run(0, 1, ids), lm.run(0, 1, ids[:, :2])]
    from slicer.actors.models import cache as C

    real = C._batch_attention

    def slow(*a, **k):  # hold the batch open while the other thread runs
        gate.set()
        if threading.current_thread() is not t:
            t.join(5)
        return real(*a, **k)

    from transformers import AttentionInterface

    AttentionInterface._global_mapping[C.ATTN_NAME] = slow
    try:
        lm.run_batch(1, n, xs, caches)
    finally:
        AttentionInterface._global_mapping[C.ATTN_NAME] = real
    t.join(5)
    assert not errors, errors
    torch.testing.assert_close(got[0], want, rtol=0, atol=1e-6)
    assert lm.config._attn_implementation != C.ATTN_NAME


# --- the transient memory of a batched step (admission reserves it) --------------------
def _transient_peak(fn) -> int:
    """Peak bytes the CPU allocator held during ``fn()`` above what it held before (the
    torch profiler's allocation events, whose running total is the allocator's)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    allocs = []

    def walk(node):
        if str(node.tag).endswith("Allocation"):
            allocs.append((node.start_time_ns, node.extra_fields.alloc_size, node.extra_fields.total_allocated))
        for ch in node.children:
            walk(ch)

    for root in prof.profiler.kineto_results.experimental_event_tree():
        walk(root)
    assert allocs, "the profiler recorded no allocation"
    allocs.sort()
    base = allocs[0][2] - allocs[0][1]
    return max(total for _, _, total in allocs) - base


@pytest.mark.parametrize("pasts,news", [
    ([0], [96]),  # one long prefill
    ([40] * 8, [1] * 8),  # eight decodes
    ([0] + [20] * 7, [60] + [1] * 7),  # a prefill among decodes: packed, never padded
    ([0] * 6, [30] * 6),  # six prefills at once (every device starts together)
])
def test_step_peak_bytes_bounds_what_a_batched_step_allocates(lm, pasts, news):
    """``step_peak_bytes`` (what admission reserves beside the KV caches) is at least
    what the torch profiler sees a batched server step allocate beyond its caches."""

    split = 1
    H = lm.config.hidden_size
    sess = [ServerSession(lm, split, capacity=128) for _ in pasts]
    g = torch.Generator().manual_seed(3)
    for s, p in zip(sess, pasts):
        if p:
            ServerSession.forward([s], [torch.randn(1, p, H, generator=g)], last_only=True)
    xs = [torch.randn(1, t, H, generator=g) for t in news]
    kv_before = sum(s.cache.nbytes for s in sess)
    peak = _transient_peak(lambda: ServerSession.forward(sess, xs, last_only=True))
    transient = peak - (sum(s.cache.nbytes for s in sess) - kv_before)  # buffers allocated at a first step are KV
    bound = step_peak_bytes(lm, news, [p + t for p, t in zip(pasts, news)])
    assert 0 < transient <= bound, (transient, bound)
    if sum(news) >= 30:  # (a few decode rows allocate next to nothing: no ratio to speak of)
        assert bound < 6 * transient, "the bound is so loose that admission would waste most of max_kv_bytes"


def test_admission_reserves_the_worst_batched_step(tiny_model):
    """A second session whose KV fits is refused when the batched prefill of both would
    not fit beside the caches; with room for that step it is admitted, and the step it
    can form really fits in ``max_kv_bytes`` (measured)."""

    m, split, T = tiny_model, 2, 24
    kv = int(m.profile.kv_bytes_per_token(split, m.num_units)) * T
    one_step = step_peak_bytes(m, [T])
    tight = 2 * kv + one_step  # both caches and ONE session's step: the KV-only check admits both
    server = Server(m, ServerConfig(max_kv_mib=tight / 2**20))
    server.open_session("a", "r", split, T)
    with pytest.raises(AdmissionError, match="worst batched step"):
        server.open_session("b", "r", split, T)
    assert server.stats()["step_reserve_bytes"] == one_step
    limit = 2 * kv + step_peak_bytes(m, [T, T])
    server = Server(m, ServerConfig(max_kv_mib=limit / 2**20))
    toks = [server.open_session(d, "r", split, T) for d in ("a", "b")]
    halves = [server._sessions[t.rpartition(".")[0]].half for t in toks]
    H = m.config.hidden_size
    xs = [torch.randn(1, T, H), torch.randn(1, T, H)]

    peak = _transient_peak(lambda: ServerSession.forward(halves, xs, last_only=True))
    assert sum(h.cache.nbytes for h in halves) == 2 * kv
    assert peak <= limit == server.cfg.max_kv_bytes  # caches allocated in the step + the step's own tensors
