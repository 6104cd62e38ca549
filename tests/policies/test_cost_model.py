"""Latency (Eq. 2, Eq. 5) and memory models, checked by hand on a toy profile."""
import pytest
from policy_helpers import toy_device, toy_llm

from slicer.codec import CodecConfig
from slicer.policies import Budgets, CostModel, LinkState, comm_latency_s

MODEL = toy_llm(n_blocks=4, hidden=256, vocab=1000, block_params=1_000_000, kv_per_token=2048)
DEV = toy_device(bandwidth=1e9, flops=100e9, memory=1e9)


def fixed_payload(shape, cfg, dtype):
    return 100 * shape[0]  # 100 bytes per token, whatever the codec


def fixed_codec_time(shape, cfg, device, decode=False):
    return 1e-3  # 1 ms per encode


def cm(b, link=None):
    return CostModel(MODEL, DEV, link or LinkState.from_mbps(1), b, payload_bytes=fixed_payload, codec_time=fixed_codec_time)


def test_eq2_per_token_split_by_hand():
    b = Budgets(latency_s=1.0, memory_bytes=1e9, new_tokens=4)
    c = cm(b)
    link = c.link
    est = c.evaluate(3, 1, "float32", CodecConfig())
    l_d = c.range_s(DEV, 0, 3, "float32", 3, 1)  # last step: context p0 + N - 2 = 1 + 4 - 2
    assert est.step_latency_s == pytest.approx(l_d + comm_latency_s(100, link, 1e-3))
    # L_d by hand: embed lookup (256 x 4 B) + 2 blocks of 4 MB at 1 GB/s = ~8 ms.
    assert l_d == pytest.approx(2 * 4e-3, rel=0.01)


def test_eq5_local_then_offload_by_hand():
    b = Budgets(latency_s=1.0, memory_bytes=1e9, new_tokens=8)
    c = cm(b)
    w, ell = 4, 3
    est = c.evaluate(ell, w, "float32", CodecConfig())
    full = lambda ctx, t=1: c.range_s(DEV, 0, MODEL.num_layers, "float32", ctx, t)
    # Steps 1..3 local (contexts 0, 1, 2; trapezoid over 2..3 is exact for a line),
    # step 4: [0, 3) on one token at context 3, then x_l^w of 4 tokens = 400 bytes.
    local = full(0, 1) + 2 * (full(1) + full(2)) / 2
    partial = c.range_s(DEV, 0, ell, "float32", 3, 1)
    expected = local + partial + comm_latency_s(400, c.link, 1e-3)
    assert est.handoff_latency_s == pytest.approx(expected)
    assert est.handoff_bytes == 400 and est.bytes_per_token == 100
    assert est.handoff_budget_s == pytest.approx(w * b.latency_s)


def test_memory_scales_with_precision_and_context():
    b = Budgets(latency_s=1.0, memory_bytes=1e9, new_tokens=64)
    c = cm(b)
    mem = {p: c.front_memory_bytes(3, p, 64) for p in ("float32", "float16", "int8", "int4")}
    assert mem["float32"] > mem["float16"] > mem["int8"] > mem["int4"]
    # Weights of embed + 2 blocks = 256e3 + 2e6 params; float32 - float16 = 2 bytes each.
    assert mem["float32"] - mem["float16"] == pytest.approx(2 * (256_000 + 2_000_000))
    # KV of 2 blocks grows 2 x 2048 bytes per token.
    assert c.front_memory_bytes(3, "float32", 128) - c.front_memory_bytes(3, "float32", 64) == pytest.approx(64 * 2 * 2048)


def test_server_time_counts_the_back_segment_for_every_step():
    b = Budgets(latency_s=1.0, memory_bytes=1e9, new_tokens=8)
    c = cm(b)
    cloud = c.cloud_server_time_s()
    split = c.evaluate(3, 1, "float32", CodecConfig()).server_time_s
    later = c.evaluate(3, 8, "float32", CodecConfig()).server_time_s
    assert cloud > split > later > 0  # a later hand-off spares the server more steps
    assert c.evaluate(MODEL.num_layers, None, "float32", None).server_time_s == 0


def test_bad_budgets_name_the_field():
    with pytest.raises(ValueError, match="Budgets.latency_s"):
        Budgets(latency_s=0, memory_bytes=1)
    with pytest.raises(ValueError, match="Budgets.new_tokens"):
        Budgets(latency_s=1, memory_bytes=1, new_tokens=0)
