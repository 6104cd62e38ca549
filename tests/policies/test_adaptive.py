"""Adaptive re-planning from measurement (goodput, compute), workload budget knobs, rate
traces, and the runtime cap of a plan's sequence length. Edge, server and policy run
in-process (no Ray)."""
from __future__ import annotations

import time

import pytest
import torch
from policy_helpers import toy_device, toy_llm

from slicer.actors import telemetry as tel
from slicer.actors.edge import EdgeConfig, EdgeDevice, InProcessPolicy, InProcessServer
from slicer.actors.policy_actor import Policy, PolicyConfig
from slicer.actors.protocol import BudgetSpec, EmulationSpec, LinkSpec, Plan, Request
from slicer.actors.server import Server, ServerConfig
from slicer.codec import CodecConfig
from slicer.orchestrator.workload import WorkloadError, parse_workload
from slicer.policies import Budgets, LinkState, SearchSpace, plan
from slicer.policies.api import PolicyState
from slicer.policies.link import RateTrace, comm_latency_s, goodput_bps, load_rate_trace
from tests.actors.conftest import TINY_LLAMA
from tests.actors.conftest import greedy_reference as greedy

PROMPT = [1, 5, 9, 13, 2]


@pytest.fixture(scope="module")
def tiny():
    from slicer.actors.models import load_model

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield load_model(dict(TINY_LLAMA), seed=3)
    torch.set_num_threads(n)


# -- the pure part: smoothing and hysteresis --------------------------------------------------

MODEL = toy_llm(n_blocks=8, hidden=256, block_params=1_000_000)
DEV = toy_device(bandwidth=1e9, flops=100e9, memory=1e9)


def _state():
    st = PolicyState("slicer", MODEL, DEV, Budgets(latency_s=0.03, memory_bytes=30e6, new_tokens=64), patience=2)
    p0 = st.update(link=LinkState.from_mbps(20))
    return st, p0


def test_noise_within_the_dead_band_keeps_the_plan():
    st, p0 = _state()
    g = goodput_bps(LinkState.from_mbps(20))
    for f in (1.1, 0.9, 1.15, 0.88, 1.05):
        p, ev = st.observe(goodput_bps=g * f)
        assert ev is None and p is p0
    assert st.switches == 0


def test_a_measured_drop_replans_at_once_and_recovery_waits():
    st, p0 = _state()
    # The link announced 20 Mbit/s; the edge measures 0.3 Mbit/s of goodput.
    p1, ev = st.observe(goodput_bps=0.3e6)
    assert ev is not None and not ev["plan_held"] and "breaks a budget" in ev["why"]
    assert (p1.split, p1.codec_spec) != (p0.split, p0.codec_spec)
    assert p1.sparsity > p0.sparsity or p1.split < p0.split
    assert "measured goodput" in p1.link and ev["goodput_est_mbps"] == pytest.approx(0.3)
    # Recovery: upgrades wait for `patience` reports of the better plan.
    g = goodput_bps(LinkState.from_mbps(20))
    seen = []
    for _ in range(6):
        _, ev = st.observe(goodput_bps=g)
        seen.append(ev is not None)
    assert seen[0] is False and any(seen)  # not on the first good sample
    assert st.current.sparsity <= p1.sparsity


def test_link_fit_separates_per_message_time_from_goodput():
    """t = 1 ms + B / 20 Mbit/s: the fit recovers both, so small payloads do not read as a
    slow link (the pure B/t estimate would say 1.1 Mbit/s for a 150 B payload and push the
    plan to ever smaller payloads)."""
    from slicer.policies.api import _fit_link

    t = lambda b: 1e-3 + b * 8 / 20e6
    st, p0 = _state()
    sizes = [5000, 150, 150, 160, 150, 4000, 150, 150]
    for b in sizes:
        st.observe(payload_bytes=b, transfer_s=t(b))
    assert st.goodput_est == pytest.approx(20e6, rel=1e-6) and st.overhead_est == pytest.approx(1e-3, rel=1e-6)
    # A plan under the fit pays the per-message time on every payload.
    assert "measured goodput 20 Mbit/s" in st.current.link and p0.feasible
    naive, _ = _state()
    naive.observe(goodput_bps=150 * 8 / t(150))
    assert naive.goodput_est < 1.2e6  # what B/t alone makes of a 150 B payload
    # Equal sizes cannot separate the two: no per-message term, goodput = bits / seconds.
    assert _fit_link([(1200.0, 0.002)] * 4, 0.5) == (pytest.approx(6e5), 0.0)


def test_measured_compute_scales_the_device():
    st, p0 = _state()
    cm_pred = p0.predicted_latency_s
    # The edge computes 20x slower than the profile says: the plan must retreat.
    from slicer.policies.models import CostModel

    per_step = CostModel(MODEL, DEV, st.link, st.budgets).range_s(DEV, 0, p0.split, p0.front_precision, 64, 1)
    p, ev = st.observe(compute_s=20 * per_step, context=64)
    assert st.compute_scale == pytest.approx(20.0)
    assert ev is not None and (p.split < p0.split or not p.feasible)
    assert cm_pred > 0


def test_bad_measurements_are_refused():
    st, _ = _state()
    for bad in (0.0, -1.0, float("nan"), float("inf"), True):
        with pytest.raises(ValueError, match="goodput_bps"):
            st.observe(goodput_bps=bad)
    with pytest.raises(ValueError, match="first plan"):
        PolicyState("slicer", MODEL, DEV, Budgets(latency_s=1, memory_bytes=1e9)).observe(goodput_bps=1e6)
    with pytest.raises(ValueError, match="goodput_bps"):
        LinkState(rate_bps=1e6, goodput_bps=0.0)


def test_measured_goodput_link_model():
    link = LinkState.from_mbps(20).replace(goodput_bps=1e6)
    assert comm_latency_s(1000, link) == pytest.approx(8e-3) and link.transmissions == 1
    assert "measured goodput 1 Mbit/s" == link.describe()


# -- rate traces ------------------------------------------------------------------------------

def test_rate_traces_parse_and_refuse(tmp_path):
    t = RateTrace.from_rows([{"t_s": 0, "rate_mbps": 20}, {"t_s": 2.5, "rate_mbps": 1}])
    assert [t.rate_mbps_at(x) for x in (0, 2.49, 2.5, 100)] == [20, 20, 1, 1]
    (tmp_path / "drive.csv").write_text("t_s,rate_mbps,km\n0,30,0\n10,5,1\n20,0.5,2\n")
    assert load_rate_trace(tmp_path / "drive.csv").rates_mbps == (30.0, 5.0, 0.5)
    (tmp_path / "drive.yaml").write_text("- {t_s: 0, rate_mbps: 8}\n- {t_s: 1, rate_mbps: 2}\n")
    assert load_rate_trace(tmp_path / "drive.yaml").times_s == (0, 1)
    for rows, msg in (([], "1..4096"), ([{"t_s": 1, "rate_mbps": 2}], "starting at 0"),
                      ([{"t_s": 0, "rate_mbps": 2}, {"t_s": 0, "rate_mbps": 3}], "ascending"),
                      ([{"t_s": 0, "rate_mbps": -2}], "rate_mbps"), ([{"t_s": 0, "rate_mbps": float("nan")}], "rate_mbps"),
                      ([{"t_s": 0, "rate": 2}], "exactly t_s, rate_mbps"), ("nope", "list"),
                      ([{"t_s": i, "rate_mbps": 1} for i in range(5000)], "1..4096")):
        with pytest.raises(ValueError, match=msg):
            RateTrace.from_rows(rows)
    with pytest.raises(ValueError, match="header"):
        RateTrace.parse_csv("time,rate\n0,1\n")
    with pytest.raises(ValueError, match="not numbers"):
        RateTrace.parse_csv("t_s,rate_mbps\n0,fast\n")


def test_workload_knobs_and_trace_parse():
    base = {"name": "w", "model": "slicer-tiny", "policy": {"name": "slicer", "adapt": True}, "inputs": {"prompts": [[1, 2, 3]]},
            "devices": [{"class": "raspberry-pi-5", "emulation": {"link": True},
                         "budgets": {"latency_ms": 50, "handoff_ms": 400, "ar_buffer_bytes": 64000, "min_accuracy": 0.9},
                         "link_trace": [{"t_s": 0, "rate_mbps": 20}, {"t_s": 3, "rate_mbps": 0.5}]}]}
    wl = parse_workload(base)
    g = wl.devices[0]
    assert (g.budgets.handoff_ms, g.budgets.ar_buffer_bytes, g.budgets.min_accuracy) == (400, 64000, 0.9)
    assert g.link_trace == ((0, 20), (3, 0.5)) and wl.policy.adapt is True
    for path, val, msg in ((("budgets", "min_accuracy"), 1.5, "min_accuracy"), (("budgets", "ar_buffer_bytes"), -1, "ar_buffer_bytes"),
                           (("budgets", "handoff_ms"), "fast", "handoff_ms"),
                           (("link_trace",), [{"t_s": 0, "rate_mbps": 0}], "link_trace")):
        bad = {**base, "devices": [dict(base["devices"][0])]}
        d = bad["devices"][0]
        if len(path) == 2:
            d[path[0]] = {**d[path[0]], path[1]: val}
        else:
            d[path[0]] = val
        with pytest.raises(WorkloadError, match=msg):
            parse_workload(bad)
    no_emu = {**base, "devices": [{**base["devices"][0], "emulation": {}}]}
    with pytest.raises(WorkloadError, match="needs emulation.link: true"):
        parse_workload(no_emu)
    with pytest.raises(WorkloadError, match="adapt"):
        parse_workload({**base, "policy": {"name": "slicer", "adapt": "yes"}})


def test_workload_budgets_reach_the_planner(tiny):
    """handoff_ms, ar_buffer_bytes and min_accuracy of a device become Budgets of its plans."""
    from slicer.actors.policy_actor import _budgets_of, _Device
    from slicer.policies.devices import get_device

    dev = _Device("d", "raspberry-pi-5", LinkSpec(rate_mbps=20),
                  BudgetSpec(latency_ms=50, handoff_ms=400, ar_buffer_bytes=64e3, min_accuracy=0.9), None)
    b = _budgets_of(PolicyConfig(), get_device("raspberry-pi-5"), dev)
    assert (b.handoff_latency_s, b.ar_buffer_bytes, b.min_accuracy) == (0.4, 64e3, 0.9)


# -- the runtime: edges measure, the policy re-plans ----------------------------------------

def _edge(tiny, policy_cfg, **cfg):
    server = Server(tiny, ServerConfig())
    policy = Policy(policy_cfg, tiny.profile)
    edge = EdgeDevice(EdgeConfig(device_id="dev-0", device_class="raspberry-pi-5", **cfg), "unused",
                      InProcessServer(server), InProcessPolicy(policy), model=tiny)
    return edge, policy, server


def _split_budget_mb(tiny) -> float:
    """A memory budget (MiB) below edge-only's: the plan must send features."""
    from slicer.policies.devices import get_device

    b = Budgets(latency_s=0.05, memory_bytes=1e9, new_tokens=8, prompt_tokens=len(PROMPT))
    p = plan("slicer", tiny.profile, get_device("raspberry-pi-5"), LinkState.from_mbps(20), b,
             space=SearchSpace(sparsities=(0.0,)))
    return 0.9 * p.predicted_memory_bytes / 2**20


def test_degrading_link_replans_from_measured_goodput_tokens_exact(tiny):
    """The emulated link follows a trace that drops from 20 to 0.02 Mbit/s; the workload's
    link still says 20 (the policy is never told the trace). The edge's measured goodput
    makes the policy re-plan; the re-plan is in policy.jsonl (trigger measured, with the
    figure) and in the trace; a forced lossless codec keeps every token exact."""
    tel.init_tracing("test")
    try:
        cap = _split_budget_mb(tiny)
        edge, policy, _ = _edge(
            tiny, PolicyConfig(name="slicer", adapt=True, new_tokens=8, prompt_tokens=len(PROMPT)),
            link=LinkSpec(rate_mbps=20.0), budgets=BudgetSpec(latency_ms=20, memory_mib=cap),
            codec=CodecConfig(method="raw"), emulation=EmulationSpec(link=True), adapt=True,
            link_trace=RateTrace((0.0, 0.3), (20.0, 0.02)))
        first = edge.plan
        assert first.split < tiny.num_units and first.feasible
        recs = [edge.generate(Request("r0", 0, tuple(PROMPT), 8))]
        time.sleep(max(0.0, 0.35 - (time.time() - recs[0].t_start)))
        for i in (1, 2):
            recs.append(edge.generate(Request(f"r{i}", i, tuple(PROMPT), 8)))
        spans = tel.drain()
    finally:
        tel.init_tracing("test", enabled=False)
    ref = greedy(tiny, PROMPT, 8)
    assert all(r.ok and r.tokens == ref for r in recs), [r.error for r in recs]
    # (Measured compute may re-plan too: this CPU is no raspberry-pi-5 roofline.)
    measured = [d for d in policy.decisions() if d["trigger"] == "measured" and d["measured"]["goodput_mbps"] < 1.0]
    assert measured, policy.decisions()
    d = measured[0]
    assert d["changed"] and d["measured"]["goodput_mbps"] < 1.0 and "measured goodput" in d["reason"]
    assert d["link"]["rate_mbps"] == 20.0  # the announced link never changed: the measurement did it
    replans = [e for r in recs for e in r.replans]
    assert replans and all(e.applies == "next request" for e in replans)  # lossless forced: no codec switch
    assert any(s["name"] == "policy.report" and "slicer.replan" in s["attributes"]
               and s["attributes"].get("slicer.measured_goodput_mbps", 99) < 1.0 for s in spans)
    assert any(s["name"] == "policy.decide" and s["attributes"].get("slicer.replan_measured_goodput_mbps") for s in spans)


def test_codec_changes_between_steps_of_one_request(tiny):
    """A link far worse than announced: the first sends measure it, the policy raises the
    sparsity, and the same request's next steps send the new setting (smaller payloads)."""
    cap = _split_budget_mb(tiny)
    edge, _, _ = _edge(
        tiny, PolicyConfig(name="slicer", adapt=True, new_tokens=12, prompt_tokens=len(PROMPT)),
        link=LinkSpec(rate_mbps=20.0), budgets=BudgetSpec(latency_ms=20, memory_mib=cap),
        emulation=EmulationSpec(link=True), adapt=True, link_trace=RateTrace((0.0,), (0.05,)))
    rec = edge.generate(Request("r0", 0, tuple(PROMPT), 12))
    assert rec.ok, rec.error
    switch = [e for e in rec.replans if e.applies == "next step"]
    assert switch, rec.replans
    at = switch[0].step
    assert switch[0].before.codec_spec == "lossless" and switch[0].after.codec_spec.startswith("slicer")
    from slicer.codec import encode

    lossless_token = len(encode(torch.randn(1, 1, 32), CodecConfig(method="raw")))  # one token's feature
    after = [s.payload_bytes for s in rec.steps if s.kind == "decode" and s.step > at]
    assert after and max(after) < 0.6 * lossless_token


def test_a_plan_sized_for_fewer_tokens_caps_the_request(tiny):
    """OPSC may shorten the sequence: the edge generates no more than the plan is sized
    for, and the record says so."""
    def planner(cfg, profile, dev):
        return Plan.fixed(2, 1, profile.num_layers, "lossless", tier=1, reason="sized for 8 tokens",
                          predicted_memory_bytes=1e6, tokens=8, policy="opsc")

    server = Server(tiny, ServerConfig())
    policy = Policy(PolicyConfig(name="fixed"), tiny.profile, planner=planner)
    edge = EdgeDevice(EdgeConfig(device_id="d", device_class="raspberry-pi-5"), "unused", InProcessServer(server),
                      InProcessPolicy(policy), model=tiny)
    rec = edge.generate(Request("r", 0, tuple(PROMPT), 10))
    assert rec.ok and rec.new_tokens == 3 and rec.max_new_tokens_requested == 10
    assert "max_new_tokens 10 -> 3" in rec.capped and "opsc" in rec.capped
    assert rec.tokens == greedy(tiny, PROMPT, 3)
    rec = edge.generate(Request("r2", 1, tuple(PROMPT[:2]), 4))
    assert rec.capped is None and rec.new_tokens == 4


def test_the_example_workload_reads_its_trace_file():
    from pathlib import Path

    from slicer.orchestrator.runner import _link_trace
    from slicer.orchestrator.workload import load_workload

    wl = load_workload(Path(__file__).resolve().parents[2] / "examples" / "adaptive_link.yaml")
    g = wl.devices[0]
    assert wl.policy.adapt and g.link_trace == "traces/drive.csv"
    assert _link_trace(wl, g.link_trace) == RateTrace((0.0, 1.5, 3.0), (20.0, 2.0, 0.05))
    with pytest.raises(FileNotFoundError, match="link_trace file 'nope.csv' not found"):
        _link_trace(wl, "nope.csv")
