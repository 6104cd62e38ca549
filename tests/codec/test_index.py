"""Index codings (csr, bitmap, rice, ef), labels, auto, and the bit packers they use."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from slicer import codec
from slicer.codec import CodecConfig, CodecError, wire
from slicer.codec.reference import index
from slicer.codec.reference.bitpack import pack_bits, unpack_bits

CODINGS = ["csr", "bitmap", "rice", "ef"]


def _case(shape, k, nblocks, seed):
    g = np.random.default_rng(seed)
    n = math.prod(shape)
    k = min(k, n)
    pos = np.sort(g.choice(n, size=k, replace=False)).astype(np.int64)
    labels = g.integers(0, nblocks, k).astype(np.int64)
    sizes = np.bincount(labels, minlength=nblocks)
    return pos, labels, sizes


@settings(max_examples=120, deadline=None)
@given(
    shape=st.sampled_from([(1,), (5,), (3, 257), (2, 3, 5, 7), (17, 64), (4, 0), (1, 70000)]),
    density=st.sampled_from([0.0, 0.01, 0.1, 0.25, 0.5, 0.9, 1.0]),
    nblocks=st.sampled_from([2, 3, 6, 17, 128]),
    seed=st.integers(0, 10_000),
    clustered=st.booleans(),
)
def test_round_trip_and_sizes(shape, density, nblocks, seed, clustered):
    n = math.prod(shape)
    k = int(density * n)
    pos, labels, sizes = _case(shape, k, nblocks, seed)
    if clustered and k:  # one dense run: long zero gaps around it stress Rice/EF
        start = np.random.default_rng(seed).integers(0, n - k + 1)
        pos = np.arange(start, start + k, dtype=np.int64)
    order = np.argsort(labels, kind="stable")
    want = pos[order]  # block-major, ascending within a block
    sizes_by_coding = {}
    for coding in CODINGS:
        cid, idx, lab = index.encode(coding, pos, labels, shape, nblocks)
        assert cid == index.CODING_IDS[coding]
        got = index.decode(cid, idx, lab, shape, sizes)
        assert np.array_equal(got, want), coding
        sizes_by_coding[coding] = len(idx) + len(lab)
        assert sizes_by_coding[coding] == index.index_nbytes(coding, shape, k, nblocks, pos)
        assert sizes_by_coding[coding] <= index.index_nbytes(coding, shape, k, nblocks)  # bound w/o data
    best = index.choose("auto", shape, pos, nblocks)
    assert sizes_by_coding[best] == min(sizes_by_coding.values())


def test_auto_in_payload_is_the_smallest():
    g = np.random.default_rng(0)
    for density, shape in ((0.02, (64, 64)), (0.5, (64, 64)), (0.99, (1, 4))):
        x = torch.from_numpy(g.standard_normal(shape).astype(np.float32))
        lens = {}
        for coding in ["auto"] + CODINGS:
            secs = wire.unpack(codec.encode(x, CodecConfig(sparsity=1 - density, index=coding))).sections
            lens[coding] = len(secs[1]) + len(secs[2])
        assert lens["auto"] == min(lens[c] for c in CODINGS)


@pytest.mark.parametrize("bits", [*range(1, 17), 17, 24, 31, 32])
def test_pack_bits_is_the_lsb_first_stream(bits):
    """Against a bit-by-bit construction of the frozen layout, and round trip."""
    g = np.random.default_rng(bits)
    for n in (0, 1, 7, 1001):
        c = g.integers(0, 1 << bits, n)
        stream = [(int(v) >> j) & 1 for v in c for j in range(bits)]
        stream += [0] * (-len(stream) % 8)
        want = bytes(sum(b << i for i, b in enumerate(stream[k : k + 8])) for k in range(0, len(stream), 8))
        buf = pack_bits(c, bits)
        assert buf == want
        assert np.array_equal(unpack_bits(buf, n, bits), c)
        if (n * bits) % 8:
            bad = buf[:-1] + bytes((buf[-1] | 0x80,))
            with pytest.raises(CodecError, match="padding"):
                unpack_bits(bad, n, bits)


def test_decoders_reject_noncanonical_and_bad_streams():
    shape, n = (100,), 100
    pos = np.array([3, 50, 99])
    lab = np.array([0, 1, 0])
    sizes = np.array([2, 1])
    _, bm, lb = index.encode("bitmap", pos, lab, shape, 2)
    with pytest.raises(CodecError, match="positions"):
        index.decode(1, bm, lb, shape, np.array([2, 2]))  # k=4 but 3 bits set
    with pytest.raises(CodecError, match="padding"):
        bad = bytearray(bm)
        bad[-1] |= 0x80  # bit 103 > N
        index.decode(1, bytes(bad), lb, shape, sizes)
    with pytest.raises(CodecError, match="sizes"):
        index.decode(1, bm, pack_bits(np.array([0, 0, 0]), 1), shape, sizes)
    _, rc, _ = index.encode("rice", pos, lab, shape, 2)
    with pytest.raises(CodecError):
        index.decode(2, rc + b"\x00", lb, shape, sizes)
    with pytest.raises(CodecError):
        index.decode(2, bytes([30]) + rc[1:], lb, shape, sizes)  # r not a candidate
    _, ef, _ = index.encode("ef", pos, lab, shape, 2)
    with pytest.raises(CodecError):
        index.decode(3, ef[:-1], lb, shape, sizes)
    _, cs, _ = index.encode("csr", pos, lab, shape, 2)
    bad = bytearray(cs)
    bad[0] = 99  # block 0's first column 3 -> 99: no longer ascending before 50
    with pytest.raises(CodecError):
        index.decode(0, bytes(bad), b"", shape, sizes)
    with pytest.raises(CodecError, match="label section"):
        index.decode(0, cs, b"\x00", shape, sizes)
    with pytest.raises(CodecError, match="unknown"):
        index.decode(7, cs, b"", shape, sizes)
    assert n == 100


# --- on real activations (stories260k) -------------------------------------------------------


@pytest.fixture(scope="module")
def activations(stories260k_path):
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_pretrained(str(stories260k_path)).eval()
    ids = torch.randint(3, model.config.vocab_size, (1, 512), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        hs = model(ids, output_hidden_states=True).hidden_states
    return [h[0].float() for h in hs[1:]]  # per layer: (512, 64)


def test_index_costs_match_notes_at_4096_per_row(activations):
    """NOTES.md "Index cost, N = 4096 per row" at s = 0.75: bitmap 1.00, Rice ~0.82,
    Elias-Fano 1.00, CSR-16 4.01 bits per element (positions only, one block)."""
    from slicer.codec.reference.atkf import atkf_positions, keep_count

    x = activations[2].reshape(-1, 4096)  # (8, 4096)
    xf = x.reshape(-1).numpy()
    k = keep_count(xf.shape[0], 0.75)
    pos = atkf_positions(xf, k, 0.0, 0)
    n = xf.shape[0]
    bpe = {
        "bitmap": index.bitmap_nbytes(n) * 8 / n,
        "rice": (index.rice_choose(pos, n)[1] - 1) * 8 / n,
        "ef": index.ef_nbytes(n, k) * 8 / n,
        "csr16": index.csr_nbytes(tuple(x.shape), k, 1) * 8 / n,
    }
    p = k / n
    entropy = -(p * math.log2(p) + (1 - p) * math.log2(1 - p))
    assert bpe["bitmap"] == 1.0
    assert abs(bpe["ef"] - 1.0) < 0.01
    assert abs(bpe["csr16"] - 4.01) < 0.01
    assert entropy - 0.01 < bpe["rice"] < 0.86, bpe


def test_auto_index_costs_at_most_half_of_csr(activations):
    """Issue 3: on trained-model activations at s = 0.75 the chosen index coding (labels
    included) costs at most half of the paper's CSR."""
    for layer in (1, 2, 4):
        x = activations[layer]  # (512, 64)
        sec = {}
        for coding in ("auto", "csr"):
            s = wire.unpack(codec.encode(x, CodecConfig(sparsity=0.75, index=coding))).sections
            sec[coding] = len(s[1]) + len(s[2])
        assert sec["auto"] <= 0.5 * sec["csr"], (layer, sec)


def test_very_sparse_positions_use_wide_low_parts():
    """N/k > 2^17: Rice and Elias-Fano low parts wider than 16 bits (generic packer path)."""
    pos = np.array([5, 300000, 700001, 1048575])
    lab = np.array([0, 1, 1, 0])
    sizes = np.array([2, 2])
    want = np.array([5, 1048575, 300000, 700001])
    for coding in CODINGS:
        cid, idx, lb = index.encode(coding, pos, lab, (1 << 20,), 2)
        assert np.array_equal(index.decode(cid, idx, lb, (1 << 20,), sizes), want)
        if coding == "rice":
            assert idx[0] > 16
