"""Server load, measured: a timeline for the run folder and Ray metrics for dashboards.

``LoadMeter`` is plain Python (no Ray): the server calls ``busy_start/busy_end`` around
each batch it computes and ``queued(n)`` when its queue changes; every batch adds a row to
its timeline (``timeline()``: ``load.jsonl``), and ``sample()`` gives a row for the time
since the previous sample (the driver's polling, the Ray metrics). A row::

    {"t_s": 1.5, "interval_s": 0.5, "busy_frac": 0.62, "queue_depth": 3, "queue_max": 5,
     "batches": 4, "mean_batch": 2.5, "tokens": 10, "tokens_per_s": 20.0,
     "compute_s": {"edge-0": 0.1, ...}, "kv_bytes": 12345, "sessions": 4}

``ServerMetrics`` mirrors the same figures as ``ray.util.metrics`` counters, gauges and
histograms (exported by every node for the Ray dashboard and Prometheus, with a ``ray_``
prefix); it is a no-op outside a Ray worker.
"""
from __future__ import annotations

import threading
import time
from collections import defaultdict
from typing import Any


class _Window:
    """Accumulators of one timeline: what happened since its last row."""

    def __init__(self, t: float, queue: int):
        self.last = t
        self.busy_s = 0.0
        self.queue_max = queue
        self.batches: list[int] = []
        self.tokens = 0
        self.compute: dict[str, float] = defaultdict(float)

    def row(self, now: float, t0: float, busy_since: float | None, queue: int, kv_bytes: int,
            sessions: int) -> dict[str, Any]:
        interval = max(1e-9, now - self.last)
        busy = self.busy_s
        if busy_since is not None:  # a batch is running across the boundary
            busy += now - max(busy_since, self.last)
        return {
            "t_s": round(now - t0, 6),
            "interval_s": round(interval, 6),
            "busy_frac": round(min(1.0, busy / interval), 4),
            "queue_depth": queue,
            "queue_max": self.queue_max,
            "batches": len(self.batches),
            "mean_batch": round(sum(self.batches) / len(self.batches), 3) if self.batches else 0.0,
            "tokens": self.tokens,
            "tokens_per_s": round(self.tokens / interval, 3),
            "compute_s": {k: round(v, 6) for k, v in self.compute.items()},
            "kv_bytes": kv_bytes,
            "sessions": sessions,
        }


def merge_rows(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    """One row covering two consecutive rows ``a`` then ``b`` (sums, maxima, b's state)."""
    interval = a["interval_s"] + b["interval_s"]
    batches = a["batches"] + b["batches"]
    compute = dict(a["compute_s"])
    for k, v in b["compute_s"].items():
        compute[k] = round(compute.get(k, 0.0) + v, 6)
    return {
        "t_s": b["t_s"], "interval_s": round(interval, 6),
        "busy_frac": round((a["busy_frac"] * a["interval_s"] + b["busy_frac"] * b["interval_s"]) / max(1e-9, interval), 4),
        "queue_depth": b["queue_depth"], "queue_max": max(a["queue_max"], b["queue_max"]), "batches": batches,
        "mean_batch": round((a["mean_batch"] * a["batches"] + b["mean_batch"] * b["batches"]) / batches, 3) if batches else 0.0,
        "tokens": a["tokens"] + b["tokens"], "tokens_per_s": round((a["tokens"] + b["tokens"]) / max(1e-9, interval), 3),
        "compute_s": compute, "kv_bytes": b["kv_bytes"], "sessions": b["sessions"],
    }


def rebase(rows: list[dict[str, Any]], t_start_s: float) -> list[dict[str, Any]]:
    """Per-batch rows measured from ``t_start_s`` (on the meter's clock: the ``t_s`` of the
    driver's first ``sample()``, the run's t=0): rows ending before it are dropped, the
    first one after it is clipped to start there (the time before was actor start-up)."""
    out = []
    prev = t_start_s
    for r in rows:
        if r["t_s"] <= t_start_s:
            continue
        r = dict(r)
        span = r["t_s"] - prev
        if r["interval_s"] > span:  # clip: busy time falls in the batch, at the row's end
            busy_s = r["busy_frac"] * r["interval_s"]
            r["interval_s"] = round(max(1e-9, span), 6)
            r["busy_frac"] = round(min(1.0, busy_s / r["interval_s"]), 4)
            r["tokens_per_s"] = round(r["tokens"] / r["interval_s"], 3)
        r["t_s"] = round(r["t_s"] - t_start_s, 6)
        prev = t_start_s + r["t_s"]
        out.append(r)
    return out


class LoadMeter:
    """Two timelines over the same events: ``sample()`` rows on the caller's schedule (the
    driver's polling, the metrics), and ``timeline()`` rows, one per server batch, which
    give any run a readable load plot (the quickstart's driver polling saw 2 samples 6 ms
    apart; one row per batch gives ~one per generated token of the busiest device).
    ``max_events`` bounds the per-batch timeline: past it, neighbouring rows are merged
    in pairs (half the resolution, same totals)."""

    def __init__(self, clock=time.perf_counter, max_events: int = 20_000):
        self._clock = clock
        self._lock = threading.Lock()
        self._t0 = clock()
        self._busy_since: float | None = None
        self._queue = 0
        self._poll = _Window(self._t0, 0)
        self._batch = _Window(self._t0, 0)
        self._events: list[dict[str, Any]] = []
        self._max_events = max(2, int(max_events))
        self._compute_total: dict[str, float] = defaultdict(float)
        self.kv_bytes = 0
        self.sessions = 0

    def busy_start(self) -> None:
        with self._lock:
            if self._busy_since is None:
                self._busy_since = self._clock()

    def busy_end(self, batch_size: int, tokens: int, compute_s_by_device: dict[str, float]) -> None:
        with self._lock:
            now = self._clock()
            for w in (self._poll, self._batch):
                if self._busy_since is not None:
                    w.busy_s += now - max(self._busy_since, w.last)
                w.batches.append(batch_size)
                w.tokens += tokens
                for dev, s in compute_s_by_device.items():
                    w.compute[dev] += s
            self._busy_since = None
            for dev, s in compute_s_by_device.items():
                self._compute_total[dev] += s
            self._events.append(self._batch.row(now, self._t0, None, self._queue, self.kv_bytes, self.sessions))
            self._batch = _Window(now, self._queue)
            if len(self._events) > self._max_events:
                ev = self._events
                self._events = [merge_rows(ev[i], ev[i + 1]) if i + 1 < len(ev) else ev[i]
                                for i in range(0, len(ev), 2)]

    def queued(self, depth: int) -> None:
        with self._lock:
            self._queue = depth
            self._poll.queue_max = max(self._poll.queue_max, depth)
            self._batch.queue_max = max(self._batch.queue_max, depth)

    def sample(self) -> dict[str, Any]:
        """One timeline row for the interval since the previous sample; resets it."""
        with self._lock:
            now = self._clock()
            row = self._poll.row(now, self._t0, self._busy_since, self._queue, self.kv_bytes, self.sessions)
            self._poll = _Window(now, self._queue)
            return row

    def timeline(self) -> list[dict[str, Any]]:
        """The per-batch rows since the last call (each covers the time since the previous
        batch ended, idle time included); drains them."""
        with self._lock:
            out, self._events = self._events, []
            return out

    def compute_totals(self) -> dict[str, float]:
        with self._lock:
            return dict(self._compute_total)


#: Metric names as Prometheus shows them (Ray adds ``ray_``; counters get ``_total``):
#: a contract with ``slicer top`` and ``clusters/grafana-slicer.json``.
METRICS = {
    "requests": "slicer_server_requests",
    "steps": "slicer_server_steps",
    "tokens": "slicer_server_tokens",
    "rejections": "slicer_server_rejections",
    "busy": "slicer_server_busy_seconds",
    "device_compute": "slicer_server_device_compute_seconds",
    "queue": "slicer_server_queue_depth",
    "queue_at_batch": "slicer_server_queue_depth_at_batch",
    "kv": "slicer_server_kv_bytes",
    "sessions": "slicer_server_sessions",
    "batch": "slicer_server_batch_size",
}


class ServerMetrics:
    """``ray.util.metrics`` for the server; silently off when not in a Ray process.

    Every series carries ``run`` (the run's name, so runs sharing a cluster do not mix)
    and the per-device ones ``device_class``. The queue is also observed at every batch
    into a histogram: Ray exports gauges every few seconds, so a short run's
    ``queue_depth`` gauge read 0 at every scrape while the queue reached 7 (NOTES.md);
    a histogram accumulates and misses nothing."""

    def __init__(self, server_name: str = "server", run: str = "", device_classes: dict[str, str] | None = None):
        self._on = False
        self._classes = dict(device_classes or {})
        try:
            import ray
            from ray.util import metrics as m

            if not ray.is_initialized():
                return
            tags = ("server", "run")
            per_class = ("server", "run", "device_class")
            self.requests = m.Counter(METRICS["requests"], "sessions admitted", tag_keys=per_class)
            self.steps = m.Counter(METRICS["steps"], "decode/prefill steps computed", tag_keys=tags)
            self.tokens = m.Counter(METRICS["tokens"], "tokens computed (one per step)", tag_keys=per_class)
            self.rejections = m.Counter(METRICS["rejections"], "session opens and steps refused",
                                        tag_keys=("server", "run", "device_class", "what"))
            self.busy = m.Counter(METRICS["busy"], "seconds spent computing", tag_keys=tags)
            self.device_compute = m.Counter(METRICS["device_compute"], "server compute seconds per device",
                                            tag_keys=("server", "run", "device_class", "device"))
            self.queue = m.Gauge(METRICS["queue"], "steps waiting", tag_keys=tags)
            self.queue_at_batch = m.Histogram(METRICS["queue_at_batch"], "steps waiting when a batch ends",
                                              boundaries=[1, 2, 4, 8, 16, 32, 64], tag_keys=tags)
            self.kv = m.Gauge(METRICS["kv"], "bytes held in KV caches", tag_keys=tags)
            self.sessions = m.Gauge(METRICS["sessions"], "open sessions", tag_keys=tags)
            self.batch = m.Histogram(METRICS["batch"], "steps per batch", boundaries=[1, 2, 4, 8, 16, 32], tag_keys=tags)
            self._tags = {"server": server_name, "run": run or "-"}
            self._on = True
        except Exception:  # no ray, or metrics unavailable: the timeline still works
            self._on = False

    def _cls(self, device: str | None) -> str:
        return self._classes.get(device or "", "unknown")

    def on_request(self, device: str | None = None) -> None:
        if self._on:
            self.requests.inc(1, {**self._tags, "device_class": self._cls(device)})

    def on_reject(self, what: str, device: str | None = None) -> None:
        """``what``: ``open`` (a session refused) or ``step`` (a step refused)."""
        if self._on:
            self.rejections.inc(1, {**self._tags, "device_class": self._cls(device), "what": what})

    def on_batch(self, batch_size: int, busy_s: float, compute_s_by_device: dict[str, float]) -> None:
        if not self._on:
            return
        self.steps.inc(batch_size, self._tags)
        self.busy.inc(max(0.0, busy_s), self._tags)
        self.batch.observe(batch_size, self._tags)
        by_class: dict[str, int] = defaultdict(int)
        for dev, s in compute_s_by_device.items():
            self.device_compute.inc(max(0.0, s), {**self._tags, "device_class": self._cls(dev), "device": dev})
            # A device has one request in flight and a session one step at a time (the
            # server refuses a second): one token per device in the batch.
            by_class[self._cls(dev)] += 1
        for cls, n in by_class.items():
            self.tokens.inc(n, {**self._tags, "device_class": cls})

    def on_state(self, queue_depth: int, kv_bytes: int, sessions: int) -> None:
        if not self._on:
            return
        self.queue.set(queue_depth, self._tags)
        self.queue_at_batch.observe(queue_depth, self._tags)
        self.kv.set(kv_bytes, self._tags)
        self.sessions.set(sessions, self._tags)
