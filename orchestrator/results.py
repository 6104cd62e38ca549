"""A run's folder: per-request records, policy decisions, server load, and the summary.

Layout of ``runs/<YYYYmmdd-HHMMSS>-<name>/``::

    workload.json    the parsed workload
    requests.jsonl   one record per request (tokens, plan, bytes, per-step hops): ``to_json`` of
                     a ``RequestRecord``; ``load_records`` reads them back as such
    policy.jsonl     every policy decision (tier, reason, plan)
    load.jsonl       server load timeline (busy fraction, queue depth, batch, tokens/s)
    traces.jsonl     spans (written by the tracing layer when tracing is on)
    summary.json     per device and for the server (see ``build_summary``)
"""
from __future__ import annotations

import json
import math
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Iterable, TextIO

from slicer.actors.protocol import RequestRecord, from_json, to_json


def new_run_dir(name: str, out: str | Path | None = None, root: str | Path | None = None) -> Path:
    """``out`` if given, else ``<root or cwd>/runs/<YYYYmmdd-HHMMSS>-<name>`` (a suffix
    ``-2``, ``-3``... if that exists)."""
    if out is not None:
        p = Path(out)
    else:
        base = Path(root or Path.cwd()) / "runs" / f"{time.strftime('%Y%m%d-%H%M%S')}-{name}"
        p, i = base, 2
        while p.exists():
            p, i = base.with_name(f"{base.name}-{i}"), i + 1
    p.mkdir(parents=True, exist_ok=True)
    return p


def refuse_existing(out: str | Path | None, force: bool, flag: str = "--out") -> str | None:
    """The error message when ``out`` names an existing non-empty folder (or a file) and
    ``force`` is off, else None: results are never overwritten silently."""
    if out is None or force:
        return None
    p = Path(out)
    if p.is_file():
        return f"{flag} {str(p)!r} is an existing file: give a folder that does not exist yet"
    if p.is_dir() and any(p.iterdir()):
        return f"{flag} {str(p)!r} exists and is not empty: give a new folder, or --force to write into it"
    return None


def _json_default(o: Any) -> Any:
    if hasattr(o, "tolist"):
        return o.tolist()
    if isinstance(o, (set, tuple)):
        return list(o)
    return str(o)


def _clean(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, dict):
        return {k: _clean(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_clean(x) for x in v]
    return v


def dumps(obj: Any, indent: int | None = None) -> str:
    """Strict JSON (NaN/inf become null) of results: what every ``--json`` prints."""
    return json.dumps(_clean(obj), indent=indent, default=_json_default, allow_nan=False)


def write_jsonl(path: Path, rows: Iterable[dict]) -> int:
    n = 0
    with open(path, "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(_clean(r), default=_json_default) + "\n")
            n += 1
    return n


def write_json(path: Path, obj: Any) -> None:
    path.write_text(json.dumps(_clean(obj), indent=1, default=_json_default) + "\n", encoding="utf-8")


def percentile(xs: list[float], q: float) -> float | None:
    """Linear-interpolated percentile ``q`` in [0, 100]; None for no data."""
    if not xs:
        return None
    s = sorted(xs)
    k = (len(s) - 1) * q / 100.0
    lo, hi = math.floor(k), math.ceil(k)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


def _ms(x: float | None) -> float | None:
    return None if x is None else round(x * 1e3, 3)


def build_summary(workload: dict, records: list[RequestRecord], server_stats: dict, decisions: list[dict],
                  devices: dict[str, dict], wall_s: float, cluster: dict | None = None) -> dict:
    """The run's ``summary.json``: per device (class, node, plan, requests, tokens, bytes
    sent, bits per element, latency p50/p95), the server (compute seconds per device,
    requests, batch sizes) and totals."""
    per: dict[str, Any] = {}
    for dev_id, info in devices.items():
        recs = [r for r in records if r.device == dev_id]
        ok = [r for r in recs if r.ok]
        lat = [r.latency_s for r in ok]
        bytes_sent = sum(r.bytes_sent for r in recs)
        elements = sum(s.elements for r in recs for s in r.steps if s.elements is not None)
        plans = []
        for r in recs:
            p = {"split": r.split, "offload_step": r.offload_step, "codec": r.codec,
                 "mode": to_json(r.mode), "front_precision": r.front_precision}
            if r.plan_feasible is False:  # no setting met the budgets: say which constraint binds
                p.update(feasible=False, binding=r.plan_binding, reason=r.plan_reason)
            if not plans or plans[-1] != p:
                plans.append(p)
        tokens = sum(r.new_tokens for r in ok)
        per[dev_id] = {
            "class": info.get("device_class"),
            "node": info.get("node"),
            "plan": plans[-1] if plans else None,
            "plans": plans,
            "requests": len(recs),
            "completed": len(ok),
            "failed": len(recs) - len(ok),
            "tokens": tokens,
            "bytes_sent": bytes_sent,
            "bits_per_element": round(bytes_sent * 8 / elements, 4) if elements else None,
            "latency_p50_ms": _ms(percentile(lat, 50)),
            "latency_p95_ms": _ms(percentile(lat, 95)),
            "edge_compute_s": round(sum(r.edge_compute_s for r in recs), 6),
            "server_compute_s": round(server_stats.get("compute_s_by_device", {}).get(dev_id, 0.0), 6),
            "emulated": bool(info.get("emulated")),
            # how its steps reached the server (direct: the step channel), and why not directly
            "transport": next((r.transport for r in reversed(recs) if r.transport), None),
            "transport_note": next((r.transport_note for r in reversed(recs) if r.transport_note), None),
            "errors": [r.error for r in recs if r.error][:5],
        }
    ok_all = [r for r in records if r.ok]
    lat_all = [r.latency_s for r in ok_all]
    tokens_all = sum(r.new_tokens for r in ok_all)
    return {
        "name": workload.get("name"),
        "workload": workload,
        "cluster": cluster or {},
        "wall_s": round(wall_s, 3),
        "devices": per,
        "server": {
            "compute_s_by_device": server_stats.get("compute_s_by_device", {}),
            "compute_s_total": server_stats.get("compute_s_total", 0.0),
            "compute_cpu_s_by_device": server_stats.get("compute_cpu_s_by_device", {}),
            "compute_cpu_s_total": server_stats.get("compute_cpu_s_total", 0.0),
            "decode_s_by_device": server_stats.get("decode_s_by_device", {}),
            "decode_s_total": server_stats.get("decode_s_total", 0.0),
            "requests": server_stats.get("requests", 0),
            "requests_by_device": server_stats.get("requests_by_device", {}),
            "steps_by_device": server_stats.get("steps_by_device", {}),
            "batches": server_stats.get("batches", 0),
            "batch_size_mean": server_stats.get("batch_size_mean", 0.0),
            "batch_size_max": server_stats.get("batch_size_max", 0),
            "batch_size_hist": server_stats.get("batch_size_hist", {}),
            "rejected": server_stats.get("rejected", []),
            # what the server refused or reclaimed: forged/unknown credentials, idle sessions
            "rejected_total": server_stats.get("rejected_total", 0),
            "auth_failures": server_stats.get("auth_failures", 0),
            "expired_sessions": server_stats.get("expired_sessions", 0),
            "bad_payloads_by_device": server_stats.get("bad_payloads_by_device", {}),
            "node": server_stats.get("node"),
            "config": server_stats.get("config", {}),
            # measured in the server process (segment-only weights: the units it loaded)
            "rss_bytes": server_stats.get("rss_bytes"),
            "weight_bytes": server_stats.get("weight_bytes"),
            "loaded_units": server_stats.get("loaded_units"),
            # the step channel's counters (None: server.transport ray)
            "channel": server_stats.get("channel"),
        },
        "policy": {"decisions": len(decisions), "replans": sum(1 for d in decisions if d.get("trigger") != "register")},
        "totals": {
            "requests": len(records), "completed": len(ok_all), "failed": len(records) - len(ok_all),
            "tokens": tokens_all, "tokens_per_s": round(tokens_all / wall_s, 3) if wall_s > 0 else None,
            "latency_p50_ms": _ms(percentile(lat_all, 50)), "latency_p95_ms": _ms(percentile(lat_all, 95)),
            "bytes_sent": sum(r.bytes_sent for r in records),
            "emulated": any(r.emulated for r in records),
            # Faults survived (orchestrator.faults, actors.recovery): requests resubmitted
            # after their edge actor died, server sessions rebuilt by replay.
            "resubmitted": sum(1 for r in records if r.attempts > 1),
            "server_sessions_rebuilt": sum(len(r.server_recoveries) for r in records),
        },
    }


def write_run(run_dir: Path, workload: dict, records: list[RequestRecord], decisions: list[dict],
              load_rows: list[dict], summary: dict) -> None:
    write_json(run_dir / "workload.json", workload)
    write_jsonl(run_dir / "requests.jsonl", (to_json(r) for r in sorted(records, key=lambda r: (r.device, r.index))))
    write_jsonl(run_dir / "policy.jsonl", decisions)
    write_jsonl(run_dir / "load.jsonl", load_rows)
    write_json(run_dir / "summary.json", summary)


def load_records(run_dir: str | Path) -> list[RequestRecord]:
    """The records of a run folder's ``requests.jsonl`` (or that file given directly), as
    ``RequestRecord`` objects (``from_json``: fields a newer or older run wrote and this
    version does not know are ignored)."""
    p = Path(run_dir)
    if p.is_dir():
        p = p / "requests.jsonl"
    out = []
    for n, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            out.append(from_json(RequestRecord, json.loads(line)))
        except (ValueError, TypeError, KeyError) as e:
            raise ValueError(f"{p}:{n}: not a request record ({e})") from e
    return out


def format_table(summary: dict) -> str:
    """The summary as a terminal table."""
    head = ["device", "class", "plan", "codec", "req", "tok", "bytes", "bpe", "p50 ms", "p95 ms", "srv s"]
    rows = []
    for dev, d in summary["devices"].items():
        p = d.get("plan") or {}
        if p.get("mode") == "edge-only":
            where = "edge-only"
        elif p.get("mode") == "cloud-only":
            where = "cloud-only"
        else:
            where = f"l={p.get('split')} w={p.get('offload_step')}"
        if len(d.get("plans", [])) > 1:
            where += f" ({len(d['plans'])} plans)"
        rows.append([dev, d.get("class") or "", where, (p.get("codec") or "")[:24], f"{d['completed']}/{d['requests']}",
                     str(d["tokens"]), str(d["bytes_sent"]),
                     "-" if d.get("bits_per_element") is None else f"{d['bits_per_element']:.2f}",
                     "-" if d.get("latency_p50_ms") is None else f"{d['latency_p50_ms']:.1f}",
                     "-" if d.get("latency_p95_ms") is None else f"{d['latency_p95_ms']:.1f}",
                     f"{d.get('server_compute_s', 0.0):.3f}"])
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(head)]
    line = lambda cells: "  ".join(c.ljust(w) for c, w in zip(cells, widths))  # noqa: E731
    out = [line(head), line(["-" * w for w in widths])] + [line(r) for r in rows]
    t, s = summary["totals"], summary["server"]
    for dev, d in summary["devices"].items():
        for p in d.get("plans", []):
            if p.get("feasible") is False:
                out.append(f"{dev}: no plan meets its budgets; binding constraint {p.get('binding') or '?'}: "
                           f"{p.get('reason') or ''}".rstrip(": "))
        if d.get("transport") == "ray" and s.get("config", {}).get("transport") == "direct":
            out.append(f"{dev}: steps went as Ray calls, not over the step channel: {d.get('transport_note')}")
    out.append("")
    out.append(f"requests {t['completed']}/{t['requests']} completed, {t['tokens']} tokens in {summary['wall_s']:.1f} s "
               f"({t['tokens_per_s']} tok/s); latency p50 {t['latency_p50_ms']} ms, p95 {t['latency_p95_ms']} ms")
    out.append(f"server: {s['compute_s_total']:.3f} compute s, {s['requests']} sessions, {s['batches']} batches "
               f"(mean size {s['batch_size_mean']}, max {s['batch_size_max']}); policy: {summary['policy']['decisions']} "
               f"decisions, {summary['policy']['replans']} re-plans" + ("; EMULATED device/link figures" if t["emulated"] else ""))
    return "\n".join(out)


def progress_line(rec: RequestRecord, done: int, total: int, stream: TextIO = sys.stderr) -> None:
    status = "ok" if rec.ok else f"FAILED: {rec.error}"
    if rec.plan_feasible is False:
        status += f" (plan infeasible, binding {rec.plan_binding or '?'})"
    if rec.attempts > 1:
        status += f" (after {rec.attempts - 1} resubmission(s))"
    stream.write(f"[{done}/{total}] {rec.device} {rec.request_id} {to_json(rec.mode)} "
                 f"l={rec.split} {rec.new_tokens} tok {rec.bytes_sent} B "
                 f"{rec.latency_s * 1e3:.0f} ms {status}\n")
    stream.flush()


def wait_progress(refs: list, stream: TextIO, what: str, timeout_s: float) -> None:
    """Print ``k/N <what> (t s)`` on ``stream`` as Ray object refs complete (a line per
    change, at most every 0.5 s on a terminal's same line); returns when all are ready
    or at ``timeout_s`` (the caller's ``ray.get`` then raises with its own message)."""
    import ray

    t0 = time.perf_counter()
    pending, done, shown = list(refs), 0, -1
    tty = getattr(stream, "isatty", lambda: False)()
    while pending and time.perf_counter() - t0 < timeout_s:
        ready, pending = ray.wait(pending, num_returns=len(pending), timeout=0.5)
        done += len(ready)
        if done != shown or tty:
            end = "\r" if tty and pending else "\n"
            stream.write(f"slicer: {done}/{len(refs)} {what} ({time.perf_counter() - t0:.0f} s){end}")
            stream.flush()
            shown = done


def median(xs: list[float]) -> float | None:
    return statistics.median(xs) if xs else None
