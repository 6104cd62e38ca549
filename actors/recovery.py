"""Surviving a server restart mid-generation: the edge keeps what it sent and replays it.

A server actor that dies (process crash, ``ray.kill`` without ``no_restart``) is
restarted by Ray (``max_restarts``) with an empty session table: every KV cache is gone.
``RecoveringServerClient`` wraps the edge's server client (``slicer.actors.edge.ServerClient``)
and keeps, per session, the ``open_session`` arguments and every ``(position, payload)``
the edge sent (~1 KB per decode step on the
tiny models). When a call finds the server gone (``ray.exceptions.RayActorError``: the
actor died or is restarting) or restarted (``AdmissionError`` "unknown session"), it
opens a fresh session on the (restarted) server, replays the log step by step (same
positions, same bytes: the server rebuilds the exact cache, since its compute is a
deterministic function of the payloads) and then sends the step that failed. The edge
never sees the failure; the token of the failed step is the one an undisturbed server
would have returned (greedy decoding). A session that EXPIRED on a live server (idle past
``server.session_ttl_s``: ``SessionExpiredError``, its KV cache freed) is rebuilt the
same way. The rebuilt session's open names the old token (``supersedes``), so if the old
session still exists the server replaces it rather than holding both.

Every attempt is bounded: the inner client's calls have timeouts (``ray_actors.get``),
and recovery gives up after ``max_recoveries`` attempts or ``recovery_timeout_s``
seconds with a ``ServerLostError`` naming the session and the last cause. Errors that
are not a lost server (limits, a bad payload, a timeout of a live server) pass through
unchanged: replaying would not fix them.

Pure Python (no Ray import at module level) so the unit tests drive it with a fake
server client that "restarts".
"""
from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from slicer.actors.protocol import AdmissionError, SessionRebuild


class ServerLostError(RuntimeError):
    """The server died and its session could not be rebuilt (restarts exhausted or too
    slow). The message names the session, the attempts and the last cause."""


def _ray_actor_error_types() -> tuple[type[BaseException], ...]:
    try:
        from ray.exceptions import RayActorError

        return (RayActorError,)
    except ImportError:  # Ray absent: only the in-process markers apply
        return ()


def server_lost(e: BaseException) -> bool:
    """True when ``e`` means the session's state on the server is gone: its actor died
    or is restarting (``RayActorError``: ``ActorDiedError``, ``ActorUnavailableError``),
    it answered that it does not know the session (it restarted in between), or the
    session expired (``slicer.actors.server.SessionExpiredError``, matched by name so
    this module imports no torch)."""
    if isinstance(e, _ray_actor_error_types()):
        return True
    if isinstance(e, ServerRestarted):
        return True
    if isinstance(e, AdmissionError) and type(e).__name__ == "SessionExpiredError":
        return True
    return isinstance(e, AdmissionError) and "unknown session" in str(e)


class ServerRestarted(RuntimeError):
    """Raised by fakes in tests (and usable by any client) to mean 'the server is gone'."""


@dataclass
class _SessionLog:
    """What one session needs to be rebuilt."""

    open_args: tuple
    """``(device_id, request_id, split, max_tokens)`` as first opened."""
    server_sid: str
    """The session's token on the server now (changes after each rebuild)."""
    sent: list[tuple[int, bytes]] = field(default_factory=list)
    """Every ``(position, payload)`` the server accepted, in order."""
    recoveries: int = 0
    """How many times this session was rebuilt."""


class RecoveringServerClient:
    """A server client that rebuilds lost sessions by replay (see the module docstring)."""

    def __init__(self, inner: Any, *, max_recoveries: int = 100, recovery_timeout_s: float = 180.0,
                 backoff_s: float = 0.25, max_backoff_s: float = 2.0, sleep: Callable[[float], None] = time.sleep):
        """``inner``: the real client (``RayServerClient`` or ``InProcessServer``);
        ``max_recoveries``: rebuild attempts per failed call; ``recovery_timeout_s``:
        wall-clock bound of one recovery (a restarted server loads its model first: ~5
        CPU-s for the tiny models, minutes for big ones); ``backoff_s``: pause between
        attempts (doubling up to ``max_backoff_s``). Calls to an actor that is still
        restarting fail at once (``ActorUnavailableError``, at-most-once calls), so it
        is the time bound, not the attempt count, that usually ends a wait."""
        self.inner = inner
        self.max_recoveries = int(max_recoveries)
        self.recovery_timeout_s = float(recovery_timeout_s)
        self.backoff_s = float(backoff_s)
        self.max_backoff_s = float(max_backoff_s)
        self.sleep = sleep
        self._logs: dict[str, _SessionLog] = {}
        self.events: list[SessionRebuild] = []
        """One per rebuild: request, replayed steps, position, seconds, cause."""

    # ------------------------------------------------------------------ client API
    def open_session(self, device_id, request_id, split, max_tokens, trace_ctx=None, supersedes=None):
        args = (device_id, request_id, split, max_tokens)
        log = self._logs.get(supersedes) if supersedes is not None else None
        old = log.server_sid if log is not None else supersedes
        sid = self._with_retry(lambda: self.inner.open_session(*args, trace_ctx or {}, supersedes=old),
                               f"open_session of {request_id}")
        self._logs[sid] = _SessionLog(args, sid)
        return sid

    def step(self, session_id, payload, position, trace_ctx=None):
        log = self._logs.get(session_id)
        if log is None:  # not opened through this client: nothing to replay
            return self.inner.step(session_id, payload, position, trace_ctx or {})
        try:
            res = self.inner.step(log.server_sid, payload, position, trace_ctx or {})
        except Exception as e:
            if not server_lost(e):
                raise
            res = self._rebuild(log, payload, position, trace_ctx or {}, e)
        log.sent.append((int(position), payload))
        return res

    def close_session(self, session_id, trace_ctx=None):
        log = self._logs.pop(session_id, None)
        try:
            return self.inner.close_session(log.server_sid if log else session_id, trace_ctx or {})
        except Exception as e:
            if server_lost(e):
                return {}  # the session went with the server
            raise

    @property
    def transport(self) -> tuple[str | None, str | None]:
        """The inner client's (how steps travel, and why not directly)."""
        return getattr(self.inner, "transport", (None, None))

    def drain_events(self) -> list[SessionRebuild]:
        out, self.events = self.events, []
        return out

    # ------------------------------------------------------------------ recovery
    def _with_retry(self, fn: Callable[[], Any], what: str) -> Any:
        t0 = time.monotonic()
        last: BaseException | None = None
        attempt = 0
        for attempt in range(self.max_recoveries + 1):
            try:
                return fn()
            except Exception as e:
                if not server_lost(e):
                    raise
                last = e
            if time.monotonic() - t0 > self.recovery_timeout_s:
                break
            self.sleep(min(self.max_backoff_s, self.backoff_s * 2**attempt))
        raise ServerLostError(f"{what}: server unavailable after {attempt + 1} attempt(s) in "
                              f"{time.monotonic() - t0:.1f} s; last cause {type(last).__name__}: {last}")

    def _rebuild(self, log: _SessionLog, payload, position, trace_ctx, cause: BaseException) -> dict:
        """Open a new session, replay ``log.sent``, send the failed step; retry while the
        server keeps being lost."""
        t0 = time.monotonic()
        last: BaseException = cause
        attempt = 0
        for attempt in range(self.max_recoveries):
            if attempt and time.monotonic() - t0 > self.recovery_timeout_s:
                break
            self.sleep(min(self.max_backoff_s, self.backoff_s * 2**attempt))
            sid = None
            try:
                sid = self.inner.open_session(*log.open_args, trace_ctx, supersedes=log.server_sid)
                for pos, p in log.sent:
                    self.inner.step(sid, p, pos, trace_ctx)
                res = self.inner.step(sid, payload, position, trace_ctx)
            except Exception as e:
                if not server_lost(e):
                    if sid is not None:  # never leave the rebuilt session holding its KV quota
                        try:
                            self.inner.close_session(sid, trace_ctx)
                        except Exception:  # noqa: BLE001 - the original error is what matters
                            pass
                    raise
                last = e
                continue
            log.server_sid = sid
            log.recoveries += 1
            self.events.append(SessionRebuild(request_id=log.open_args[1], replayed_steps=len(log.sent),
                                              at_position=int(position), seconds=round(time.monotonic() - t0, 3),
                                              cause=f"{type(cause).__name__}: {str(cause)[:200]}"))
            return res
        raise ServerLostError(
            f"device {log.open_args[0]} request {log.open_args[1]}: the server was lost at position {position} "
            f"and the session could not be rebuilt ({attempt + 1} attempt(s), "
            f"{time.monotonic() - t0:.1f} s); last cause {type(last).__name__}: {str(last)[:300]}")
