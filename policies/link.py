"""The wireless link: ε-outage latency of SLICER Eq. 1 (after Yun et al. 2022).

    L_c = B / R · ceil(ln ε / ln P_o(R)) + ζ,     P_o(R) = 1 − exp(−(2^{R/W} − 1) / γ)

B is the payload in bits, R the rate in bit/s, W the bandwidth in Hz, γ the mean SNR
(linear, not dB), ε the outage target. The ceiling is the number of transmissions needed
so that all of them failing has probability at most ε.

A rate above the channel capacity C = W·log2(1 + γ) is infeasible: Eq. 1 alone would give
it a finite count (40 Mbit/s over 10 MHz at 10 dB: P_o = 0.777, 28 attempts) although no
code sends reliably above C, so ``LinkState.transmissions`` is ``math.inf`` there, as where
P_o rounds to 1 (which needs R/W ≳ 9 bit/s/Hz at 10 dB, far above C). Defaults are the papers' (seed 001
§4.1): ε = 0.001, W = 10 MHz, γ = 10 (10 dB).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace

#: SLICER §4.1 defaults.
DEFAULT_EPSILON = 1e-3
DEFAULT_BANDWIDTH_HZ = 10e6
DEFAULT_SNR = 10.0


def db_to_linear(snr_db: float) -> float:
    """SNR in dB to a linear power ratio (10 dB -> 10)."""
    return 10.0 ** (float(snr_db) / 10.0)


def linear_to_db(snr: float) -> float:
    return 10.0 * math.log10(snr)


@dataclass(frozen=True)
class LinkState:
    """One device's link at one moment. A workload may replace it over time
    (``link.replace(rate_bps=...)``); the planner reads it as a snapshot."""

    rate_bps: float
    """Transmission rate R in bit/s (e.g. 20e6 for 20 Mbit/s)."""
    bandwidth_hz: float = DEFAULT_BANDWIDTH_HZ
    """Channel bandwidth W in Hz."""
    snr: float = DEFAULT_SNR
    """Mean SNR γ as a linear power ratio (10 = 10 dB). Use ``db_to_linear`` for dB."""
    epsilon: float = DEFAULT_EPSILON
    """Outage target ε in (0, 1): probability that the payload is still not through."""
    rtt_s: float = 0.0
    """Extra fixed delay per hand-off in seconds (propagation, protocol); 0 in the papers."""

    def __post_init__(self) -> None:
        checks = (
            ("rate_bps", self.rate_bps, self.rate_bps > 0 and math.isfinite(self.rate_bps), "a finite number > 0"),
            ("bandwidth_hz", self.bandwidth_hz, self.bandwidth_hz > 0 and math.isfinite(self.bandwidth_hz), "a finite number > 0"),
            ("snr", self.snr, self.snr > 0 and math.isfinite(self.snr), "a finite linear ratio > 0 (10 dB = 10)"),
            ("epsilon", self.epsilon, 0.0 < self.epsilon < 1.0, "a number in (0, 1)"),
            ("rtt_s", self.rtt_s, self.rtt_s >= 0 and math.isfinite(self.rtt_s), "a finite number >= 0"),
        )
        for name, value, ok, allowed in checks:
            if not ok:
                raise ValueError(f"LinkState.{name}={value!r} is invalid: allowed {allowed}")

    @classmethod
    def from_mbps(cls, rate_mbps: float, snr_db: float = 10.0, bandwidth_mhz: float = 10.0,
                  epsilon: float = DEFAULT_EPSILON) -> LinkState:
        """The CLI's units: Mbit/s, dB, MHz."""
        return cls(rate_bps=rate_mbps * 1e6, bandwidth_hz=bandwidth_mhz * 1e6, snr=db_to_linear(snr_db), epsilon=epsilon)

    @classmethod
    def from_spec(cls, link: dict) -> LinkState:
        """A workload link (``rate_mbps`` required; ``snr_db``, ``bandwidth_hz``, ``epsilon``
        default to the paper's 10 dB, 10 MHz, 0.001, the same as ``slicer plan``)."""
        return cls(rate_bps=float(link["rate_mbps"]) * 1e6,
                   bandwidth_hz=float(link.get("bandwidth_hz", DEFAULT_BANDWIDTH_HZ)),
                   snr=db_to_linear(float(link.get("snr_db", linear_to_db(DEFAULT_SNR)))),
                   epsilon=float(link.get("epsilon", DEFAULT_EPSILON)))

    def replace(self, **changes) -> LinkState:
        return replace(self, **changes)

    @property
    def outage_probability(self) -> float:
        return outage_probability(self.rate_bps, self.bandwidth_hz, self.snr)

    @property
    def capacity_bps(self) -> float:
        """Channel capacity C = W·log2(1 + γ) in bit/s: the highest rate that can be sent."""
        return capacity_bps(self.bandwidth_hz, self.snr)

    @property
    def transmissions(self) -> float:
        """Transmissions per payload for outage ε (``math.inf`` when the rate exceeds the
        capacity or P_o = 1)."""
        if self.rate_bps > self.capacity_bps:
            return math.inf
        return transmissions(self.outage_probability, self.epsilon)

    @property
    def feasible(self) -> bool:
        return math.isfinite(self.transmissions)

    def describe(self) -> str:
        return (f"{self.rate_bps / 1e6:g} Mbit/s, W {self.bandwidth_hz / 1e6:g} MHz, "
                f"SNR {linear_to_db(self.snr):.1f} dB, eps {self.epsilon:g}")


def capacity_bps(bandwidth_hz: float, snr: float) -> float:
    """C = W·log2(1 + γ) in bit/s (10 MHz at 10 dB: 34.59 Mbit/s)."""
    return bandwidth_hz * math.log2(1.0 + snr)


def outage_probability(rate_bps: float, bandwidth_hz: float, snr: float) -> float:
    """P_o(R) = 1 − exp(−(2^{R/W} − 1) / γ) (Rayleigh fading, Eq. 1)."""
    # 2^{R/W} overflows a float beyond R/W ≈ 1024: P_o is then 1 to machine precision.
    spectral = rate_bps / bandwidth_hz
    if spectral > 1000:
        return 1.0
    return -math.expm1(-math.expm1(spectral * math.log(2.0)) / snr)


def transmissions(p_outage: float, epsilon: float = DEFAULT_EPSILON) -> float:
    """ceil(ln ε / ln P_o): attempts so that all failing has probability ≤ ε.

    P_o → 0 (a perfect channel) needs one attempt; P_o → 1 never gets through: returns
    ``math.inf`` (the caller reports the link infeasible)."""
    if p_outage <= 0.0 or p_outage <= epsilon:
        # ln ε / ln P_o ≤ 1 whenever P_o ≤ ε: one attempt already meets the target.
        return 1.0
    if p_outage >= 1.0:
        return math.inf
    n = math.log(epsilon) / math.log(p_outage)
    # Guard the ceiling against float noise: 2.0000000000000004 is 2 attempts, not 3.
    return float(max(1, math.ceil(n - 1e-9)))


def comm_latency_s(payload_bytes: float, link: LinkState, codec_time_s: float = 0.0) -> float:
    """Eq. 1: ε-outage latency of ``payload_bytes`` over ``link`` plus the codec time ζ.

    Returns ``math.inf`` when the link can never meet ε (rate above capacity, or P_o = 1)."""
    if payload_bytes < 0:
        raise ValueError(f"payload_bytes={payload_bytes!r} is invalid: allowed >= 0")
    if payload_bytes == 0:
        return codec_time_s
    n = link.transmissions
    if math.isinf(n):
        return math.inf
    return payload_bytes * 8.0 / link.rate_bps * n + codec_time_s + link.rtt_s
