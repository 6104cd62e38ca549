"""`Server`: the shared back end. Holds the model's back segments, one KV cache per
session, batches decode steps of many devices, and accounts compute time per device.

Plain class: the Ray shell (``slicer.actors.ray_actors.ServerActor``) makes it an async actor
whose ``step`` coroutines queue into ``_batch_loop``; unit tests call ``step_now`` (one
step, no batching) or drive ``step`` from an asyncio loop.

A session is one request of one device at one split ℓ: the server runs units
``[ℓ, n)`` (``ℓ = 0``: cloud-only, the whole model on token ids). Admission control:
at most ``max_sessions`` sessions and ``max_kv_bytes`` of KV cache (reserved at open
for the session's largest context, together with the memory the worst batched step
of the open sessions briefly takes beside it), payloads of at most ``max_payload_bytes``; a bad
payload fails that step with an ``AdmissionError`` naming the device and the defect,
and the session and every other session go on.

Sessions are capabilities: ``open_session`` returns an unguessable token
(``<session id>.<secret>``, the secret from ``secrets.token_urlsafe``, checked with
``hmac.compare_digest``) and step, close and supersede take that token; knowing a
session's device and request ids gives nothing. Identities: with ``identities`` (device
id -> credential, assigned by the driver at placement) a device must present its
credential to open a session, so per-device quotas and the per-identity rate of opens
key on an identity the server checked, and while the server is full every registered
device that holds no session still gets one. An idle session expires after
``session_ttl_s`` (measured on the injectable ``clock``) and frees its KV reservation;
its token then gets a ``SessionExpiredError``, which the edge's recovery path answers by
reopening and replaying (``slicer.actors.recovery``).
"""
from __future__ import annotations

import asyncio
import hmac
import itertools
import resource
import secrets
import threading
import time
from collections import OrderedDict, defaultdict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import torch

from slicer.actors import telemetry as tel
from slicer.actors.models.generate import (
    PayloadError,
    ServerSession,
    step_peak_bytes,
    worst_batch,
)
from slicer.actors.models.weights import process_rss_bytes
from slicer.actors.protocol import AdmissionError, StepResult, now_s

# The one server config, declared torch-free (the workload parser reads it): re-exported here.
from slicer.actors.server_config import ServerConfig  # noqa: E402,F401


def _thread_cpu_s() -> float:
    """CPU seconds of the calling thread from ``getrusage(RUSAGE_THREAD)`` where there is
    one (Linux). ``time.thread_time`` took 2.0 ms per read on average (p90 6.5 ms) right
    after compute on a loaded 2-core VM against 0.04 ms for this (400 reads; commit
    0e6b100), and it is read twice per batch. Its resolution is the kernel's accounting
    tick (4 ms on this VM: 1997 of 2000 reads around a 5 µs loop saw no change): a
    single batch's figure is 0 or a tick, a sum over many batches is an unbiased sample
    of the thread's CPU time (a tick is charged to the thread it lands in)."""
    r = resource.getrusage(resource.RUSAGE_THREAD)
    return r.ru_utime + r.ru_stime


if not hasattr(resource, "RUSAGE_THREAD"):  # macOS: the portable clock
    _thread_cpu_s = time.thread_time


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _short(v: Any) -> str:
    """A hostile argument shown in an error: a short repr, never a huge one (``repr`` of
    a 10**5000 int even raises)."""
    if isinstance(v, int) and not isinstance(v, bool) and v.bit_length() > 64:
        return f"<int of {v.bit_length()} bits>"
    if isinstance(v, (bool, int, float, str, type(None))):
        r = repr(v)
        return r if len(r) <= 40 else r[:37] + "..."
    return f"<{type(v).__name__}>"


class SessionExpiredError(AdmissionError):
    """A step or close named a session that expired (idle longer than
    ``session_ttl_s``); its KV cache is gone. The edge reopens and replays it."""


#: Most a batch waits beyond the window for sessions due to send, however slow their
#: edges are (counted from when the loop takes up its first step).
_MAX_WAIT_S = 0.5
#: A batch waits for sessions due within this many of its own steps' usual turnarounds
#: (the longest among them; ``Server._batch_loop``).
_WAIT_SHARE = 1.5
#: Least time a session with a known turnaround is waited for past its due time.
_MIN_OVERDUE_S = 0.05
#: Longest turnaround sample a session's ``gap_s`` takes in (an edge back from a long
#: local phase or a stall is not a slow edge).
_MAX_GAP_S = 2.0

#: Expired sessions remembered (by id) so their holder gets "expired", not "unknown".
_EXPIRED_MEMORY = 4096
#: Refusals kept in ``stats()["rejected"]`` (all are counted in ``rejected_total``).
_REJECTED_KEPT = 1000


@dataclass
class Session:
    session_id: str
    device_id: str
    request_id: str
    split: int
    max_tokens: int
    reserved_kv_bytes: int
    half: ServerSession
    """The server half of the request (``slicer.actors.models.generate``): its KV cache,
    payload checks and compute, the code ``generate``, eval and fidelity run too."""
    steps: int = 0
    tokens: int = 0
    compute_s: float = 0.0
    opened_t: float = field(default_factory=now_s)
    last_t: float = field(default_factory=time.monotonic)
    """Monotonic clock at the open or at the end of its last step (batch scheduling)."""
    busy: bool = False
    gap_s: float = 0.0
    """Smoothed time from this session's last result to its next step (its edge's round
    trip and compute; samples capped at ``_MAX_GAP_S``): when its next step is due and how
    long a batch it joins may wait for others (``Server._batch_loop``)."""
    secret: str = ""
    """The token's secret part (the token is ``f"{session_id}.{secret}"``)."""
    active_t: float = 0.0
    """Server clock at the last open, step start or step end (idle time counts from it)."""

    @property
    def cache(self) -> Any:
        return self.half.cache


@dataclass(frozen=True)
class _StepError:
    """A step that failed (bad payload, compute error): the message its caller's
    ``AdmissionError`` carries. Internal; callers get a ``StepResult`` or the error."""

    error: str


@dataclass
class _Step:
    """One queued step (the batching loop's unit of work)."""

    session: Session
    payload: bytes
    position: int
    recv_t: float
    trace_ctx: dict
    x: torch.Tensor | None = None
    decode_s: float = 0.0
    decode_t0: float = 0.0
    error: str | None = None


def _clean_ctx(trace_ctx: Any) -> dict:
    """A device's trace carrier reduced to what W3C propagation reads (a few short
    str -> str entries): anything else is dropped, so a malformed carrier can never
    fail the tracing code that runs inside a batch shared with other devices."""
    if not isinstance(trace_ctx, dict):
        return {}
    return {k: v for k, v in list(trace_ctx.items())[:8]
            if isinstance(k, str) and isinstance(v, str) and len(k) <= 64 and len(v) <= 512}


class Server:
    """The shared server (see the module docstring)."""

    def __init__(self, model: Any, config: ServerConfig | None = None, name: str = "server",
                 load_meter: Any = None, metrics: Any = None, *, identities: Mapping[str, str] | None = None,
                 clock: Callable[[], float] = time.monotonic):
        """``model``: a ``SplitModel`` (``slicer.actors.models.load_model``), loaded whole: any
        split's back segment runs from it. ``load_meter``: an ``slicer.actors.loadmeter.LoadMeter``
        (made here if None); ``metrics``: an ``slicer.actors.loadmeter.ServerMetrics`` or None.
        ``identities``: device id -> credential, from the driver (``make_identities``); None:
        device ids are taken as declared (one trusted process: unit tests, library use).
        ``clock``: seconds, monotonic; session expiry and the open rate run on it (tests
        inject a fake one)."""
        self.model = model
        self.cfg = config or ServerConfig()
        self.name = name
        self.num_units = model.num_units
        self.profile = model.profile
        mp = getattr(getattr(model, "adapter", None), "max_positions", None)
        self._max_positions = mp if isinstance(mp, int) and mp > 0 else None
        if load_meter is None:
            from slicer.actors.loadmeter import LoadMeter

            load_meter = LoadMeter()
        self.meter = load_meter
        self.metrics = metrics
        self._sessions: dict[str, Session] = {}
        self._ids = itertools.count(1)
        if identities is not None and not all(isinstance(v, str) and v for v in identities.values()):
            raise ValueError("identities: every credential must be a non-empty string")
        self._identities = None if identities is None else {str(k): str(v) for k, v in identities.items()}
        self._clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}  # identity -> (tokens, clock at last refill)
        self._expired: OrderedDict[str, tuple[str, float]] = OrderedDict()  # session id -> (secret, idle s)
        self.expired_sessions = 0
        self.auth_failures = 0
        self.rejected_total = 0
        self._lock = threading.Lock()
        self._compute_lock = threading.Lock()
        self.reserved_kv_bytes = 0
        # Accounting over the whole run.
        self.compute_s_by_device: dict[str, float] = defaultdict(float)
        # CPU seconds of the compute thread (torch runs on one intra-op thread here):
        # unlike wall time, not inflated when other processes share the cores.
        self.compute_cpu_s_by_device: dict[str, float] = defaultdict(float)
        self.requests_by_device: dict[str, int] = defaultdict(int)
        self.steps_by_device: dict[str, int] = defaultdict(int)
        self.decode_s_by_device: dict[str, float] = defaultdict(float)
        self.rejected: list[dict[str, Any]] = []
        self.bad_payloads_by_device: dict[str, int] = defaultdict(int)
        self.batch_sizes: list[int] = []
        # Async batching state (created lazily inside the actor's event loop).
        self._queue: asyncio.Queue | None = None
        self._loop_task: asyncio.Task | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._live_s = 0.05
        self._last_batch_s = 0.0  # wall seconds of the last batch (bounds the wait for live sessions)

    # ------------------------------------------------------------------ sessions
    def open_session(self, device_id: str, request_id: str, split: int, max_tokens: int,
                     trace_ctx: dict | None = None, *, credential: str | None = None,
                     supersedes: str | None = None) -> str:
        """Admit a session running units ``[split, n)`` for up to ``max_tokens`` tokens
        of context; returns its token (the capability every later call needs). Raises
        ``AdmissionError`` naming the limit it would break.

        ``credential``: the device's, when the server has ``identities``. ``supersedes``:
        the token of an earlier session of the same device and request to replace (the
        edge's recovery path); the token of another device's or request's session is
        refused, and one that opens no session (a guess, a session gone with a restarted
        server) replaces nothing. With
        identities, a new session of a (device, request) that already has one replaces it
        too: the device's actor was restarted (``slicer.orchestrator.faults``) and holds
        the driver-issued credential but not the old token."""
        for name, v in (("device_id", device_id), ("request_id", request_id)):
            if not isinstance(v, str) or not 0 < len(v) <= 256:
                raise AdmissionError(f"{name}={str(v)[:80]!r} is invalid: allowed a string of 1..256 characters")
        # bool is an int in Python: split=True must not open split 1
        if not _is_int(split) or not 0 <= split < self.num_units:
            raise AdmissionError(f"device {device_id}: split={_short(split)} is invalid: allowed an integer "
                                 f"0..{self.num_units - 1}")
        # at most the model's position table too: a longer session could only fail later
        limit = min(self.cfg.max_tokens_per_session, self._max_positions or self.cfg.max_tokens_per_session)
        if not _is_int(max_tokens) or not 1 <= max_tokens <= limit:
            raise AdmissionError(f"device {device_id}: max_tokens={_short(max_tokens)} is invalid: allowed an "
                                 f"integer 1..{limit}")
        if supersedes is not None and not isinstance(supersedes, str):
            raise AdmissionError(f"device {device_id}: supersedes is {type(supersedes).__name__}: allowed a session token")
        kv = int(self.profile.kv_bytes_per_token(split, self.num_units)) * max_tokens
        with self._lock:
            self._authenticate_locked(device_id, credential)
            now = self._clock()
            self._expire_locked(now)
            self._take_open_token_locked(device_id, now)
            if supersedes is not None:
                # A token that opens nothing (a guess, or a session already gone with a
                # restarted server) supersedes nothing and tells nothing; the real token
                # of another device's or request's session is refused.
                old = self._lookup_locked(supersedes)
                if old is not None and (old.device_id, old.request_id) == (device_id, request_id):
                    self._drop_locked(old)
                elif old is not None:
                    self._reject(device_id, "supersede", "supersedes= is not a token of this device's session of "
                                 f"request {request_id[:80]!r}")
            if self._identities is not None:
                for old in [o for o in self._sessions.values() if (o.device_id, o.request_id) == (device_id, request_id)]:
                    self._drop_locked(old)
            mine = [o for o in self._sessions.values() if o.device_id == device_id]
            if len(mine) >= self.cfg.max_sessions_per_device:
                self._reject(device_id, "device-sessions", f"device holds {len(mine)} sessions, limit "
                             f"max_sessions_per_device={self.cfg.max_sessions_per_device}")
            mine_kv = sum(o.reserved_kv_bytes for o in mine)
            if mine_kv + kv > self.cfg.max_kv_bytes_per_device:
                self._reject(device_id, "device-kv", f"session needs {kv} KV bytes; device already holds {mine_kv} "
                             f"of max_kv_mib_per_device={self.cfg.max_kv_mib_per_device:g} "
                             f"({self.cfg.max_kv_bytes_per_device} bytes)")
            if len(self._sessions) >= self.cfg.max_sessions:
                self._reject(device_id, "sessions", f"server holds {len(self._sessions)} sessions, limit max_sessions={self.cfg.max_sessions}")
            # Reservations bind a device that already holds a session: one with none is
            # never refused for them (were the server too small for all, nobody would start).
            idle = self._idle_identities_locked(device_id) if mine else 0
            if len(self._sessions) + 1 > self.cfg.max_sessions - idle:
                self._reject(device_id, "sessions", f"device holds {len(mine)} sessions and the last {idle} free of "
                             f"max_sessions={self.cfg.max_sessions} are kept for registered devices that hold none")
            kept_kv = idle * self.cfg.kv_kept_per_idle_device
            # A batched step briefly allocates activations beside the KV caches: the
            # worst one the sessions could form with this one (and with one like it of
            # each registered device that holds none, as their KV is kept) is reserved too.
            peak = self._step_reserve_locked([max_tokens] * (1 + idle))
            if self.reserved_kv_bytes + kv + peak > self.cfg.max_kv_bytes - kept_kv:
                self._reject(device_id, "kv", f"session needs {kv} KV bytes (and the worst batched step with it "
                             f"{peak} bytes beside the caches); {self.reserved_kv_bytes} of "
                             f"max_kv_mib={self.cfg.max_kv_mib:g} ({self.cfg.max_kv_bytes} bytes) already reserved"
                             + (f" and {kept_kv} kept for {idle} registered devices that hold none" if kept_kv else ""))
            sid = f"{device_id}/{request_id}/{next(self._ids)}"
            # The server half of the request (``slicer.actors.models.generate``): units
            # [split, n) with this session's own KV cache.
            # Segment-only weights: the first session at a split loads the units
            # [split, n) this server does not hold yet (slicer.actors.models.weights).
            if getattr(self.model, "_loader", None) is not None:
                self.model.ensure_units(split, self.num_units)
            half = ServerSession(self.model, split, capacity=max_tokens, max_payload_bytes=self.cfg.max_payload_bytes)
            secret = secrets.token_urlsafe(24)  # 192 bits
            self._sessions[sid] = Session(sid, device_id, request_id, split, max_tokens, kv, half,
                                          secret=secret, active_t=now)
            self.reserved_kv_bytes += kv
            self.requests_by_device[device_id] += 1
            self.meter.sessions = len(self._sessions)
        if self.metrics is not None:
            self.metrics.on_request(device_id)
        return f"{sid}.{secret}"

    def close_session(self, session_id: str, trace_ctx: dict | None = None) -> dict[str, Any]:
        """Release a session's KV cache; ``session_id`` is its token. Returns its totals
        (an unknown, expired or wrong token: ``{}``, so a retried close is harmless and
        closes nothing of anyone else's)."""
        with self._lock:
            s = self._lookup_locked(session_id)
            if s is None:
                return {}
            self._drop_locked(s)
        self._nudge()
        return {"session_id": s.session_id, "steps": s.steps, "tokens": s.tokens, "compute_s": s.compute_s}

    def expire_idle(self) -> list[str]:
        """Expire every session idle longer than ``session_ttl_s`` now; returns their ids.
        Also runs on every open and every load sample, so nothing needs to call it."""
        with self._lock:
            return self._expire_locked(self._clock())

    # ------------------------------------------------------------------ session internals
    def _lookup_locked(self, token: Any) -> Session | None:
        """The session a token opens, or None (unknown, expired, or a wrong secret: the
        same answer, so a guess learns nothing)."""
        if not isinstance(token, str) or len(token) > 1024:
            return None
        sid, _, secret = token.rpartition(".")
        s = self._sessions.get(sid)
        if s is None or not hmac.compare_digest(s.secret.encode(), secret.encode("utf-8", "replace")):
            return None
        return s

    def _drop_locked(self, s: Session) -> None:
        if self._sessions.pop(s.session_id, None) is None:
            return
        self.reserved_kv_bytes -= s.reserved_kv_bytes
        self.meter.sessions = len(self._sessions)
        self.meter.kv_bytes = self._kv_bytes_locked()

    def _expire_locked(self, now: float) -> list[str]:
        ttl = self.cfg.session_ttl_s
        gone = [s for s in self._sessions.values() if not s.busy and now - s.active_t > ttl]
        for s in gone:
            self._drop_locked(s)
            self._expired[s.session_id] = (s.secret, now - s.active_t)
            self.expired_sessions += 1
        while len(self._expired) > _EXPIRED_MEMORY:
            self._expired.popitem(last=False)
        return [s.session_id for s in gone]

    def _authenticate_locked(self, device_id: str, credential: Any) -> None:
        if self._identities is None:
            return
        want = self._identities.get(device_id)
        ok = (want is not None and isinstance(credential, str) and len(credential) <= 1024
              and hmac.compare_digest(want.encode(), credential.encode("utf-8", "replace")))
        if not ok:
            # Not counted against the claimed id (its rate bucket, its refusals): anyone
            # could spend another device's budget by failing in its name.
            self.auth_failures += 1
            raise AdmissionError(f"server refused device {device_id[:80]!r}: not a device id the driver assigned, or "
                                 "a wrong credential (identities are issued at placement)")

    def _take_open_token_locked(self, device_id: str, now: float) -> None:
        rate, burst = self.cfg.open_rate_per_s, float(self.cfg.open_burst)
        tokens, t = self._buckets.get(device_id, (burst, now))
        tokens = min(burst, tokens + max(0.0, now - t) * rate)
        if tokens < 1.0:
            self._buckets[device_id] = (tokens, now)
            self._reject(device_id, "open-rate", f"more than open_burst={self.cfg.open_burst} session opens at "
                         f"open_rate_per_s={rate:g}; next allowed in {(1.0 - tokens) / rate:.3f} s")
        self._buckets[device_id] = (tokens - 1.0, now)
        if len(self._buckets) > 4096:  # a full bucket is the same as none: keep the table small
            for k in [k for k, (n, t0) in self._buckets.items() if n + (now - t0) * rate >= burst]:
                del self._buckets[k]

    def _idle_identities_locked(self, device_id: str) -> int:
        """Registered devices other than ``device_id`` that hold no session: one session
        (and ``kv_kept_per_idle_device`` KV bytes) is kept free for each, so devices
        taking extra sessions can never lock out one that has none."""
        if self._identities is None:
            return 0
        holding = {s.device_id for s in self._sessions.values()}
        return sum(1 for d in self._identities if d not in holding and d != device_id)

    def _reject(self, device_id: str, what: str, msg: str) -> None:
        self.rejected_total += 1
        if len(self.rejected) < _REJECTED_KEPT:
            self.rejected.append({"t": now_s(), "device": device_id, "what": what, "message": msg})
        raise AdmissionError(f"server refused device {device_id}: {msg}")

    def _step_reserve_locked(self, extra: list[int] = ()) -> int:
        """Bytes the worst batched step of the open sessions (and of sessions of
        ``extra`` contexts) may allocate beside their KV caches: ``max_batch`` of them,
        the largest, each bringing its whole admitted context at once (a prefill;
        ``slicer.actors.models.generate.step_peak_bytes``)."""
        if self.model.kind != "causal_lm":
            return 0
        ctxs = [s.max_tokens for s in self._sessions.values()] + list(extra)
        return step_peak_bytes(self.model, worst_batch(ctxs, self.cfg.max_batch, self.cfg.batching))

    def _kv_bytes_locked(self) -> int:
        return sum(s.cache.nbytes for s in self._sessions.values())

    def _get(self, session_id: str) -> Session:
        """The session of a token for a step (the caller holds ``_lock``): an expired one
        is expired here (even between sweeps) and named as such."""
        s = self._lookup_locked(session_id)
        now = self._clock()
        if s is not None and not s.busy and now - s.active_t > self.cfg.session_ttl_s:
            self._expire_locked(now)
            s = None
        if s is None:
            sid, _, secret = session_id.rpartition(".") if isinstance(session_id, str) else ("", "", "")
            old = self._expired.get(sid)
            if old is not None and hmac.compare_digest(old[0].encode(), secret.encode("utf-8", "replace")):
                raise SessionExpiredError(
                    f"session {sid[:120]!r} expired after {old[1]:.1f} s idle (session_ttl_s={self.cfg.session_ttl_s:g}); "
                    "its KV cache was freed: open a new session")
            shown = sid[:120] if sid else str(session_id)[:40]
            raise AdmissionError(f"unknown session {shown!r} (closed, expired long ago, never opened, a wrong token, "
                                 "or the server restarted)")
        s.active_t = now
        return s

    # ------------------------------------------------------------------ one step
    def _prepare(self, st: _Step) -> None:
        """Check and decode one step's payload (``ServerSession.decode_payload``: declared
        shape before any allocation, ids in the vocabulary, finite features, room left
        in the session); on any defect set ``st.error``, failing this step only."""
        s = st.session
        st.decode_t0 = now_s()
        t0 = time.perf_counter()
        try:
            st.x = s.half.decode_payload(st.payload, st.position)
        except PayloadError as e:
            st.error = f"device {s.device_id}: bad payload at step {s.steps} (session {s.session_id}): {e}"
            with self._lock:
                self.bad_payloads_by_device[s.device_id] += 1
        except Exception as e:  # noqa: BLE001 (a decoder fault, an OOM: this step fails, never its batch)
            st.error = f"device {s.device_id}: payload decode failed at step {s.steps}: {type(e).__name__}: {e}"
        st.decode_s = time.perf_counter() - t0

    def _compute(self, steps: list[_Step]) -> list[StepResult | _StepError]:
        """Decode and run a batch of steps; one ``StepResult`` per step (a ``_StepError``
        for a failed one). Steps of the same split run in one batched forward."""
        with self._compute_lock:
            self.meter.busy_start()
            t_batch0 = time.perf_counter()
            for st in steps:
                self._prepare(st)
            ok = [st for st in steps if st.error is None]
            groups: dict[int, list[_Step]] = defaultdict(list)
            for st in ok:
                groups[st.session.split].append(st)
            out: dict[int, tuple[int, float, float, float]] = {}  # id(step) -> (token, compute_s, start_t, group_s)
            cpu_share: dict[int, float] = {}  # id(step) -> its share of the group's CPU seconds
            for grp in groups.values():
                t0 = time.perf_counter()
                c0 = _thread_cpu_s()
                start_t = now_s()
                try:
                    logits = ServerSession.forward([st.session.half for st in grp], [st.x for st in grp],
                                                   last_only=True)
                except Exception as e:  # a defect in one group never takes the server down
                    for st in grp:
                        st.error = f"device {st.session.device_id}: server compute failed: {type(e).__name__}: {e}"
                    continue
                dt = time.perf_counter() - t0
                dc = _thread_cpu_s() - c0
                tokens_in = sum(int(st.x.shape[1]) for st in grp)
                for st, lg in zip(grp, logits):
                    tok = int(lg[0, -1].argmax())  # lg: (1, T, V): greedy next token
                    # Batch time is shared by new-token count: a prefill of 30 tokens
                    # costs the batch more than a decode of 1.
                    out[id(st)] = (tok, dt * int(st.x.shape[1]) / tokens_in, start_t, dt)
                    cpu_share[id(st)] = dc * int(st.x.shape[1]) / tokens_in
            busy_s = time.perf_counter() - t_batch0
            by_dev: dict[str, float] = defaultdict(float)
            results = []
            spans: list[tuple] = []  # recorded after the results: their cost lands in the "return" hop
            n_tokens = 0
            for st in steps:
                s = st.session
                s.last_t = time.monotonic()
                with self._lock:
                    self.decode_s_by_device[s.device_id] += st.decode_s
                span_attrs = {tel.ATTR_SESSION: s.session_id, tel.ATTR_DEVICE: s.device_id, tel.ATTR_STEP: s.steps,
                              tel.ATTR_SPLIT: s.split, tel.ATTR_BYTES: len(st.payload)}
                # queueing lasts until this step's own decode starts (batch-mates decode first)
                dec_end = st.decode_t0 + st.decode_s
                spans.append(("server.queue", st.recv_t, st.decode_t0, st.trace_ctx, span_attrs))
                spans.append(("server.decode", st.decode_t0, dec_end, st.trace_ctx,
                              {**span_attrs, **({"slicer.error": st.error} if st.error else {})}))
                if st.error is not None or id(st) not in out:
                    results.append(_StepError(st.error or "not computed"))
                    continue
                tok, cs, start_t, group_s = out[id(st)]
                done_t = now_s()
                # the batch's interval, from the end of this step's decode (batch-mates'
                # decodes and grouping included) to its result; the device's share of the
                # compute is an attribute
                spans.append(("server.compute", min(dec_end, start_t), done_t, st.trace_ctx,
                              {**span_attrs, "slicer.batch_size": len(ok), "slicer.compute_share_s": cs,
                               "slicer.batch_compute_s": group_s}))
                s.steps += 1
                s.tokens += int(st.x.shape[1])
                s.compute_s += cs
                n_tokens += 1
                by_dev[s.device_id] += cs
                with self._lock:
                    self.compute_s_by_device[s.device_id] += cs
                    self.compute_cpu_s_by_device[s.device_id] += cpu_share.get(id(st), 0.0)
                    self.steps_by_device[s.device_id] += 1
                results.append(StepResult(
                    token=tok, position=st.position, server_recv_t=st.recv_t, decode_s=st.decode_s,
                    server_compute_s=cs, server_start_t=start_t, server_done_t=done_t, batch_size=len(ok)))
            for name, a, b, carrier, attrs in spans:
                tel.record_span(name, a, b, carrier, **attrs)
            self.batch_sizes.append(len(ok))
            self.meter.busy_end(len(ok), n_tokens, dict(by_dev))
            with self._lock:
                self.meter.kv_bytes = self._kv_bytes_locked()
            if self.metrics is not None:
                self.metrics.on_batch(len(ok), busy_s, dict(by_dev))
                self.metrics.on_state(self._queue.qsize() if self._queue else 0, self.meter.kv_bytes, len(self._sessions))
            return results

    def _make_step(self, session_id: str, payload: bytes, position: int, trace_ctx: dict | None) -> _Step:
        with self._lock:
            s = self._get(session_id)
            # Refused at the door, before a batch: a non-bytes payload or a non-integer
            # position must never reach code shared with other devices' steps (the fuzz
            # test found a None payload failing a whole batch).
            bad = None
            if not isinstance(payload, (bytes, bytearray, memoryview)):
                bad = f"payload is {type(payload).__name__}, expected bytes"
            elif not isinstance(position, int) or isinstance(position, bool):
                bad = f"position is {type(position).__name__}, expected an integer"
            if bad is not None:
                self.bad_payloads_by_device[s.device_id] += 1
                raise AdmissionError(f"device {s.device_id}: bad payload at step {s.steps} (session {s.session_id}): {bad}")
            if s.busy:  # two steps of one session in one batch would both extend its KV cache
                raise AdmissionError(f"device {s.device_id}: session {s.session_id} already has a step in flight; "
                                     "send a session's steps one after another")
            s.busy = True
            if s.steps:  # the edge's turnaround since its last result
                gap = min(max(0.0, time.monotonic() - s.last_t), _MAX_GAP_S)
                s.gap_s = gap if s.gap_s == 0.0 else 0.7 * s.gap_s + 0.3 * gap
        return _Step(s, payload, int(position), now_s(), _clean_ctx(trace_ctx))

    def _release(self, st: _Step) -> None:
        with self._lock:
            st.session.busy = False
            st.session.active_t = self._clock()  # idle time counts from the end of its last step

    def step_now(self, session_id: str, payload: bytes, position: int, trace_ctx: dict | None = None) -> StepResult:
        """One step computed at once (no queue, no batching): the in-process path.
        Returns the ``StepResult`` (next token and timings, ``queue_s`` 0); raises
        ``AdmissionError`` for a bad payload or an unknown session."""
        st = self._make_step(session_id, payload, position, trace_ctx)
        try:
            res = self._compute([st])[0]
        finally:
            self._release(st)
        if isinstance(res, _StepError):
            raise AdmissionError(res.error)
        return res

    # ------------------------------------------------------------------ batching (async)
    async def step(self, session_id: str, payload: bytes, position: int, trace_ctx: dict | None = None) -> StepResult:
        """Queue one step and wait for its batch. Same result and errors as ``step_now``."""
        st = self._make_step(session_id, payload, position, trace_ctx)
        queued = False
        try:
            self._ensure_loop()
            fut = asyncio.get_running_loop().create_future()
            await self._queue.put((st, fut))
            queued = True  # from here the batch loop releases the session, once computed
            self.meter.queued(self._queue.qsize())
            res = await fut
        finally:
            if not queued:
                self._release(st)
        if isinstance(res, _StepError):
            raise AdmissionError(res.error)
        return res

    def _ensure_loop(self) -> None:
        if self._loop_task is None or self._loop_task.done():
            self._queue = asyncio.Queue()
            self._loop = asyncio.get_running_loop()
            self._loop_task = self._loop.create_task(self._batch_loop())

    def _nudge(self) -> None:
        """Wake the batch loop (a session closed: it is no longer waited for)."""
        loop, q = self._loop, self._queue
        if loop is not None and q is not None and not loop.is_closed():
            try:
                loop.call_soon_threadsafe(q.put_nowait, None)
            except RuntimeError:
                pass

    def _wait_s(self, window_s: float, batch: list) -> float:
        """How long a batch may wait for the sessions yet to send, from its first step: at
        least the window; beyond it, the longer of the last batch's compute (when the
        server is the bottleneck, one batch of 2k costs less than two of k) and
        ``_WAIT_SHARE`` of the longest usual turnaround among the batch's own steps (when
        the edges are: a split near the end), at most ``_MAX_WAIT_S``. The steps that
        wait set the bound, so fast devices never wait for a slow one; a slower one that
        joins extends it for the rest of the fleet."""
        own = max((st.session.gap_s for st, _ in batch), default=0.0)
        return max(window_s, min(max(self._last_batch_s, _WAIT_SHARE * own), _MAX_WAIT_S))

    def _awaited_until(self, now: float, until: float) -> float | None:
        """When the last open session that has not sent and is due by ``until``
        (monotonic seconds) stops being waited for; None when there is none. A session
        is due at its last result plus its usual turnaround ``gap_s`` and is waited for
        until it is overdue by one more turnaround (at least ``_MIN_OVERDUE_S``); one
        with no turnaround yet is due at once and waited for ``_live_s`` after its open
        or last result. An edge in its local phase or a stalled device is not waited
        for. A session due later than ``until`` does not hold the batch; it joins it if
        it sends in time."""
        latest = None
        with self._lock:
            for s in self._sessions.values():
                if s.busy or s.last_t + s.gap_s > until:
                    continue
                end = s.last_t + (s.gap_s + max(s.gap_s, _MIN_OVERDUE_S) if s.gap_s else self._live_s)
                if now <= end and (latest is None or end > latest):
                    latest = end
        return latest

    async def _batch_loop(self) -> None:
        """Continuous batching: a batch is computed as soon as every open session due to
        send before its deadline has sent (so one device never waits a window for
        nobody), at its deadline (``_wait_s`` after its first step, recomputed as steps
        join), or at ``max_batch`` steps. Sessions of every split go in one batch
        (``_compute`` groups them by split).

        The batch is computed on the event loop's own thread: the step coroutines only
        queue, so nothing is lost by blocking it, and it saves the thread hand-off of an
        executor per batch (see ``slicer bench serve`` for the measured per-token cost)."""
        max_batch = self.cfg.max_batch if self.cfg.batching else 1
        window_s = self.cfg.batch_window_ms / 1000.0 if self.cfg.batching else 0.0
        self._live_s = max(20 * window_s, 0.05)
        while True:
            first = await self._queue.get()
            if first is None:  # a nudge with nothing queued
                continue
            batch = [first]
            # With a 2 ms window alone, N devices split into two alternating cohorts
            # (README, "The serving engine"); waiting for the sessions due soon merges them.
            t_first = time.monotonic()  # the clock of last_t (loop.time() is the event loop's own)
            while len(batch) < max_batch:
                try:
                    item = self._queue.get_nowait()
                    if item is not None:
                        batch.append(item)
                    continue
                except asyncio.QueueEmpty:
                    pass
                now = time.monotonic()
                deadline = t_first + self._wait_s(window_s, batch)
                awaited = self._awaited_until(now, deadline) if now < deadline else None
                if awaited is None:
                    break
                try:  # until a step comes, or the deadline, or the last awaited session drops out
                    item = await asyncio.wait_for(self._queue.get(), min(deadline, awaited) - now)
                except asyncio.TimeoutError:
                    continue  # look again: the deadline has passed or no one is awaited
                if item is not None:
                    batch.append(item)
            self.meter.queued(self._queue.qsize())
            # A session has at most one step in flight (``_make_step`` refuses a second),
            # so a batch never holds two steps of one cache.
            t_start = now_s()
            try:
                t_c = time.perf_counter()
                results = self._compute([st for st, _ in batch])
                self._last_batch_s = time.perf_counter() - t_c
            except Exception as e:  # never let the loop die: fail this batch only
                results = [_StepError(f"server batch failed: {type(e).__name__}: {e}") for _ in batch]
            for (st, fut), res in zip(batch, results):
                self._release(st)
                if isinstance(res, StepResult):
                    res = replace(res, queue_s=max(0.0, t_start - st.recv_t))
                if not fut.done():
                    fut.set_result(res)
            await asyncio.sleep(0)  # let the steps that arrived during the batch queue up

    # ------------------------------------------------------------------ reports
    def load_sample(self) -> dict[str, Any]:
        """One row of the load timeline (``slicer.actors.loadmeter.LoadMeter.sample``).
        Expires idle sessions first (the driver samples every ``load_interval_s``)."""
        self.expire_idle()
        return self.meter.sample()

    def stats(self) -> dict[str, Any]:
        """Totals over the run: compute seconds, requests, steps per device, batch sizes."""
        with self._lock:
            bs = list(self.batch_sizes)
            return {
                "compute_s_by_device": {k: round(v, 6) for k, v in self.compute_s_by_device.items()},
                "compute_s_total": round(sum(self.compute_s_by_device.values()), 6),
                "compute_cpu_s_by_device": {k: round(v, 6) for k, v in self.compute_cpu_s_by_device.items()},
                "compute_cpu_s_total": round(sum(self.compute_cpu_s_by_device.values()), 6),
                # Payload checks + codec decode, kept apart from model compute: a split
                # policy pays it, cloud-only (token ids) hardly does.
                "decode_s_by_device": {k: round(v, 6) for k, v in self.decode_s_by_device.items()},
                "decode_s_total": round(sum(self.decode_s_by_device.values()), 6),
                "requests_by_device": dict(self.requests_by_device),
                "steps_by_device": dict(self.steps_by_device),
                "requests": sum(self.requests_by_device.values()),
                "batches": len(bs),
                "batch_size_mean": round(sum(bs) / len(bs), 3) if bs else 0.0,
                "batch_size_max": max(bs) if bs else 0,
                "batch_size_hist": {str(k): bs.count(k) for k in sorted(set(bs))},
                "open_sessions": len(self._sessions),
                "rss_bytes": process_rss_bytes(),
                "weight_bytes": self.model.weight_bytes,
                "loaded_units": sorted(self.model.loaded),
                "reserved_kv_bytes": self.reserved_kv_bytes,
                "step_reserve_bytes": self._step_reserve_locked(),
                "rejected": list(self.rejected),
                "rejected_total": self.rejected_total,
                "expired_sessions": self.expired_sessions,
                "auth_failures": self.auth_failures,
                "identities": None if self._identities is None else len(self._identities),
                "bad_payloads_by_device": dict(self.bad_payloads_by_device),
                "config": {"max_batch": self.cfg.max_batch, "batch_window_ms": self.cfg.batch_window_ms,
                           "batching": self.cfg.batching, "max_sessions": self.cfg.max_sessions,
                           "max_kv_bytes": self.cfg.max_kv_bytes, "max_payload_bytes": self.cfg.max_payload_bytes,
                           "max_sessions_per_device": self.cfg.max_sessions_per_device,
                           "max_kv_bytes_per_device": self.cfg.max_kv_bytes_per_device,
                           "session_ttl_s": self.cfg.session_ttl_s, "open_rate_per_s": self.cfg.open_rate_per_s,
                           "open_burst": self.cfg.open_burst, "transport": self.cfg.transport},
            }
