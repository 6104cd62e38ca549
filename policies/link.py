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
    goodput_bps: float | None = None
    """Measured goodput in bit/s (payload bits over measured transfer seconds, smoothed):
    when set, a payload takes ``B / goodput`` (the measurement already holds the
    retransmissions and the protocol) instead of Eq. 1's ``B / R · ceil(ln ε / ln P_o)``."""

    def __post_init__(self) -> None:
        checks = (
            ("rate_bps", self.rate_bps, self.rate_bps > 0 and math.isfinite(self.rate_bps), "a finite number > 0"),
            ("bandwidth_hz", self.bandwidth_hz, self.bandwidth_hz > 0 and math.isfinite(self.bandwidth_hz), "a finite number > 0"),
            ("snr", self.snr, self.snr > 0 and math.isfinite(self.snr), "a finite linear ratio > 0 (10 dB = 10)"),
            ("epsilon", self.epsilon, 0.0 < self.epsilon < 1.0, "a number in (0, 1)"),
            ("rtt_s", self.rtt_s, self.rtt_s >= 0 and math.isfinite(self.rtt_s), "a finite number >= 0"),
            ("goodput_bps", self.goodput_bps, self.goodput_bps is None
             or (isinstance(self.goodput_bps, (int, float)) and 0 < self.goodput_bps < math.inf), "None or a finite number > 0"),
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
        capacity or P_o = 1); 1 with a measured goodput (its time holds the retries)."""
        if self.goodput_bps is not None:
            return 1.0
        if self.rate_bps > self.capacity_bps:
            return math.inf
        return transmissions(self.outage_probability, self.epsilon)

    @property
    def feasible(self) -> bool:
        return math.isfinite(self.transmissions)

    def describe(self) -> str:
        if self.goodput_bps is not None:
            return f"measured goodput {self.goodput_bps / 1e6:.3g} Mbit/s"
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
    if link.goodput_bps is not None:
        return payload_bytes * 8.0 / link.goodput_bps + codec_time_s + link.rtt_s
    n = link.transmissions
    if math.isinf(n):
        return math.inf
    return payload_bytes * 8.0 / link.rate_bps * n + codec_time_s + link.rtt_s


def goodput_bps(link: LinkState) -> float:
    """Payload bits per second Eq. 1 predicts: R / transmissions (0 where infeasible)."""
    if link.goodput_bps is not None:
        return link.goodput_bps
    n = link.transmissions
    return 0.0 if math.isinf(n) else link.rate_bps / n


@dataclass(frozen=True)
class RateTrace:
    """A link's rate over time (a drive along a road, a walk out of Wi-Fi range): a step
    function, ``rates_mbps[i]`` from ``times_s[i]`` until the next time. Emulation only:
    the edge sleeps as Eq. 1 says at the trace's current rate; the policy never reads it
    (it plans from what the edge measures)."""

    times_s: tuple[float, ...]
    """Seconds since the device's first request, ascending, the first 0."""
    rates_mbps: tuple[float, ...]
    """Rate R in Mbit/s from each time on."""

    #: Most points a trace may hold (a sample per second for over an hour).
    MAX_POINTS = 4096

    def __post_init__(self) -> None:
        t, r = self.times_s, self.rates_mbps
        if not t or len(t) != len(r) or len(t) > self.MAX_POINTS:
            raise ValueError(f"rate trace has {len(t)} times and {len(r)} rates: allowed 1..{self.MAX_POINTS} of each, as many")
        for i, (ti, ri) in enumerate(zip(t, r)):
            if not _finite_num(ti) or ti < 0 or (i and ti <= t[i - 1]) or (i == 0 and ti != 0):
                raise ValueError(f"rate trace time[{i}]={ti!r} is invalid: allowed ascending seconds >= 0 starting at 0")
            if not _finite_num(ri) or ri <= 0:
                raise ValueError(f"rate trace rate_mbps[{i}]={ri!r} is invalid: allowed a finite number > 0")

    def rate_mbps_at(self, t_s: float) -> float:
        import bisect

        return self.rates_mbps[max(0, bisect.bisect_right(self.times_s, t_s) - 1)]

    @classmethod
    def from_rows(cls, rows) -> RateTrace:
        """From ``[{"t_s": 0, "rate_mbps": 20}, ...]`` (YAML/JSON) or ``[(t, rate), ...]``."""
        if not isinstance(rows, (list, tuple)):
            raise ValueError(f"rate trace must be a list of {{t_s, rate_mbps}} rows, got {type(rows).__name__}")  # noqa: TRY004 - a config error
        ts, rs = [], []
        for i, row in enumerate(rows[: cls.MAX_POINTS + 1]):
            if isinstance(row, dict):
                unknown = sorted(set(map(str, row)) - {"t_s", "rate_mbps"})
                if unknown or "t_s" not in row or "rate_mbps" not in row:
                    raise ValueError(f"rate trace row {i} has keys {sorted(map(str, row))}: allowed exactly t_s, rate_mbps")
                ts.append(row["t_s"]), rs.append(row["rate_mbps"])
            elif isinstance(row, (list, tuple)) and len(row) == 2:
                ts.append(row[0]), rs.append(row[1])
            else:
                raise ValueError(f"rate trace row {i}={row!r:.60} is invalid: allowed {{t_s, rate_mbps}} or [t_s, rate_mbps]")
        return cls(tuple(ts), tuple(rs))

    @classmethod
    def parse_csv(cls, text: str) -> RateTrace:
        """CSV with a header naming ``t_s`` and ``rate_mbps`` (other columns ignored)."""
        import csv
        import io

        reader = csv.DictReader(io.StringIO(text))
        if not reader.fieldnames or "t_s" not in reader.fieldnames or "rate_mbps" not in reader.fieldnames:
            raise ValueError(f"rate trace CSV header {reader.fieldnames!r} is invalid: it must name t_s and rate_mbps")
        rows = []
        for i, r in enumerate(reader):
            if i >= cls.MAX_POINTS:
                raise ValueError(f"rate trace CSV has more than {cls.MAX_POINTS} rows")
            try:
                rows.append((float(r["t_s"]), float(r["rate_mbps"])))
            except (TypeError, ValueError):
                raise ValueError(f"rate trace CSV row {i + 1}: t_s={r.get('t_s')!r:.30}, rate_mbps={r.get('rate_mbps')!r:.30} "
                                 f"are not numbers") from None
        return cls.from_rows(rows)


def load_rate_trace(path) -> RateTrace:
    """A rate trace file: ``.csv`` (header ``t_s,rate_mbps``) or YAML/JSON rows
    ``[{t_s, rate_mbps}, ...]``; at most 1 MiB."""
    from pathlib import Path

    p = Path(path)
    if p.stat().st_size > 1 << 20:
        raise ValueError(f"rate trace {p} is larger than 1 MiB")
    text = p.read_text(encoding="utf-8")
    if p.suffix.lower() == ".csv":
        return RateTrace.parse_csv(text)
    import yaml

    return RateTrace.from_rows(yaml.safe_load(text))


def _finite_num(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
