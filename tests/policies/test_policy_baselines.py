"""Baseline policies, OPSC's joint choice, plan() dispatch and PolicyState hysteresis."""
import pytest
from policy_helpers import toy_device, toy_llm

from slicer.codec import CodecConfig
from slicer.policies import Budgets, CostModel, LinkState, PolicyState, plan, policy_names

MODEL = toy_llm(n_blocks=8, hidden=256, block_params=1_000_000)
DEV = toy_device(bandwidth=1e9, flops=100e9, memory=1e9)
SERVER = toy_device(name="toy-server", bandwidth=100e9, flops=10e12, memory=80e9)


def b(latency_ms=200.0, memory_mb=20.0, tokens=32, **kw):
    return Budgets(latency_s=latency_ms / 1e3, memory_bytes=memory_mb * 1e6, new_tokens=tokens, **kw)


def test_every_policy_answers():
    link = LinkState.from_mbps(5)
    for name in policy_names():
        p = plan(name, MODEL, DEV, link, b(), server=SERVER)
        assert p.policy == name and p.reason
        d = p.to_dict()
        for k in ("split", "offload_step", "sparsity", "blocks", "bits", "front_precision", "predicted_latency_ms",
                  "predicted_memory_mib", "bytes_per_token", "server_time_ms", "tier", "feasible", "reason"):
            assert k in d


def test_unknown_policy_is_a_clear_error():
    with pytest.raises(ValueError, match="allowed slicer"):
        plan("magic", MODEL, DEV, LinkState.from_mbps(5), b())


def test_cloud_only_runs_everything_on_the_server():
    p = plan("cloud-only", MODEL, DEV, LinkState.from_mbps(5), b(), server=SERVER)
    assert p.split == 0 and p.offload_step == 1 and p.bytes_per_token == 4 and p.predicted_memory_bytes == 0
    assert p.server_time_s == pytest.approx(p.cloud_server_time_s) and p.server_spared == pytest.approx(0.0)


def test_server_time_shrinks_as_the_split_deepens():
    cm = CostModel(MODEL, DEV, LinkState.from_mbps(5), b(), server=SERVER)
    raw = CodecConfig(method="raw")
    times = [cm.evaluate(ell, 1, "float32", raw if ell else None).server_time_s for ell in range(MODEL.num_layers)]
    assert times == sorted(times, reverse=True) and times[0] > times[-1] > 0
    assert cm.evaluate(MODEL.num_layers, None, "float32", None).server_time_s == 0


def test_edge_only_infeasible_names_memory():
    p = plan("edge-only", MODEL, DEV, LinkState.from_mbps(5), b(memory_mb=20))
    assert not p.feasible and p.binding == "memory" and p.split == MODEL.num_layers


def test_fixed_split_is_fixed():
    p = plan("fixed-split", MODEL, DEV, LinkState.from_mbps(5), b(), split=3)
    assert p.split == 3 and p.method == "raw" and p.bits == 32
    with pytest.raises(ValueError, match="allowed 1..9"):
        plan("fixed-split", MODEL, DEV, LinkState.from_mbps(5), b(), split=0)


def test_neurosurgeon_minimises_end_to_end_latency():
    link = LinkState.from_mbps(5)
    bb = b(memory_mb=1000, latency_ms=1000)
    p = plan("neurosurgeon", MODEL, DEV, link, bb, server=SERVER)
    cm = CostModel(MODEL, DEV, link, bb, server=SERVER)
    raw = CodecConfig(method="raw")

    def e2e(ell):
        est = cm.evaluate(ell, None if ell == MODEL.num_layers else 1, "float32", raw if 0 < ell < MODEL.num_layers else None)
        srv = cm.range_s(SERVER, ell, MODEL.num_layers, "float32", bb.context_tokens, 1)
        return est.step_latency_s + srv

    best = min(range(MODEL.num_layers + 1), key=e2e)
    assert e2e(p.split) == pytest.approx(e2e(best))
    # A slow server pushes Neurosurgeon onto the edge.
    slow = toy_device(name="slow-server", bandwidth=0.1e9, flops=1e9, memory=80e9)
    assert plan("neurosurgeon", MODEL, DEV, link, bb, server=slow).split > p.split


def test_opsc_lowers_precision_before_giving_up_context():
    link = LinkState.from_mbps(5)
    # 12 MB: at float32 only ~2 blocks fit; at int4 (0.625 B/param) every block does.
    p32 = plan("slicer", MODEL, DEV, link, b(memory_mb=12))
    po = plan("opsc", MODEL, DEV, link, b(memory_mb=12), precisions=("float32", "int8", "int4"), objective="edge")
    assert po.feasible and po.front_precision in ("int8", "int4") and po.split > p32.split
    # Accuracy first: the most accurate precision that has any feasible split.
    pa = plan("opsc", MODEL, DEV, link, b(memory_mb=12), precisions=("float32", "int8", "int4"))
    assert pa.front_precision == "float32" and pa.tokens == 32


def test_opsc_shortens_the_sequence_when_nothing_else_fits():
    # Huge per-token KV, tiny weights, and the edge must run at least two blocks
    # (min_split 3): 2 x 1 MB per token fits 40 MB for < 20 tokens, so of the grid
    # 256, 128, 64, 32, 16 only 16 fits.
    model = toy_llm(n_blocks=4, hidden=64, block_params=1000, kv_per_token=1_000_000)
    link = LinkState.from_mbps(5)
    budget = b(memory_mb=40, tokens=256, latency_ms=1000)
    p = plan("opsc", model, DEV, link, budget, precisions=("float32",), min_split=3)
    assert p.feasible and p.tokens == 16 and p.split >= 3 and "longest feasible context 16" in p.reason
    assert not plan("slicer", model, DEV, link, budget, min_split=3).feasible


def test_policy_state_hysteresis():
    link_good, link_bad = LinkState.from_mbps(5), LinkState.from_mbps(0.3)
    st = PolicyState("slicer", MODEL, DEV, b(memory_mb=14, latency_ms=60), options={"server": SERVER}, patience=2)
    p0 = st.update(link_good)
    assert p0.feasible
    p1 = st.update(link_bad)  # degraded: the current plan no longer fits -> switch at once
    assert p1 is not p0 and (p1.split, p1.codec_spec) != (p0.split, p0.codec_spec) and st.switches == 1
    p2 = st.update(link_good)  # recovered: a better plan must be proposed `patience` times
    assert p2 is p1
    p3 = st.update(link_good)
    assert (p3.split, p3.codec_spec) == (p0.split, p0.codec_spec) and st.switches == 2
    # Memory report: less memory forces a shallower split at once.
    p4 = st.update(memory_bytes=8e6)
    assert p4.split < p3.split


def test_options_a_policy_does_not_take_are_named():
    with pytest.raises(ValueError, match=r"policy 'slicer' takes no option\(s\) \['split'\]"):
        plan("slicer", MODEL, DEV, LinkState.from_mbps(5), b(), split=3)
