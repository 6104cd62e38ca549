"""Reading a run's traces: per-request waterfalls, where time goes, Perfetto export.

Input: ``traces.jsonl`` in a run folder, one span per line as written by
``slicer.actors.telemetry.span_to_dict`` (name, trace_id, span_id, parent_id, start_ns, end_ns,
service, resource, attributes).
"""
from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from slicer.actors.telemetry import ATTR_DEVICE_CLASS, ATTR_POLICY, ATTR_REQUEST, HOPS

#: Order of the categories in the breakdown.
CATEGORIES = ("edge compute", "codec", "wire", "queue", "server compute", "policy", "other")


@dataclass
class Trace:
    trace_id: str
    spans: list[dict[str, Any]] = field(default_factory=list)

    @property
    def root(self) -> dict[str, Any]:
        ids = {s["span_id"] for s in self.spans}
        roots = [s for s in self.spans if s["parent_id"] is None or s["parent_id"] not in ids]
        return min(roots, key=lambda s: s["start_ns"])

    @property
    def request_id(self) -> str:
        return str(self.root["attributes"].get(ATTR_REQUEST, self.trace_id[:12]))

    @property
    def duration_ns(self) -> int:
        r = self.root
        return r["end_ns"] - r["start_ns"]

    def attr(self, key: str, default: str = "?") -> str:
        for s in [self.root, *self.spans]:
            v = s["attributes"].get(key, s.get("resource", {}).get(key))
            if v is not None:
                return str(v)
        return default

    def depth(self, s: dict[str, Any]) -> int:
        by_id = {x["span_id"]: x for x in self.spans}
        d = 0
        while s["parent_id"] in by_id and d < 64:
            s = by_id[s["parent_id"]]
            d += 1
        return d

    def hop_coverage(self) -> float:
        """Fraction of the root's wall time covered by the union of hop spans."""
        r = self.root
        ivs = sorted(
            (max(s["start_ns"], r["start_ns"]), min(s["end_ns"], r["end_ns"]))
            for s in self.spans
            if s["name"] in HOPS
        )
        covered, cur_s, cur_e = 0, None, None
        for a, b in ivs:
            if cur_e is None or a > cur_e:
                if cur_e is not None:
                    covered += cur_e - cur_s
                cur_s, cur_e = a, b
            else:
                cur_e = max(cur_e, b)
        if cur_e is not None:
            covered += cur_e - cur_s
        return covered / max(1, self.duration_ns)


def load_spans(run: str | Path) -> list[dict[str, Any]]:
    path = Path(run)
    if path.is_dir():
        path = path / "traces.jsonl"
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: was the run made with tracing off (--no-trace)?")
    rows = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise ValueError(f"{path}:{n}: not a JSON span ({e})") from e
    return rows


def group_traces(spans: Iterable[dict[str, Any]]) -> list[Trace]:
    by: dict[str, Trace] = {}
    for s in spans:
        by.setdefault(s["trace_id"], Trace(s["trace_id"])).spans.append(s)
    return sorted(by.values(), key=lambda t: t.root["start_ns"])


def request_traces(spans: Iterable[dict[str, Any]]) -> list[Trace]:
    """Traces whose root is a ``request`` span (policy decisions made outside a request,
    e.g. at registration, form traces of their own and are left out)."""
    return [t for t in group_traces(spans) if t.root["name"] == "request"]


def breakdown(traces: Iterable[Trace]) -> dict[tuple[str, str], dict[str, float]]:
    """Seconds per category, summed over requests, keyed by (device class, policy).
    Each hop's own time counts, minus time covered by its child hops (no double count)."""
    out: dict[tuple[str, str], dict[str, float]] = defaultdict(lambda: defaultdict(float))
    for t in traces:
        key = (t.attr(ATTR_DEVICE_CLASS), t.attr(ATTR_POLICY))
        children: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for s in t.spans:
            if s["parent_id"]:
                children[s["parent_id"]].append(s)
        hop_total = 0.0
        for s in t.spans:
            if s["name"] not in HOPS:
                continue
            own = s["end_ns"] - s["start_ns"]
            own -= sum(c["end_ns"] - c["start_ns"] for c in children[s["span_id"]] if c["name"] in HOPS)
            out[key][HOPS[s["name"]]] += max(0, own) / 1e9
            hop_total += max(0, own) / 1e9
        out[key]["other"] += max(0.0, t.duration_ns / 1e9 - hop_total)
        out[key]["_requests"] += 1
        out[key]["_wall"] += t.duration_ns / 1e9
    return out


def format_breakdown(bd: dict[tuple[str, str], dict[str, float]]) -> str:
    head = f"{'device class':<16} {'policy':<12} {'req':>4} " + " ".join(f"{c:>15}" for c in CATEGORIES)
    lines = [head, "-" * len(head)]
    for (cls, pol), row in sorted(bd.items()):
        wall = row.get("_wall", 0.0) or 1e-12
        cells = " ".join(f"{row.get(c, 0.0) * 1e3:>8.1f}ms {100 * row.get(c, 0.0) / wall:>3.0f}%" for c in CATEGORIES)
        lines.append(f"{cls:<16} {pol:<12} {int(row.get('_requests', 0)):>4} {cells}")
    return "\n".join(lines)


def format_waterfall(t: Trace, width: int = 50) -> str:
    r = t.root
    t0, dur = r["start_ns"], max(1, t.duration_ns)
    head = (f"request {t.request_id}  trace {t.trace_id}  {dur / 1e6:.2f} ms  "
            f"hop coverage {100 * t.hop_coverage():.1f}%")
    lines = [head]
    svc_w = max((len(str(s.get("service", ""))) for s in t.spans), default=8)
    for s in sorted(t.spans, key=lambda s: (s["start_ns"], -s["end_ns"])):
        a = int(width * (s["start_ns"] - t0) / dur)
        b = max(a + 1, int(width * (s["end_ns"] - t0) / dur))
        bar = " " * a + "█" * min(width - a, b - a)
        name = "  " * t.depth(s) + s["name"]
        extra = s["attributes"].get("slicer.bytes")
        extra = f" {extra}B" if extra is not None else ""
        lines.append(f"{name:<28} {s.get('service', '')!s:<{svc_w}} |{bar:<{width}}| "
                     f"{(s['end_ns'] - s['start_ns']) / 1e6:8.2f} ms{extra}")
    return "\n".join(lines)


def to_chrome_trace(spans: list[dict[str, Any]]) -> dict[str, Any]:
    """Chrome trace-event JSON (opens in Perfetto / chrome://tracing): one process per
    service, one thread per request, complete ("X") events in microseconds."""
    if not spans:
        return {"traceEvents": [], "displayTimeUnit": "ms"}
    t0 = min(s["start_ns"] for s in spans)
    services = sorted({str(s.get("service")) for s in spans})
    pid_of = {name: i + 1 for i, name in enumerate(services)}
    traces = sorted({s["trace_id"] for s in spans})
    tid_of = {tid: i + 1 for i, tid in enumerate(traces)}
    events: list[dict[str, Any]] = []
    for name, pid in pid_of.items():
        events.append({"name": "process_name", "ph": "M", "pid": pid, "tid": 0, "args": {"name": name}})
    for s in sorted(spans, key=lambda s: s["start_ns"]):
        events.append({
            "name": s["name"],
            "cat": HOPS.get(s["name"], "span"),
            "ph": "X",
            "ts": (s["start_ns"] - t0) / 1e3,
            "dur": max(0.0, (s["end_ns"] - s["start_ns"]) / 1e3),
            "pid": pid_of[str(s.get("service"))],
            "tid": tid_of[s["trace_id"]],
            "args": {**s["attributes"], "trace_id": s["trace_id"], "span_id": s["span_id"],
                     "parent_id": s["parent_id"]},
        })
    return {"traceEvents": events, "displayTimeUnit": "ms"}
