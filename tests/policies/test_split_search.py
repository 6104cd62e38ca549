"""Split selection (Eq. 3, Eq. 6) and SLICER-SEARCH's three tiers, on hand-built profiles."""
import math

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from policy_helpers import toy_device, toy_llm, toy_vision

from slicer.codec import CodecConfig
from slicer.policies import (
    AccuracyTable,
    Budgets,
    CostModel,
    LinkState,
    SearchSpace,
    plan,
    reassess,
)

MODEL = toy_llm(n_blocks=8, hidden=256, block_params=1_000_000)  # 4 MB per block at float32
DEV = toy_device(bandwidth=1e9, flops=100e9, memory=1e9)          # 4 ms per block per decode step
NO_LOSSLESS = SearchSpace(lossless_first=False)


def budgets(latency_ms=1000.0, memory_mb=1000.0, tokens=32, **kw):
    return Budgets(latency_s=latency_ms / 1e3, memory_bytes=memory_mb * 1e6, new_tokens=tokens, **kw)


def slicer(link, b, **kw):
    return plan("slicer", MODEL, DEV, link, b, kw.pop("accuracy", None), **kw)


def check_meets_budgets(p, link, b, model=MODEL, dev=DEV):
    """A feasible plan meets its budgets under the very models it was planned with."""
    assert p.feasible
    assert p.predicted_memory_bytes <= b.memory_bytes
    assert p.predicted_latency_s <= b.latency_s
    w = p.offload_step
    hand_budget = b.handoff_latency_s or (b.latency_s * (w or 1))
    assert p.predicted_handoff_latency_s <= hand_budget
    if b.ar_buffer_bytes is not None and w is not None:
        assert p.handoff_bytes <= b.ar_buffer_bytes
    cfg = CodecConfig.parse(p.codec_spec) if (w is not None and p.split > 0) else None
    est = CostModel(model, dev, link, b).evaluate(p.split, w, p.front_precision, cfg)
    assert est.feasible, est.violations
    assert est.step_latency_s == pytest.approx(p.predicted_latency_s)
    assert est.memory_bytes == pytest.approx(p.predicted_memory_bytes)
    assert reassess(p, model, dev, link, b)


def test_ample_budgets_offload_nothing():
    link = LinkState.from_mbps(5)
    b = budgets(latency_ms=1000, memory_mb=1000)
    p = slicer(link, b)
    assert p.feasible and p.offload_step is None and p.split == MODEL.num_layers
    assert p.tier == 0 and p.server_time_s == 0 and p.bytes_per_token == 0
    assert p.server_spared == 1.0
    assert "nothing to offload" in p.reason
    check_meets_budgets(p, link, b)


def test_memory_sets_the_deepest_split():
    # Embed (1000 x 256 x 4 = 1.024 MB) + k blocks of 4 MB + KV: 14 MB allows 3 blocks.
    link = LinkState.from_mbps(5)
    b = budgets(memory_mb=14)
    p = slicer(link, b)
    assert p.feasible and p.split == 4 and p.offload_step == 1  # embed + 3 blocks
    assert p.binding == "memory" and "split 5 needs" in p.reason
    check_meets_budgets(p, link, b)


def _latencies(link, b, ell, cfgs):
    cm = CostModel(MODEL, DEV, link, b)
    return [cm.evaluate(ell, 1, "float32", c).step_latency_s for c in cfgs]


def test_tier1_tunes_blocks():
    link = LinkState.from_mbps(1)
    b0 = budgets(memory_mb=14)
    grid = NO_LOSSLESS.blocks
    lat = _latencies(link, b0, 4, [NO_LOSSLESS.config(0.0, m, 8) for m in grid])
    assert lat[0] < lat[-1]  # more blocks, more metadata bytes on the wire
    # Ample latency: the finest blocks win (the prior prefers finer quantization).
    p = slicer(link, budgets(memory_mb=14, latency_ms=lat[-1] * 1e3 + 1), space=NO_LOSSLESS)
    assert (p.split, p.tier, p.sparsity, p.blocks) == (4, 1, 0.0, grid[-1])
    # A budget between the cheapest and the finest block count: tier 1 alone settles it
    # (no sparsity added), with fewer blocks.
    b = budgets(memory_mb=14, latency_ms=(lat[0] + lat[-1]) / 2 * 1e3)
    p = slicer(link, b, space=NO_LOSSLESS)
    assert p.tier == 1 and p.split == 4 and p.sparsity == 0.0 and p.blocks != grid[-1]
    assert "tier 1" in p.reason
    check_meets_budgets(p, link, b)


def test_tier1_prefers_lossless_when_it_fits():
    link = LinkState.from_mbps(5)
    p = slicer(link, budgets(memory_mb=14))
    assert p.tier == 1 and p.method == "raw" and p.accuracy == 1.0


def test_tier2_raises_sparsity():
    link = LinkState.from_mbps(1)
    b0 = budgets(memory_mb=14)
    s_lat = _latencies(link, b0, 4, [NO_LOSSLESS.config(s, (1, 1), 8) for s in NO_LOSSLESS.sparsities])
    assert s_lat == sorted(s_lat, reverse=True)  # more sparsity, fewer bytes, less time
    # Below every s = 0 setting, above s = 0.75: sparsity must rise, the split stays.
    b = budgets(memory_mb=14, latency_ms=(s_lat[0] + s_lat[4]) / 2 * 1e3)
    p = slicer(link, b, space=NO_LOSSLESS)
    assert p.tier == 2 and p.split == 4 and 0.0 < p.sparsity <= 0.75
    assert "tier 2" in p.reason
    check_meets_budgets(p, link, b)


def test_tier3_retreats_the_split():
    link = LinkState.from_mbps(1)
    b0 = budgets(memory_mb=14)
    most = NO_LOSSLESS.config(NO_LOSSLESS.sparsities[-1], (1, 1), 8)
    at4, at2 = _latencies(link, b0, 4, [most])[0], _latencies(link, b0, 2, [most])[0]
    assert at2 < at4  # two blocks (8 ms) less edge compute
    b = budgets(memory_mb=14, latency_ms=(at2 + at4) / 2 * 1e3)
    p = slicer(link, b, space=NO_LOSSLESS)
    assert p.tier == 3 and p.split in (2, 3)
    assert p.binding == "latency" and "tier 3" in p.reason and "retreated" in p.reason
    check_meets_budgets(p, link, b)


def test_infeasible_memory_names_the_first_unit():
    p = slicer(LinkState.from_mbps(5), budgets(memory_mb=0.5))
    assert not p.feasible and p.binding == "memory"
    assert "first unit (embed)" in p.reason and "MiB > memory budget" in p.reason


def test_infeasible_latency_names_the_shallowest_split():
    p = slicer(LinkState.from_mbps(0.01), budgets(latency_ms=1, memory_mb=14))
    assert not p.feasible and p.binding == "latency"
    assert "shallowest split (1)" in p.reason and "0.01 Mbit/s" in p.reason


def test_infeasible_link_says_capacity():
    p = slicer(LinkState.from_mbps(100), budgets(memory_mb=14))
    assert not p.feasible and p.binding == "link" and "capacity" in p.reason
    assert math.isinf(p.predicted_latency_s) and p.to_dict()["predicted_latency_ms"] is None


def test_ar_buffer_cap_eq6():
    link = LinkState.from_mbps(5)
    free = slicer(link, budgets(memory_mb=14), space=NO_LOSSLESS)
    capped = slicer(link, budgets(memory_mb=14, ar_buffer_bytes=free.handoff_bytes - 1), space=NO_LOSSLESS)
    assert capped.feasible and capped.handoff_bytes < free.handoff_bytes
    check_meets_budgets(capped, link, budgets(memory_mb=14, ar_buffer_bytes=free.handoff_bytes - 1))


def test_local_then_offload_when_the_kv_cache_outgrows_memory():
    # The whole model (8 x 4 MB + embed + head = 34 MB) fits, but its KV cache of
    # 8 x 2048 B per token does not for 1024 tokens (16.8 MB): decode locally first,
    # hand off later (1 < w <= N).
    link = LinkState.from_mbps(5)
    b = budgets(memory_mb=45, tokens=1024, latency_ms=500)
    p = slicer(link, b)
    assert p.feasible and p.offload_step is not None and 1 < p.offload_step < 1024
    assert p.handoff_bytes > p.bytes_per_token  # x_l^w carries every token so far
    check_meets_budgets(p, link, b)
    # Enough memory for the whole request: no offload at all.
    assert slicer(link, budgets(memory_mb=80, tokens=1024, latency_ms=500)).offload_step is None


def test_accuracy_table_picks_the_least_lossy_setting():
    link = LinkState.from_mbps(1)
    b0 = budgets(memory_mb=14)
    s_lat = _latencies(link, b0, 4, [NO_LOSSLESS.config(s, (1, 1), 8) for s in NO_LOSSLESS.sparsities])
    b = budgets(memory_mb=14, latency_ms=(s_lat[0] + s_lat[4]) / 2 * 1e3)
    chosen = slicer(link, b, space=NO_LOSSLESS)
    # A table that says 2 blocks lose least at the chosen sparsity makes the search take it.
    spec2 = NO_LOSSLESS.config(chosen.sparsity, (2, 2), 8).spec()
    rows = [{"split": 4, "codec": NO_LOSSLESS.config(chosen.sparsity, m, 8).spec(), "next_token_agreement": 0.5}
            for m in NO_LOSSLESS.blocks]
    rows.append({"split": 4, "codec": spec2, "next_token_agreement": 0.9})
    p = slicer(link, b, space=NO_LOSSLESS, accuracy=AccuracyTable.from_rows(rows))
    assert p.blocks == (2, 2) and p.accuracy == 0.9 and p.accuracy_source == "table"
    # A floor above every measured value rules those settings out.
    p = slicer(link, b.replace(min_accuracy=0.95), space=NO_LOSSLESS, accuracy=AccuracyTable.from_rows(rows))
    assert p.sparsity > chosen.sparsity or p.split < 4 or not p.feasible


def test_accuracy_rows_are_validated():
    with pytest.raises(ValueError, match="missing key 'next_token_agreement'"):
        AccuracyTable.from_rows([{"split": 1, "codec": "slicer"}])
    with pytest.raises(ValueError, match="not a codec spec"):
        AccuracyTable.from_rows([{"split": 1, "codec": "nonsense", "next_token_agreement": 1}])


# -- monotonicity ---------------------------------------------------------------------------

RATES = st.floats(0.05, 30.0)


@settings(max_examples=25, deadline=None)
@given(RATES, RATES, st.floats(10.0, 200.0))
@example(3.89, 4.658, 10.0)  # the nominally lower rate is the better link here
def test_lower_rate_never_deeper_nor_sparser_at_same_split(r1, r2, latency_ms):
    """A worse link never gets a deeper split or a denser payload. "Worse" is the lower
    goodput R / attempts, which Eq. 1's ceil makes non-monotone in R: 3.89 Mbit/s needs 2
    attempts (1.95 effective), 4.658 needs 3 (1.55), and hypothesis found such pairs."""
    lo, hi = sorted((r1, r2), key=lambda r: r / LinkState.from_mbps(r).transmissions)
    b = budgets(memory_mb=30, latency_ms=latency_ms)
    p_lo = slicer(LinkState.from_mbps(lo), b, space=NO_LOSSLESS)
    p_hi = slicer(LinkState.from_mbps(hi), b, space=NO_LOSSLESS)
    if p_lo.feasible:
        assert p_hi.feasible
        assert p_lo.split <= p_hi.split
        if p_lo.split == p_hi.split and p_lo.offload_step == p_hi.offload_step:
            assert p_lo.sparsity >= p_hi.sparsity
        check_meets_budgets(p_lo, LinkState.from_mbps(lo), b)


@settings(max_examples=25, deadline=None)
@given(st.floats(1.0, 60.0), st.floats(1.0, 60.0), st.floats(0.2, 20.0))
def test_more_memory_never_shallower(m1, m2, rate):
    lo, hi = sorted((m1, m2))
    link = LinkState.from_mbps(rate)
    p_lo = slicer(link, budgets(memory_mb=lo, latency_ms=80))
    p_hi = slicer(link, budgets(memory_mb=hi, latency_ms=80))
    if p_lo.feasible:
        assert p_hi.feasible and p_hi.split >= p_lo.split
        check_meets_budgets(p_lo, link, budgets(memory_mb=lo, latency_ms=80))


def test_link_degradation_retreats_eq3_single_shot():
    model, dev = toy_vision(), toy_device(bandwidth=1e9, flops=20e9, memory=1e9)
    b = Budgets(latency_s=0.2, memory_bytes=1e9)
    splits = []
    for rate in (20, 5, 1, 0.2):
        p = plan("slicer", model, dev, LinkState.from_mbps(rate), b, space=NO_LOSSLESS)
        splits.append(p.split if p.feasible else -1)
        if p.feasible:
            check_meets_budgets(p, LinkState.from_mbps(rate), b, model, dev)
    assert splits == sorted(splits, reverse=True)
    # Ample: the whole network runs on the device (edge-only).
    p = plan("slicer", model, dev, LinkState.from_mbps(5), Budgets(latency_s=10, memory_bytes=1e9))
    assert p.offload_step is None and p.split == model.num_layers


def test_accuracy_table_files_and_nearest_split(tmp_path):
    rows = [{"split": 2, "codec": "slicer:sparsity=0.5", "next_token_agreement": 0.8},
            {"split": 6, "codec": "slicer:sparsity=0.5", "next_token_agreement": 0.9, "front_precision": "int8"},
            {"split": 6, "codec": "lossless", "next_token_agreement": 1.0, "extra_key": "ignored"}]
    p = tmp_path / "acc.jsonl"
    p.write_text("\n".join(__import__("json").dumps(r) for r in rows))
    t = AccuracyTable.load(p)
    cfg = CodecConfig(method="slicer", sparsity=0.5, blocks=(3, 3))  # same as the spec's defaults
    assert t.lookup(2, cfg) == (0.8, False)
    assert t.lookup(3, cfg) == (0.8, False)  # nearest measured split of the same setting
    assert t.lookup(6, cfg, "int8") == (0.9, True)
    assert t.lookup(6, CodecConfig(method="slicer", sparsity=0.9)) is None
    from slicer.policies import accuracy_of

    assert accuracy_of(3, CodecConfig(method="slicer", sparsity=0.9), "float32", t)[1] == "prior"
    assert accuracy_of(2, cfg, "int4", t) == (pytest.approx(0.8 * 0.97), "table")
