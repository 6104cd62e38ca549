"""Eq. 1: the eps-outage latency, checked by hand and at its degenerate ends."""
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from slicer.policies import (
    LinkState,
    comm_latency_s,
    db_to_linear,
    outage_probability,
    transmissions,
)


def test_eq1_by_hand():
    # R = 20 Mbit/s, W = 10 MHz, gamma = 10: 2^(R/W) - 1 = 3, P_o = 1 - exp(-0.3) = 0.259182;
    # ln(0.001) / ln(0.259182) = -6.907755 / -1.350202 = 5.1161 -> 6 transmissions.
    link = LinkState(rate_bps=20e6)
    assert link.outage_probability == pytest.approx(0.2591817793, rel=1e-9)
    assert link.transmissions == 6
    # 10,000 bytes = 80,000 bits / 20e6 = 4 ms per transmission, x 6 = 24 ms, + zeta 1 ms.
    assert comm_latency_s(10_000, link, codec_time_s=1e-3) == pytest.approx(0.025, rel=1e-12)


def test_defaults_are_the_papers():
    link = LinkState(rate_bps=1e6)
    assert (link.bandwidth_hz, link.snr, link.epsilon) == (10e6, 10.0, 1e-3)
    assert db_to_linear(10) == pytest.approx(10.0)
    assert LinkState.from_mbps(20, snr_db=10).snr == pytest.approx(10.0)


def test_perfect_channel_needs_one_transmission():
    # Tiny rate: P_o ~ (2^(R/W) - 1)/gamma -> 0, and once P_o <= eps one attempt suffices.
    assert transmissions(0.0) == 1
    assert transmissions(1e-4, 1e-3) == 1
    link = LinkState(rate_bps=1.0)  # 1 bit/s over 10 MHz
    assert link.transmissions == 1
    assert comm_latency_s(1, link) == pytest.approx(8.0)


def test_rate_beyond_capacity_is_infeasible_not_an_error():
    # 100 Mbit/s over 10 MHz at 10 dB: 2^10 - 1 = 1023, P_o = 1 - exp(-102.3) == 1.0 in floats.
    link = LinkState.from_mbps(100)
    assert link.outage_probability == 1.0
    assert math.isinf(link.transmissions) and not link.feasible
    assert math.isinf(comm_latency_s(100, link))
    assert transmissions(1.0) == math.inf
    assert outage_probability(1e12, 1.0, 10.0) == 1.0  # no overflow for absurd R/W


def test_zero_payload_costs_only_codec_time():
    assert comm_latency_s(0, LinkState.from_mbps(100), codec_time_s=0.002) == 0.002


@pytest.mark.parametrize("field,value", [("rate_bps", 0), ("bandwidth_hz", -1), ("snr", 0), ("epsilon", 1.0), ("epsilon", 0.0)])
def test_bad_link_names_the_field(field, value):
    kw = {"rate_bps": 1e6, field: value}
    with pytest.raises(ValueError, match=f"LinkState.{field}"):
        LinkState(**kw)


@settings(max_examples=40, deadline=None)
@given(st.floats(1e3, 3e7), st.floats(1e3, 3e7), st.integers(1, 10**6))
def test_lower_rate_never_sends_faster(r1, r2, nbytes):
    lo, hi = sorted((r1, r2))
    # a lower rate has a lower outage probability but a longer airtime per attempt;
    # P_o is monotone in R
    assert outage_probability(lo, 10e6, 10) <= outage_probability(hi, 10e6, 10)
    assert transmissions(outage_probability(lo, 10e6, 10)) <= transmissions(outage_probability(hi, 10e6, 10))


@pytest.mark.parametrize("rate_mbps", [35.0, 40.0, 60.0, 80.0])
def test_rate_above_capacity_is_infeasible_even_when_p_o_is_below_one(rate_mbps):
    # Capacity W·log2(1 + γ) = 10 MHz · log2(11) = 34.59 Mbit/s. At 40 Mbit/s,
    # P_o = 1 - exp(-(2^4 - 1)/10) = 0.7769 < 1, so Eq. 1 alone gives 28 finite attempts.
    link = LinkState.from_mbps(rate_mbps)
    assert link.capacity_bps == pytest.approx(10e6 * math.log2(11), rel=1e-12)
    assert link.outage_probability < 1.0
    assert math.isinf(link.transmissions) and not link.feasible
    assert math.isinf(comm_latency_s(100, link, codec_time_s=1e-3))


def test_rate_at_or_below_capacity_stays_feasible():
    cap_bps = 10e6 * math.log2(11)
    for rate_bps in (1e6, 20e6, 34e6, cap_bps):
        link = LinkState(rate_bps=rate_bps)
        assert link.feasible and math.isfinite(comm_latency_s(100, link))
    # Capacity follows W and γ: 40 Mbit/s fits 20 MHz at 10 dB (69.2 Mbit/s), and 10 MHz
    # at 20 dB (66.6 Mbit/s).
    assert LinkState.from_mbps(40, bandwidth_mhz=20).feasible
    assert LinkState.from_mbps(40, snr_db=20).feasible
    assert not LinkState.from_mbps(70, bandwidth_mhz=20).feasible


@settings(max_examples=60, deadline=None)
@given(st.floats(1e3, 1e9), st.floats(1e5, 1e8), st.floats(0.01, 1e4))
def test_feasible_exactly_up_to_capacity(rate_bps, bandwidth_hz, snr):
    link = LinkState(rate_bps=rate_bps, bandwidth_hz=bandwidth_hz, snr=snr)
    assert link.feasible == (rate_bps <= bandwidth_hz * math.log2(1 + snr))
    assert link.feasible == math.isfinite(comm_latency_s(1000, link))
