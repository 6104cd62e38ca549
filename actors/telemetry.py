"""Tracing in every process of a run: one OpenTelemetry ``TracerProvider`` per process.

The driver, each edge actor, the server and the policy call ``init_tracing`` once with
their ``service.name`` (and device class); spans are then made with ``span(...)``. The W3C
trace context travels inside each actor call as a plain ``dict`` carrier (``inject()`` on
the caller, ``span(name, carrier=...)`` on the callee): Ray's own tracing hook is
unmaintained and injects a keyword into every call (NOTES.md), so we propagate by hand.

Where spans go:
- always, when tracing is on: an in-process buffer that the runner drains through an actor
  method (``drain()``) and writes to ``traces.jsonl`` in the run folder, so traces come
  back from remote nodes without a shared file system;
- additionally, over OTLP/HTTP to any collector (Jaeger, Tempo...) when
  ``OTEL_EXPORTER_OTLP_ENDPOINT`` is set and the optional extra ``slicer[otlp]``
  (``opentelemetry-exporter-otlp``) is installed; without the exporter each process says
  so in one line on stderr. On an existing cluster the driver ships its ``OTEL_*``
  variables to every actor (``otlp_env``, job-level ``runtime_env``), and ``slicer submit``
  to the job.

When tracing is off, ``span`` yields ``None`` without touching OpenTelemetry, so the cost
is one function call and a ``contextlib`` frame per hop.
"""
from __future__ import annotations

import contextlib
import os
import random
import threading
from collections.abc import Iterator
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import propagate
from opentelemetry import trace as otel_trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import (
    SimpleSpanProcessor,
    SpanExporter,
    SpanExportResult,
)

#: Attribute names used on spans (a contract with `slicer traces`).
ATTR_REQUEST = "slicer.request_id"
ATTR_DEVICE = "slicer.device"
ATTR_DEVICE_CLASS = "slicer.device_class"
ATTR_BYTES = "slicer.bytes"
ATTR_BPE = "slicer.bits_per_element"
ATTR_SPLIT = "slicer.split"
ATTR_SPARSITY = "slicer.sparsity"
ATTR_TIER = "slicer.tier"
ATTR_SESSION = "slicer.session"
ATTR_STEP = "slicer.step"
ATTR_POLICY = "slicer.policy"

#: Span names of the hops (a contract with `slicer traces`' breakdown).
HOPS = {
    "edge.setup": "edge compute",
    "edge.compute": "edge compute",
    "edge.encode": "codec",
    "transfer": "wire",
    "server.queue": "queue",
    "server.decode": "codec",
    "server.compute": "server compute",
    "return": "wire",
    "policy.decide": "policy",
    "policy.report": "policy",
    "session.open": "wire",
    "session.close": "wire",
}


class _BufferExporter(SpanExporter):
    """Keeps finished spans as plain dicts until ``drain``; bounded so a run that never
    drains cannot grow without limit."""

    def __init__(self, max_spans: int = 200_000):
        self._lock = threading.Lock()
        self._spans: list[dict[str, Any]] = []
        self._max = max_spans
        self.dropped = 0

    def export(self, spans) -> SpanExportResult:
        rows = [span_to_dict(s) for s in spans]
        with self._lock:
            room = self._max - len(self._spans)
            self._spans.extend(rows[: max(0, room)])
            self.dropped += max(0, len(rows) - max(0, room))
        return SpanExportResult.SUCCESS

    def drain(self) -> list[dict[str, Any]]:
        with self._lock:
            out, self._spans = self._spans, []
        return out

    def shutdown(self) -> None:
        pass


def span_to_dict(s: ReadableSpan) -> dict[str, Any]:
    ctx = s.get_span_context()
    return {
        "name": s.name,
        "trace_id": format(ctx.trace_id, "032x"),
        "span_id": format(ctx.span_id, "016x"),
        "parent_id": format(s.parent.span_id, "016x") if s.parent is not None else None,
        "start_ns": s.start_time,
        "end_ns": s.end_time,
        "service": s.resource.attributes.get("service.name"),
        "pid": os.getpid(),
        "resource": {k: v for k, v in s.resource.attributes.items() if not k.startswith("telemetry.")},
        "attributes": dict(s.attributes or {}),
    }


class _State:
    def __init__(self) -> None:
        self.provider: TracerProvider | None = None
        self.tracer: Any = None
        self.buffer: _BufferExporter | None = None
        self.enabled = False
        self.otlp = False
        self.service = ""
        self.resource: dict[str, Any] = {}
        #: hop spans recorded on the fast path: (trace_id, span_id, parent_id, name, start_ns, end_ns, attrs)
        self.hops: list[tuple] = []
        self.dropped = 0


_state = _State()
_MAX_HOPS = 1_000_000


def init_tracing(service_name: str, *, enabled: bool = True, attributes: dict[str, Any] | None = None) -> None:
    """Set up this process's tracer. Idempotent: a second call replaces the first (an
    actor restarted in the same worker gets a fresh provider)."""
    if _state.provider is not None:
        _state.provider.shutdown()
    _state.provider = _state.tracer = _state.buffer = None
    _state.hops = []
    _state.otlp = False
    _state.enabled = enabled
    if not enabled:
        return
    res = Resource.create({"service.name": service_name, **(attributes or {})})
    provider = TracerProvider(resource=res)
    buf = _BufferExporter()
    provider.add_span_processor(SimpleSpanProcessor(buf))
    if os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT"):
        try:  # optional extra: pip install "slicer[otlp]"
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
                OTLPSpanExporter,
            )
            from opentelemetry.sdk.trace.export import BatchSpanProcessor

            provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
            _state.otlp = True
        except ImportError:
            warn_missing_exporter(service_name)
    _state.provider, _state.buffer = provider, buf
    _state.service = service_name
    _state.resource = {k: v for k, v in res.attributes.items() if not k.startswith("telemetry.")}
    _state.tracer = provider.get_tracer("slicer")


OTLP_MISSING = ("OTEL_EXPORTER_OTLP_ENDPOINT is set but the OTLP exporter is not installed here, so no span "
                "is exported (traces.jsonl is still written): pip install 'slicer[otlp]' on every node")
_warned = False


def otlp_exporter_available() -> bool:
    import importlib.util

    try:
        return importlib.util.find_spec("opentelemetry.exporter.otlp.proto.http.trace_exporter") is not None
    except ModuleNotFoundError:
        return False


def warn_missing_exporter(where: str = "") -> None:
    """One line on stderr per process (an actor's reaches the driver through Ray's log
    forwarding, prefixed with the actor)."""
    global _warned
    if not _warned:
        _warned = True
        import sys

        print(f"slicer: warning: {OTLP_MISSING}" + (f" ({where})" if where else ""), file=sys.stderr, flush=True)


def otlp_env(environ: dict[str, str] | None = None) -> dict[str, str]:
    """The ``OTEL_*`` variables of ``environ`` (default: this process's): what a run on an
    existing cluster ships to its actors in ``runtime_env["env_vars"]``, since actors do not
    inherit the driver's environment (NOTES.md, "Metrics lag")."""
    env = os.environ if environ is None else environ
    return {k: v for k, v in env.items() if k.startswith("OTEL_")}


def enabled() -> bool:
    return _state.enabled


def inject() -> dict[str, str]:
    """The current trace context as a W3C carrier (``traceparent``), or ``{}``."""
    if not _state.enabled:
        return {}
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return carrier


@contextlib.contextmanager
def span(name: str, carrier: dict[str, str] | None = None, **attributes: Any) -> Iterator[Any]:
    """A span named ``name``, child of the context in ``carrier`` if given (a call from
    another process), else of the current span. Attributes whose value is None are
    dropped. Yields the span (or None when tracing is off)."""
    if not _state.enabled:
        yield None
        return
    ctx = propagate.extract(carrier) if carrier else None
    attrs = {k: v for k, v in attributes.items() if v is not None}
    with _state.tracer.start_as_current_span(name, context=ctx, attributes=attrs) as s:
        yield s


def record_span(name: str, start_s: float, end_s: float, carrier: dict[str, str] | None = None,
                **attributes: Any) -> None:
    """A finished span with explicit wall-clock bounds (``time.time()`` seconds), child of
    ``carrier``'s context if given, else of the current span. Hops are timed where they
    happen (a server batch, an encode inside a model step) and recorded afterwards, so
    spans line up with the records' timestamps exactly and cost nothing on the hot path."""
    if not _state.enabled or end_s is None or start_s is None:
        return
    attrs = {k: v for k, v in attributes.items() if v is not None}
    start_ns, end_ns = int(start_s * 1e9), int(max(start_s, end_s) * 1e9)
    if _state.otlp:  # live export: a real SDK span
        ctx = propagate.extract(carrier) if carrier else None
        s = _state.tracer.start_span(name, context=ctx, attributes=attrs, start_time=start_ns)
        s.end(end_time=end_ns)
        return
    # Fast path: the span is finished already, so keep a tuple and build the record at
    # drain time. Through the SDK a hop cost 75-120 us on this 2-core machine, which at
    # ~9 hops per token of the tiny model cost 40% of tokens/s (slicer bench tracing).
    parent = _parent_of(carrier)
    if parent is None:
        return
    if len(_state.hops) >= _MAX_HOPS:  # a run that never drains stays bounded
        _state.dropped += 1
        return
    _state.hops.append((parent[0], random.getrandbits(64) or 1, parent[1], name, start_ns, end_ns, attrs))


def _parent_of(carrier: dict[str, str] | None) -> tuple[int, int] | None:
    """(trace id, span id) of the carrier's ``traceparent``, else of the current span."""
    if carrier and "traceparent" in carrier:
        try:
            _, tid, sid, _ = carrier["traceparent"].split("-")
            return int(tid, 16), int(sid, 16)
        except ValueError:
            return None
    ctx = otel_trace.get_current_span().get_span_context()
    return (ctx.trace_id, ctx.span_id) if ctx.is_valid else None


def attach(carrier: dict[str, str] | None):
    """Make ``carrier``'s context current (for code that spans several calls); returns a
    token for ``detach``."""
    if not _state.enabled or not carrier:
        return None
    return otel_context.attach(propagate.extract(carrier))


def detach(token) -> None:
    if token is not None:
        otel_context.detach(token)


def drain() -> list[dict[str, Any]]:
    """Finished spans of this process since the last drain, as dicts."""
    if _state.provider is not None:
        _state.provider.force_flush()
    out = _state.buffer.drain() if _state.buffer is not None else []
    hops, _state.hops = _state.hops, []
    pid = os.getpid()
    for tid, sid, parent, name, a, b, attrs in hops:
        out.append({"name": name, "trace_id": format(tid, "032x"), "span_id": format(sid, "016x"),
                    "parent_id": format(parent, "016x"), "start_ns": a, "end_ns": b, "service": _state.service,
                    "pid": pid, "resource": dict(_state.resource), "attributes": attrs})
    return out
