"""SLICER reference: properties on odd shapes and dtypes, checked against a brute-force
reading of the spec (a full sort by the total order), not against the code's own helpers."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from slicer import codec
from slicer.codec import CodecConfig, CodecError, wire
from slicer.codec.reference.atkf import keep_count, score_weights, tie_hash
from slicer.codec.slicer import SLICER, inspect

SHAPES = [(1,), (7,), (3, 257), (2, 3, 5, 7), (17, 64), (1, 64), ()]
DTYPES = [torch.float32, torch.float16, torch.bfloat16]
KINDS = ["gauss", "ints", "equal", "zeros", "heavy"]


def make(kind: str, shape, dtype, seed: int) -> torch.Tensor:
    g = np.random.default_rng(seed)
    n = math.prod(shape)
    if kind == "gauss":
        a = g.standard_normal(n)
    elif kind == "ints":  # heavy ties, both signs
        a = g.integers(-3, 4, n).astype(np.float64)
    elif kind == "equal":
        a = np.full(n, 1.5 if seed % 2 else -0.75)
    elif kind == "zeros":  # fewer nonzeros than k
        a = np.where(g.random(n) < 0.1, g.standard_normal(n), 0.0)
    else:  # outlier-heavy: a few huge channels
        a = g.standard_normal(n) * np.where(g.random(n) < 0.02, 100.0, 1.0)
    return torch.from_numpy(a).reshape(shape).to(dtype)


def brute_force(x32: np.ndarray, cfg: CodecConfig):
    """The spec by full sorts: kept set, then per sign the block of each kept position."""
    n = x32.shape[0]
    k = keep_count(n, cfg.sparsity)
    wp, wn = score_weights(cfg.asymmetry)
    score = np.abs(x32) * np.where(x32 > 0, wp, wn).astype(np.float32) if cfg.asymmetry else np.abs(x32)
    idx = np.arange(n)
    h = tie_hash(idx, cfg.seed).astype(np.int64)
    order = np.lexsort((h, -score.astype(np.float64)))  # score desc, hash asc
    kept = np.sort(order[:k])
    label = {}
    for sign, m, off in ((0, cfg.blocks[0], 0), (1, cfg.blocks[1], cfg.blocks[0])):
        sel = kept[(x32[kept] < 0) == bool(sign)]
        mag = np.abs(x32[sel]).astype(np.float64)
        o = sel[np.lexsort((h[sel], -mag))]
        base, extra = divmod(o.shape[0], m)
        sizes = [base + (j < extra) for j in range(m)]
        start = 0
        for j, s in enumerate(sizes):
            for p in o[start : start + s]:
                label[int(p)] = off + j
            start += s
    return kept, label


config_st = st.builds(
    CodecConfig,
    method=st.just("slicer"),
    sparsity=st.sampled_from([0.0, 0.3, 0.5, 0.75, 0.9, 0.99]),
    asymmetry=st.sampled_from([0.0, 0.25, 0.6]),
    blocks=st.sampled_from([(1, 1), (3, 3), (2, 5), (4, 1)]),
    bits=st.sampled_from([1, 3, 8, 12, 16]),
    delta=st.sampled_from([None, 0.01, 0.5, 2.0]),
    index=st.sampled_from(["auto", "csr", "bitmap", "rice", "ef"]),
    entropy=st.booleans(),
    seed=st.integers(0, 2**32 - 1),
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    shape=st.sampled_from(SHAPES),
    dtype=st.sampled_from(DTYPES),
    kind=st.sampled_from(KINDS),
    data_seed=st.integers(0, 1000),
    cfg=config_st,
)
def test_properties(shape, dtype, kind, data_seed, cfg):
    x = make(kind, shape, dtype, data_seed)
    x32 = x.float().reshape(-1).numpy()
    payload = codec.encode(x, cfg)
    p = inspect(payload)
    # exactly k kept, and exactly the spec's set and blocks
    k = keep_count(x32.shape[0], cfg.sparsity)
    assert p.k == k and p.positions.shape[0] == k
    kept, label = brute_force(x32, cfg)
    assert np.array_equal(np.sort(p.positions), kept)
    got = {}
    start = 0
    for b, sz in enumerate(p.sizes.tolist()):
        for q in p.positions[start : start + sz].tolist():
            got[q] = b
        start += sz
    assert got == label
    # equal cardinalities per sign
    for s, m in ((slice(0, cfg.blocks[0]), cfg.blocks[0]), (slice(cfg.blocks[0], None), cfg.blocks[1])):
        sz = p.sizes[s]
        assert sz.max() - sz.min() <= 1 and list(sz) == sorted(sz, reverse=True)
    # round trip: kept within half a step (+ float32 rounding), dropped exactly 0
    y = codec.decode(payload)
    assert y.shape == x.shape and y.dtype == x.dtype
    y32 = y.float().reshape(-1).numpy()
    dropped = np.ones(x32.shape[0], dtype=bool)
    dropped[kept] = False
    assert np.all(y32[dropped] == 0)
    y_f32 = SLICER.decode(wire.unpack(payload)).reshape(-1).numpy()  # before the cast to dtype
    levels = (2.0 ** p.widths.astype(np.float64)) - 1
    start = 0
    for b, sz in enumerate(p.sizes.tolist()):
        q = p.positions[start : start + sz]
        start += sz
        if not sz:
            continue
        d = float(p.hi[b]) - float(p.lo[b])
        tol = 0.5 * d / levels[b] * (1 + 1e-4) + 4 * float(np.spacing(np.float32(p.hi[b])))
        if d < 1e-30:
            tol = d + 4 * float(np.spacing(np.float32(p.hi[b])))
        err = np.abs(y_f32[q].astype(np.float64) - x32[q].astype(np.float64))
        assert np.all(err <= tol), (b, err.max(), tol)
        assert np.all(y_f32[q] < 0) if b >= cfg.blocks[0] else np.all(y_f32[q] >= 0)
    # widths: ≤ q_bit with ABQ, equal to the config otherwise
    if cfg.fixed_bits:
        assert np.all(p.widths == cfg.bits)
    else:
        assert np.all(p.widths <= cfg.bits) and np.all(p.widths >= 1)
    # payload size against the model
    body = sum(len(s) for s in wire.unpack(payload).sections)
    bound = SLICER.predict_bytes(shape, x.dtype, cfg)
    assert body <= bound and len(payload) <= codec.predict_bytes(shape, cfg, x.dtype)
    if cfg.fixed_bits and cfg.index in ("csr", "bitmap", "ef") and not cfg.entropy and isinstance(cfg.bits, int):
        assert body == bound


@settings(max_examples=60, deadline=None)
@given(
    shape=st.sampled_from(SHAPES[:-1]),
    kind=st.sampled_from(KINDS),
    data_seed=st.integers(0, 1000),
    cfg=config_st,
    dtype=st.sampled_from([torch.float32, torch.float64]),
)
def test_decode_is_idempotent_with_fixed_widths(shape, kind, data_seed, cfg, dtype):
    cfg = cfg.replace(delta=None, entropy=False)
    x = make(kind, shape, dtype, data_seed)
    y = codec.decode(codec.encode(x, cfg))
    z = codec.decode(codec.encode(y, cfg))
    assert torch.equal(y, z)


@pytest.mark.parametrize("bits", [8, (8, 4, 2), 3])
@pytest.mark.parametrize("shape", [(3, 257), (17, 64)])
def test_reencode_gives_identical_bytes_without_ties(shape, bits):
    g = np.random.default_rng(1)
    n = math.prod(shape)
    mags = (g.permutation(n) + 1.0) * 0.01  # distinct magnitudes, all nonzero
    x = torch.from_numpy(mags * np.where(g.random(n) < 0.5, -1.0, 1.0)).float().reshape(shape)
    cfg = CodecConfig(sparsity=0.6, bits=bits, delta=None, blocks=(3, 3), seed=5)
    p1 = codec.encode(x, cfg)
    p2 = codec.encode(codec.decode(p1), cfg)
    assert p1 == p2


def test_seed_reproducible_and_changes_tied_selection():
    x = torch.full((8, 32), 2.0)
    a = codec.encode(x, CodecConfig(sparsity=0.5, seed=1))
    assert a == codec.encode(x.clone(), CodecConfig(sparsity=0.5, seed=1))
    b = codec.encode(x, CodecConfig(sparsity=0.5, seed=2))
    assert a != b
    ka = set(inspect(a).positions.tolist())
    kb = set(inspect(b).positions.tolist())
    assert len(ka) == len(kb) == 128 and ka != kb


def test_asymmetry_keeps_more_negatives():
    g = np.random.default_rng(0)
    v = np.abs(g.standard_normal(2048)).astype(np.float32) + 0.01
    x = torch.from_numpy(g.permutation(np.concatenate([v, -v])))  # symmetric
    negs = []
    for lam in (0.0, 0.3):
        p = inspect(codec.encode(x, CodecConfig(sparsity=0.75, asymmetry=lam)))
        negs.append(p.k - p.n_pos)
    assert negs[1] > negs[0] + 200  # λ = 0.3: τ- = -0.7τ, τ+ = 1.3τ


def test_abq_widths_monotone_in_delta():
    g = np.random.default_rng(3)
    x = torch.from_numpy(g.standard_normal((64, 64)).astype(np.float32))
    prev = None
    for delta in (0.0, 0.01, 0.3, 0.5, 0.7, 1.0, 4.0, 100.0):
        w = inspect(codec.encode(x, CodecConfig(bits=8, delta=delta))).widths
        assert np.all(w <= 8)
        if prev is not None:
            assert np.all(w <= prev)
        prev = w
    assert np.all(prev == 1)  # δ = 100 passes every width


def test_abq_matches_the_literal_greedy_rule():
    """DS recomputed here from Eq. 9 for one block, every candidate width."""
    g = np.random.default_rng(4)
    x = torch.from_numpy(g.standard_normal(600).astype(np.float32))
    cfg = CodecConfig(sparsity=0.0, blocks=(1, 1), bits=6, delta=0.55)
    p = inspect(codec.encode(x, cfg))
    v = np.abs(x.numpy()[p.positions[: p.sizes[0]]])
    lo, hi = v.min(), v.max()

    def codes(q):
        inv = np.float32((1 << q) - 1) / np.float32(hi - lo)
        return np.clip(np.rint((v - lo) * inv), 0, (1 << q) - 1).astype(np.int64)

    t0, want = codes(6), 6
    for q in range(5, 0, -1):
        if np.abs((t0 >> (6 - q)) - codes(q)).sum() <= math.floor(0.55 * v.shape[0]):
            want = q
        else:
            break
    assert p.widths[0] == want


def test_fixed_q_list_needs_one_width_per_block():
    x = torch.randn(4, 16)
    with pytest.raises(CodecError, match=r"bits.*blocks"):
        codec.encode(x, CodecConfig(bits=(8, 4), blocks=(3, 3)))
    with pytest.raises(CodecError, match=r"bits.*blocks"):
        codec.predict_bytes((4, 16), CodecConfig(bits=(8, 4), blocks=(3, 3)))
    p = inspect(codec.encode(x, CodecConfig(bits=(8, 4, 2), blocks=(3, 3))))
    assert p.widths.tolist() == [8, 4, 2, 8, 4, 2]


def test_q_list_bound_is_the_worst_sign_split():
    cfg = CodecConfig(bits=(8, 2), blocks=(2, 2), delta=None, index="bitmap", sparsity=0.0)
    bound = SLICER.predict_bytes((3,), torch.float32, cfg)
    sizes = []
    for signs in ([1, 1, 1], [1, 1, -1], [1, -1, -1], [-1, -1, -1]):
        x = torch.tensor(signs, dtype=torch.float32) * torch.tensor([3.0, 2.0, 1.0])
        sizes.append(sum(len(s) for s in wire.unpack(codec.encode(x, cfg)).sections))
    assert max(sizes) == bound


def test_entropy_values_decode_like_packed():
    g = np.random.default_rng(5)
    x = torch.from_numpy(g.laplace(size=(64, 128)).astype(np.float32))
    plain = codec.encode(x, CodecConfig(sparsity=0.5))
    ent = codec.encode(x, CodecConfig(sparsity=0.5, entropy=True))
    assert torch.equal(codec.decode(plain), codec.decode(ent))
    assert len(ent) < len(plain)  # the magnitude blocks are far from uniform
    assert len(ent) <= codec.predict_bytes(x.shape, CodecConfig(sparsity=0.5, entropy=True))


def test_rotate_is_refused():
    with pytest.raises(CodecError, match="rotate"):
        codec.encode(torch.randn(8), CodecConfig(rotate=True))


def test_kept_zeros_are_positive_and_counted():
    x = torch.tensor([0.0, -0.0, 3.0, 0.0, -2.0, 0.0])
    p = inspect(codec.encode(x, CodecConfig(sparsity=0.0, blocks=(1, 1))))
    assert p.k == 6 and p.n_pos == 5
    y = codec.decode(codec.encode(x, CodecConfig(sparsity=0.0, blocks=(1, 1), bits=8, delta=None)))
    assert y.tolist() == [0.0, 0.0, 3.0, 0.0, -2.0, 0.0] and not torch.signbit(y[1])


def _resections(payload: bytes, sections: list[bytes]) -> bytes:
    f = wire.unpack(payload)
    return wire.pack(1, f.dtype, f.shape, sections)


@pytest.mark.parametrize("index", ["csr", "bitmap", "rice", "ef"])
@pytest.mark.parametrize("entropy", [False, True])
def test_corrupt_sections_raise_codec_error_only(index, entropy):
    """Mutations behind a valid checksum: every byte flipped, every section truncated or
    extended. The decoder may accept a mutation that is still a valid payload, but may
    raise nothing but CodecError."""
    g = np.random.default_rng(6)
    x = torch.from_numpy(g.standard_normal((3, 37)).astype(np.float32))
    payload = codec.encode(x, CodecConfig(sparsity=0.7, index=index, entropy=entropy, delta=0.6))
    secs = [bytes(s) for s in wire.unpack(payload).sections]
    cases = []
    for i, s in enumerate(secs):
        for j in range(len(s)):
            for bit in (0, 3, 7):
                m = bytearray(s)
                m[j] ^= 1 << bit
                cases.append(secs[:i] + [bytes(m)] + secs[i + 1 :])
        cases.append(secs[:i] + [s[:-1]] + secs[i + 1 :])
        cases.append(secs[:i] + [s + b"\x00"] + secs[i + 1 :])
        cases.append(secs[:i] + [s + b"\xff"] + secs[i + 1 :])
    cases.append(secs[:3])
    for c in cases:
        bad = _resections(payload, c)
        try:
            y = SLICER.decode(wire.unpack(bad))
        except CodecError:
            continue
        assert y.shape == x.shape and bool(torch.isfinite(y).all())


def test_predict_bytes_of_a_per_token_feature_is_small():
    """(1, 64), the per-token feature of the tiny model: metadata must not dominate."""
    cfg = CodecConfig(sparsity=0.75, blocks=(1, 1))
    x = torch.randn(1, 64)
    n = len(codec.encode(x, cfg))
    assert n <= codec.predict_bytes((1, 64), cfg) <= 64 * 2  # below raw float16


def test_float64_beyond_float32_is_refused_and_extremes_round_trip():
    with pytest.raises(CodecError, match="finite"):
        codec.encode(torch.tensor([1e300, 1.0], dtype=torch.float64), CodecConfig())
    x = torch.tensor([3e38, -3e38, 1.0, -1.0, -3.4e38, 2.0])
    for lam in (0.0, 0.9):  # λ = 0.9: scores of the negatives overflow to inf, ties by hash
        y = codec.decode(codec.encode(x, CodecConfig(sparsity=0.5, asymmetry=lam, blocks=(1, 1))))
        assert torch.isfinite(y).all() and (y != 0).sum() == 3
        assert set(torch.nonzero(y).flatten().tolist()) == {0, 1, 4}


def test_random_section_mutations_behind_a_valid_checksum():
    """1,000 random mutations (bytes rewritten, sections cut, grown or replaced, the header
    shape changed) of payloads of every index coding: CodecError or a finite tensor."""
    g = np.random.default_rng(7)
    base = []
    for coding in ("csr", "bitmap", "rice", "ef"):
        for entropy in (False, True):
            x = torch.from_numpy(g.standard_normal((3, 37)).astype(np.float32))
            cfg = CodecConfig(sparsity=float(g.choice([0.3, 0.7, 0.95])), index=coding, entropy=entropy,
                              delta=float(g.choice([0.01, 0.3, 0.6])), blocks=(int(g.integers(1, 5)), int(g.integers(1, 5))))
            base.append(wire.unpack(codec.encode(x, cfg)))
    for it in range(1000):
        f = base[it % len(base)]
        secs = [bytearray(s) for s in f.sections]
        i, op = int(g.integers(0, 4)), int(g.integers(0, 4))
        if op == 0 and secs[i]:
            for _ in range(int(g.integers(1, 4))):
                secs[i][int(g.integers(0, len(secs[i])))] = int(g.integers(0, 256))
        elif op == 1:
            secs[i] = secs[i][: int(g.integers(0, len(secs[i]) + 1))]
        elif op == 2:
            secs[i] += bytes(g.integers(0, 256, int(g.integers(1, 9))).astype(np.uint8))
        else:
            secs[i] = bytearray(g.integers(0, 256, len(secs[i])).astype(np.uint8))
        shape = f.shape if g.random() < 0.8 else tuple(int(d) for d in g.integers(0, 50, int(g.integers(0, 3))))
        frame = wire.Frame(1, torch.float32, shape, tuple(memoryview(bytes(s)) for s in secs))
        try:
            y = SLICER.decode(frame)
        except CodecError:
            continue
        assert tuple(y.shape) == shape and bool(torch.isfinite(y).all())
