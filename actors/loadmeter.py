"""Server load, measured: a timeline for the run folder and Ray metrics for dashboards.

``LoadMeter`` is plain Python (no Ray): the server calls ``busy_start/busy_end`` around
each batch it computes, ``queued(n)`` when its queue changes, and the runner samples it
every interval into ``load.jsonl`` rows::

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


class LoadMeter:
    def __init__(self, clock=time.perf_counter):
        self._clock = clock
        self._lock = threading.Lock()
        self._t0 = clock()
        self._last = self._t0
        self._busy_since: float | None = None
        self._busy_s = 0.0
        self._queue = 0
        self._queue_max = 0
        self._batches: list[int] = []
        self._tokens = 0
        self._compute: dict[str, float] = defaultdict(float)
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
            if self._busy_since is not None:
                self._busy_s += now - max(self._busy_since, self._last)
                self._busy_since = None
            self._batches.append(batch_size)
            self._tokens += tokens
            for dev, s in compute_s_by_device.items():
                self._compute[dev] += s
                self._compute_total[dev] += s

    def queued(self, depth: int) -> None:
        with self._lock:
            self._queue = depth
            self._queue_max = max(self._queue_max, depth)

    def sample(self) -> dict[str, Any]:
        """One timeline row for the interval since the previous sample; resets it."""
        with self._lock:
            now = self._clock()
            interval = max(1e-9, now - self._last)
            busy = self._busy_s
            if self._busy_since is not None:  # a batch is running across the boundary
                busy += now - max(self._busy_since, self._last)
            row = {
                "t_s": round(now - self._t0, 6),
                "interval_s": round(interval, 6),
                "busy_frac": round(min(1.0, busy / interval), 4),
                "queue_depth": self._queue,
                "queue_max": self._queue_max,
                "batches": len(self._batches),
                "mean_batch": round(sum(self._batches) / len(self._batches), 3) if self._batches else 0.0,
                "tokens": self._tokens,
                "tokens_per_s": round(self._tokens / interval, 3),
                "compute_s": {k: round(v, 6) for k, v in self._compute.items()},
                "kv_bytes": self.kv_bytes,
                "sessions": self.sessions,
            }
            self._last = now
            self._busy_s = 0.0
            self._queue_max = self._queue
            self._batches = []
            self._tokens = 0
            self._compute = defaultdict(float)
            return row

    def compute_totals(self) -> dict[str, float]:
        with self._lock:
            return dict(self._compute_total)


class ServerMetrics:
    """``ray.util.metrics`` for the server; silently off when not in a Ray process."""

    def __init__(self, server_name: str = "server"):
        self._on = False
        try:
            import ray
            from ray.util import metrics as m

            if not ray.is_initialized():
                return
            tags = ("server",)
            self.requests = m.Counter("slicer_server_requests", "requests admitted", tag_keys=tags)
            self.steps = m.Counter("slicer_server_steps", "decode/prefill steps computed", tag_keys=tags)
            self.busy = m.Counter("slicer_server_busy_seconds", "seconds spent computing", tag_keys=tags)
            self.device_compute = m.Counter(
                "slicer_server_device_compute_seconds", "server compute seconds per device",
                tag_keys=("server", "device"),
            )
            self.queue = m.Gauge("slicer_server_queue_depth", "steps waiting", tag_keys=tags)
            self.kv = m.Gauge("slicer_server_kv_bytes", "bytes held in KV caches", tag_keys=tags)
            self.sessions = m.Gauge("slicer_server_sessions", "open sessions", tag_keys=tags)
            self.batch = m.Histogram(
                "slicer_server_batch_size", "steps per batch", boundaries=[1, 2, 4, 8, 16, 32], tag_keys=tags
            )
            self._tags = {"server": server_name}
            self._on = True
        except Exception:  # no ray, or metrics unavailable: the timeline still works
            self._on = False

    def on_request(self) -> None:
        if self._on:
            self.requests.inc(1, self._tags)

    def on_batch(self, batch_size: int, busy_s: float, compute_s_by_device: dict[str, float]) -> None:
        if not self._on:
            return
        self.steps.inc(batch_size, self._tags)
        self.busy.inc(max(0.0, busy_s), self._tags)
        self.batch.observe(batch_size, self._tags)
        for dev, s in compute_s_by_device.items():
            self.device_compute.inc(max(0.0, s), {**self._tags, "device": dev})

    def on_state(self, queue_depth: int, kv_bytes: int, sessions: int) -> None:
        if not self._on:
            return
        self.queue.set(queue_depth, self._tags)
        self.kv.set(kv_bytes, self._tags)
        self.sessions.set(sessions, self._tags)
