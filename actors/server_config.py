"""`ServerConfig`: the one server configuration (limits, batching, placement).

Each field is declared once, with its default, bounds and doc (``slicer.actors.fields``):
the workload's ``server:`` section parses straight into it and ``slicer run`` derives its
``--max-batch``... flags from it. Memory is in MiB (``_mib``) as in the workload;
``max_kv_bytes`` / ``max_kv_bytes_per_device`` give the server its byte figures. Torch-free
(the workload parser imports it); ``slicer.actors.server`` re-exports it.
"""
from __future__ import annotations

from dataclasses import dataclass

from slicer.actors.fields import spec_field

#: Where an actor computes (``auto``: CUDA where its node has a GPU, else CPU).
DEVICES = ("auto", "cpu", "cuda")
#: Weights/activations dtypes of a float model.
DTYPES = ("float32", "bfloat16", "float16")
#: How steps travel from edges to the server.
TRANSPORTS = ("direct", "ray")


@dataclass(frozen=True)
class ServerConfig:
    """The shared server's batching and admission limits, and where it computes."""

    max_batch: int = spec_field(16, lo=1, hi=1024, integer=True)
    """Most decode steps run together in one batch (1..1024)."""
    batch_window_ms: float = spec_field(2.0, lo=0, hi=1000)
    """Least a batch may wait for open sessions due to send (0..1000 ms); it never waits
    once no session that has not sent is awaited, and waits up to one batch's compute or
    1.5x its steps' longest edge turnaround (at most 0.5 s) when that is longer
    (``slicer.actors.server.Server._batch_loop``)."""
    batching: bool = spec_field(True)
    """False runs every step alone (the batching benchmark's baseline)."""
    max_sessions: int = spec_field(64, lo=1, hi=100000, integer=True)
    """Most sessions (requests in flight) held at once; more are refused (1..100000)."""
    max_kv_mib: float = spec_field(512.0, lo=0, hi=1 << 20, lo_open=True)
    """Most MiB held over all sessions for their KV caches plus the worst batched step they
    can form (``generate.step_peak_bytes``); a session that would exceed it is refused
    (> 0, at most 1048576 = 1 TiB)."""
    max_payload_bytes: int = spec_field(8 << 20, lo=64, hi=1 << 31, integer=True)
    """Largest payload accepted in one step (64..2**31)."""
    step_timeout_s: float = spec_field(60.0, lo=0, hi=3600, lo_open=True)
    """An edge waits at most this long for one server step (> 0, at most 3600 s)."""
    max_sessions_per_device: int = spec_field(4, lo=1, hi=100000, integer=True)
    """Most sessions ONE device may hold at once (a device has one request in flight, so
    more is a leak or abuse; 1..100000)."""
    max_kv_mib_per_device: float = spec_field(128.0, lo=0, hi=1 << 20, lo_open=True)
    """Most KV-cache MiB ONE device may hold, so no device can take the whole ``max_kv_mib``
    (> 0, at most 1048576)."""
    session_ttl_s: float = spec_field(300.0, lo=0, hi=86400, lo_open=True)
    """A session idle this long (no step started or finished) expires and frees its KV
    cache; its device's next step reopens it by replay; a session with a step in flight
    never expires (> 0, at most 86400 s)."""
    open_rate_per_s: float = spec_field(100.0, lo=0, hi=100000, lo_open=True)
    """Sustained session opens per second of one device identity (token bucket; > 0, at
    most 100000)."""
    open_burst: int = spec_field(200, lo=1, hi=100000, integer=True)
    """Session opens one device may make at once before ``open_rate_per_s`` applies
    (1..100000)."""
    device: str = spec_field("auto", choices=DEVICES, flag="--server-device")
    """Where the server computes: ``auto`` (CUDA where its node has a GPU, else CPU),
    ``cpu`` or ``cuda`` (placed with ``num_gpus: 1``; a cluster without a GPU node is a
    validation error, before any actor starts)."""
    dtype: str | None = spec_field(None, choices=DTYPES, flag="--server-dtype")
    """The server's weights/activations dtype: ``float32``, ``bfloat16``, ``float16``;
    None: float32 on CPU, the checkpoint's dtype on CUDA."""
    transport: str = spec_field("direct", choices=TRANSPORTS, flag="--server-transport")
    """How edges send their steps: ``direct`` over one TCP connection each to the server
    (``slicer.actors.channel``; Ray hands out its address and key, and an edge that
    cannot reach it or finds it full sends over Ray calls, trying it again 30 s later)
    or ``ray``, every step a Ray actor call (about 1 ms more a round trip on loopback)."""
    max_tokens_per_session: int = spec_field(4096, lo=1, integer=True, yaml=False)
    """Largest context a session may declare (not a workload field)."""
    kv_kept_per_idle_device: int = spec_field(0, lo=0, integer=True, yaml=False)
    """With identities: KV bytes kept free for each registered device that holds no
    session (the runner sets one request's worst case), so devices holding sessions
    cannot take the KV a device with none needs for its next request. Not a workload
    field."""

    @property
    def max_kv_bytes(self) -> int:
        """``max_kv_mib`` in bytes."""
        return int(self.max_kv_mib * 2**20)

    @property
    def max_kv_bytes_per_device(self) -> int:
        """``max_kv_mib_per_device`` in bytes."""
        return int(self.max_kv_mib_per_device * 2**20)
