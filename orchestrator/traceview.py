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


def display_name(s: dict[str, Any]) -> str:
    """The span's name, with emulated time said as such: a span that only stands for the
    emulated slowdown (``slicer.emulated``) or one that includes emulated seconds
    (``slicer.emulated_s`` > 0: a slowed device's compute, an emulated link's delay)."""
    a = s.get("attributes") or {}
    if a.get("slicer.emulated") is True:
        return f"{s['name']} [emulated]"
    extra = a.get("slicer.emulated_s")
    if isinstance(extra, (int, float)) and extra > 0:
        return f"{s['name']} [{extra * 1e3:.1f} ms emulated]"
    return s["name"]


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
        name = "  " * t.depth(s) + display_name(s)
        extra = s["attributes"].get("slicer.bytes")
        extra = f" {extra}B" if extra is not None else ""
        lines.append(f"{name:<40} {s.get('service', '')!s:<{svc_w}} |{bar:<{width}}| "
                     f"{(s['end_ns'] - s['start_ns']) / 1e6:8.2f} ms{extra}")
    return "\n".join(lines)


def to_chrome_trace(spans: list[dict[str, Any]]) -> dict[str, Any]:
    """Chrome trace-event JSON (opens in Perfetto / chrome://tracing): one process per
    service (named), one thread per request (named after the request), complete ("X")
    events in microseconds, emulated time in the event names, and a flow arrow from each
    edge ``transfer`` to the server step it caused (the same trace's first ``server.queue``
    span starting at or after the send)."""
    if not spans:
        return {"traceEvents": [], "displayTimeUnit": "ms"}
    t0 = min(s["start_ns"] for s in spans)
    services = sorted({str(s.get("service")) for s in spans})
    pid_of = {name: i + 1 for i, name in enumerate(services)}
    traces = group_traces(spans)
    tid_of = {t.trace_id: i + 1 for i, t in enumerate(traces)}
    events: list[dict[str, Any]] = []
    for name, pid in pid_of.items():
        events.append({"name": "process_name", "ph": "M", "pid": pid, "tid": 0, "args": {"name": name}})
    named = set()
    for t in traces:
        label = t.request_id if t.root["name"] == "request" else f"{t.root['name']} {t.trace_id[:8]}"
        for s in t.spans:
            key = (pid_of[str(s.get("service"))], tid_of[t.trace_id])
            if key not in named:
                named.add(key)
                events.append({"name": "thread_name", "ph": "M", "pid": key[0], "tid": key[1],
                               "args": {"name": label}})

    def us(ns: int) -> float:
        return (ns - t0) / 1e3

    for s in sorted(spans, key=lambda s: s["start_ns"]):
        events.append({
            "name": display_name(s),
            "cat": HOPS.get(s["name"], "span"),
            "ph": "X",
            "ts": us(s["start_ns"]),
            "dur": max(0.0, (s["end_ns"] - s["start_ns"]) / 1e3),
            "pid": pid_of[str(s.get("service"))],
            "tid": tid_of[s["trace_id"]],
            "args": {**s["attributes"], "trace_id": s["trace_id"], "span_id": s["span_id"],
                     "parent_id": s["parent_id"]},
        })
    flow = 0
    for t in traces:
        steps = sorted((s for s in t.spans if s["name"] == "server.queue"), key=lambda s: s["start_ns"])
        used: set[str] = set()
        for send in sorted((s for s in t.spans if s["name"] == "transfer"), key=lambda s: s["start_ns"]):
            dst = next((q for q in steps if q["start_ns"] >= send["start_ns"] and q["span_id"] not in used), None)
            if dst is None:
                continue
            used.add(dst["span_id"])
            flow += 1
            # "s" binds to the slice enclosing its ts on its thread, "f" (bp=e) likewise:
            # each at its slice's midpoint, so a neighbour ending or starting at the same
            # microsecond cannot take the arrow.
            events.append({"name": "step", "cat": "flow", "ph": "s", "id": flow, "pid": pid_of[str(send.get("service"))],
                           "tid": tid_of[t.trace_id], "ts": us((send["start_ns"] + send["end_ns"]) // 2)})
            events.append({"name": "step", "cat": "flow", "ph": "f", "bp": "e", "id": flow,
                           "pid": pid_of[str(dst.get("service"))], "tid": tid_of[t.trace_id],
                           "ts": us((dst["start_ns"] + dst["end_ns"]) // 2)})
    return {"traceEvents": events, "displayTimeUnit": "ms"}


def to_json(spans: list[dict[str, Any]], traces: list[Trace], shown: list[Trace]) -> dict[str, Any]:
    """What ``slicer traces --json`` prints: counts, hop coverage, the breakdown per
    (device class, policy) in seconds, and the waterfalls of the ``shown`` requests."""
    cov = sorted(t.hop_coverage() for t in traces)
    rows = []
    for (cls, pol), row in sorted(breakdown(traces).items()):
        rows.append({"device_class": cls, "policy": pol, "requests": int(row.get("_requests", 0)),
                     "wall_s": row.get("_wall", 0.0), "seconds": {c: row.get(c, 0.0) for c in CATEGORIES}})
    falls = []
    for t in shown:
        r0 = t.root["start_ns"]
        falls.append({"request_id": t.request_id, "trace_id": t.trace_id, "duration_ms": t.duration_ns / 1e6,
                      "hop_coverage": t.hop_coverage(),
                      "spans": [{"name": s["name"], "label": display_name(s), "service": s.get("service"),
                                 "depth": t.depth(s), "start_ms": (s["start_ns"] - r0) / 1e6,
                                 "duration_ms": (s["end_ns"] - s["start_ns"]) / 1e6,
                                 "attributes": s.get("attributes") or {}}
                                for s in sorted(t.spans, key=lambda s: (s["start_ns"], -s["end_ns"]))]})
    return {"requests": len(traces), "spans": len(spans),
            "hop_coverage": {"min": cov[0] if cov else None, "median": cov[len(cov) // 2] if cov else None},
            "breakdown": rows, "waterfalls": falls}


def pick(traces: list[Trace]) -> list[Trace]:
    """The first request and the slowest, each once (one trace when they coincide)."""
    if not traces:
        return []
    slowest = max(traces, key=lambda t: t.duration_ns)
    return [traces[0]] + ([slowest] if slowest is not traces[0] else [])
