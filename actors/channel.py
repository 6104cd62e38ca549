"""The step channel: an edge's per-token steps over one TCP connection to the server
actor, beside Ray.

A Ray actor call costs about 1 ms round trip on loopback (10 KB by value, NOTES.md); a
decode step of a small model is a few milliseconds of compute, so two calls a token (the
step there, its result back) were the largest part of the cluster's per-token overhead
(``slicer bench serve``'s latency ratio). The same 600-byte step and 100-byte answer over
a persistent TCP connection between the same two actors took 0.07 ms (median of 1000,
three runs 0.067-0.080 ms against 0.98-1.15 ms for the Ray call, this 2-core machine).
Ray still does everything else: placement, session open and close (they carry the
device's credential), restarts, and handing out the channel's address and key.

Wire format (little-endian; one step in flight per connection):

- hello: the client sends the server's 32-byte key (``ServerShell.channel`` gives it to
  Ray callers only) within ``hello_timeout_s`` of connecting; the server answers one byte,
  0 (accepted) or 1 (full: the edge sends over Ray for a while), or closes (a wrong key);
- request: ``<BqHHI`` (op = 1, position, token length, trace length, payload length),
  then the session token (utf-8), the trace carrier (JSON object, may be empty) and the
  payload;
- answer: ``<BI`` (status, body length), then the ``StepResult`` packed as ``<qqdddddqd``
  (status 0) or an error message (utf-8): 1 refused (``AdmissionError``), 2 the session
  expired (``SessionExpiredError``), 3 failed, 4 refused frame (the server closes the
  connection after it).

The server checks every length before it reads the bytes (a token over 512 bytes, a
trace over 8 KiB, a payload over ``max_payload_bytes`` or an unknown op is answered with
the reason and the connection closed: the stream cannot be trusted after it; the client
checks the same limits, which come with the address, before it sends), bounds the time
to finish a frame once begun and to take its answer (``frame_timeout_s``) and the time a
connection may sit idle (``idle_timeout_s``), and caps connections, counting those
still to send their key; a step's own errors are the same ``Server.step`` answers over
Ray.
"""
from __future__ import annotations

import asyncio
import hmac
import json
import secrets
import select
import socket
import struct
import time
from collections.abc import Awaitable, Callable
from typing import Any

from slicer.actors.protocol import AdmissionError, StepResult
from slicer.actors.recovery import ServerRestarted

KEY_BYTES = 32
OP_STEP = 1
OK, REFUSED, EXPIRED, FAILED, CLOSING = 0, 1, 2, 3, 4
ACCEPTED, BUSY = b"\x00", b"\x01"
_REQ = struct.Struct("<BqHHI")
_ANS = struct.Struct("<BI")
_RESULT = struct.Struct("<qqdddddqd")
#: Longest session token (``Server`` tokens are about 60 bytes).
MAX_TOKEN_BYTES = 512
#: Longest trace carrier (a W3C traceparent and tracestate are under 600 bytes).
MAX_TRACE_BYTES = 8192
#: Longest answer a client reads (an error message; a result is 72 bytes).
MAX_ANSWER_BYTES = 1 << 16


class ChannelUnavailable(ConnectionError):
    """The channel cannot be used now (unreachable, full, a refused key): the edge sends
    over Ray and tries the channel again later."""


class ChannelLost(ServerRestarted):
    """The connection broke (the server died or closed it): what was in flight is lost,
    and the edge's recovery rebuilds the session by replay (``slicer.actors.recovery``)."""


def _pack_result(r: StepResult) -> bytes:
    return _RESULT.pack(r.token, r.position, r.server_recv_t, r.decode_s, r.server_compute_s, r.server_start_t,
                        r.server_done_t, r.batch_size, r.queue_s)


def _unpack_result(b: bytes) -> StepResult:
    t, pos, recv, dec, comp, start, done, bs, q = _RESULT.unpack(b)
    return StepResult(token=t, position=pos, server_recv_t=recv, decode_s=dec, server_compute_s=comp,
                      server_start_t=start, server_done_t=done, batch_size=bs, queue_s=q)


def _trace(b: bytes) -> dict:
    """The trace carrier of a frame: a JSON object, else nothing (tracing is an add-on:
    a bad carrier never fails a step; ``Server`` keeps only its string items)."""
    if not b:
        return {}
    try:
        v = json.loads(b)
    except (ValueError, RecursionError):
        return {}
    return v if isinstance(v, dict) else {}


class ChannelServer:
    """The server end: an asyncio TCP server on the actor's event loop whose frames go to
    ``step`` (``Server.step``'s signature, same answers)."""

    def __init__(self, step: Callable[[str, bytes, int, dict], Awaitable[StepResult]], *, max_payload_bytes: int,
                 max_connections: int = 1024, max_pending: int = 256, hello_timeout_s: float = 2.0,
                 frame_timeout_s: float = 30.0, idle_timeout_s: float = 900.0):
        self.step = step
        self.key = secrets.token_bytes(KEY_BYTES)
        self.max_payload_bytes = int(max_payload_bytes)
        self.max_connections, self.max_pending = int(max_connections), int(max_pending)
        self.hello_timeout_s, self.frame_timeout_s = float(hello_timeout_s), float(frame_timeout_s)
        self.idle_timeout_s = float(idle_timeout_s)
        self.connections = self.pending = 0
        self.counts = {"steps": 0, "refused_hellos": 0, "refused_frames": 0, "dropped_connections": 0}
        self._server: asyncio.base_events.Server | None = None

    async def start(self, host: str, port: int = 0) -> dict[str, Any]:
        """Listen on ``host`` (the node's address); returns ``{host, port, key}`` and the
        frame limits the client checks before sending."""
        self._server = await asyncio.start_server(self._handle, host, port)
        return {"host": host, "port": self._server.sockets[0].getsockname()[1], "key": self.key,
                "max_payload_bytes": self.max_payload_bytes}

    def close(self) -> None:
        if self._server is not None:
            self._server.close()

    def stats(self) -> dict[str, int]:
        return {"connections": self.connections, **self.counts}

    async def _handle(self, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        if self.pending >= self.max_pending or self.connections + self.pending >= self.max_connections:
            self.counts["dropped_connections"] += 1
            w.write(BUSY)  # the edge sends over Ray for a while (not a lost server)
            try:  # take its key first: closing with unread bytes would reset, losing the answer
                await asyncio.wait_for(r.read(KEY_BYTES), 0.5)
            except (asyncio.TimeoutError, ConnectionError):
                pass
            w.close()
            return
        sock = w.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.pending += 1
        try:
            key = await asyncio.wait_for(r.readexactly(KEY_BYTES), self.hello_timeout_s)
        except (asyncio.TimeoutError, asyncio.IncompleteReadError, ConnectionError):
            key = b""
        finally:
            self.pending -= 1
        if not hmac.compare_digest(key, self.key):
            self.counts["refused_hellos"] += 1
            w.close()
            return
        self.connections += 1
        try:
            w.write(ACCEPTED)
            while True:
                try:  # an edge may sit idle here between requests (it reconnects after a close)
                    head = await asyncio.wait_for(r.readexactly(1), self.idle_timeout_s)
                except asyncio.IncompleteReadError:
                    break  # the client closed
                head += await asyncio.wait_for(r.readexactly(_REQ.size - 1), self.frame_timeout_s)
                op, position, n_token, n_trace, n_payload = _REQ.unpack(head)
                bad = self._bad_frame(op, n_token, n_trace, n_payload)
                if bad is not None:
                    self.counts["refused_frames"] += 1
                    w.write(_ANS.pack(CLOSING, len(bad)) + bad)
                    await asyncio.wait_for(w.drain(), self.frame_timeout_s)
                    break
                body = await asyncio.wait_for(r.readexactly(n_token + n_trace), self.frame_timeout_s)
                payload = await asyncio.wait_for(r.readexactly(n_payload), self.frame_timeout_s)
                w.write(await self._answer(body[:n_token].decode("utf-8", "replace"), payload, position,
                                           _trace(body[n_token:])))
                await asyncio.wait_for(w.drain(), self.frame_timeout_s)  # a client that never reads
        except (asyncio.TimeoutError, asyncio.IncompleteReadError, ConnectionError):
            pass  # a stalled, idle or vanished client: only its connection goes
        except asyncio.CancelledError:
            pass  # the loop is shutting down: this task is the connection's root, it just ends
        finally:
            self.connections -= 1
            w.close()

    def _bad_frame(self, op: int, n_token: int, n_trace: int, n_payload: int) -> bytes | None:
        if op != OP_STEP:
            why = f"unknown op {op}: allowed {OP_STEP} (step)"
        elif n_token > MAX_TOKEN_BYTES:
            why = f"session token of {n_token} bytes declared: at most {MAX_TOKEN_BYTES}"
        elif n_trace > MAX_TRACE_BYTES:
            why = f"trace carrier of {n_trace} bytes declared: at most {MAX_TRACE_BYTES}"
        elif n_payload > self.max_payload_bytes:
            why = f"payload of {n_payload} bytes declared: at most max_payload_bytes={self.max_payload_bytes}"
        else:
            return None
        return f"refused frame ({why}); the server closed the connection".encode()

    async def _answer(self, token: str, payload: bytes, position: int, trace: dict) -> bytes:
        try:
            body = _pack_result(await self.step(token, payload, position, trace))
        except AdmissionError as e:
            status = EXPIRED if type(e).__name__ == "SessionExpiredError" else REFUSED
            msg = str(e).encode("utf-8", "replace")[:MAX_ANSWER_BYTES]
            return _ANS.pack(status, len(msg)) + msg
        except Exception as e:  # noqa: BLE001 (the Ray path would raise it to the caller too)
            msg = f"{type(e).__name__}: {e}".encode("utf-8", "replace")[:MAX_ANSWER_BYTES]
            return _ANS.pack(FAILED, len(msg)) + msg
        self.counts["steps"] += 1
        return _ANS.pack(OK, len(body)) + body


class ChannelClient:
    """The edge end: one blocking connection, one step at a time. Raises
    ``ChannelUnavailable`` (an ``OSError``) when the server refuses or cannot take the
    connection; ``max_payload_bytes``: the server's limit, checked before sending."""

    def __init__(self, host: str, port: int, key: bytes, *, timeout_s: float, connect_timeout_s: float = 5.0,
                 max_payload_bytes: int | None = None):
        self.timeout_s, self.max_payload_bytes = timeout_s, max_payload_bytes
        self.sock = socket.create_connection((host, int(port)), timeout=connect_timeout_s)
        try:
            self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.sock.sendall(bytes(key))
            ack = self.sock.recv(1)
            if ack == BUSY:
                raise ChannelUnavailable("the server's channel is full")
            if ack != ACCEPTED:
                raise ChannelUnavailable("the server closed the connection at the hello (a wrong key?)")
            self.sock.settimeout(timeout_s)
            self._poll = select.poll()
            self._poll.register(self.sock, select.POLLIN)
        except BaseException:
            self.sock.close()
            raise
        self.in_flight = False  # a step was sent and its whole answer not read: the stream is out of step

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass

    @property
    def closed(self) -> bool:
        return self.sock.fileno() < 0

    def usable(self) -> bool:
        """False when this connection cannot carry the next step: closed here, a step's
        answer never fully read, or anything readable between steps (the server closed
        it, idle too long or restarted, or stray bytes): one ``poll`` with no wait, so
        the next step reconnects rather than failing mid-step or reading a stale answer."""
        return not (self.closed or self.in_flight or self._poll.poll(0))

    def step(self, token: str, payload: bytes, position: int, trace_ctx: dict | None = None) -> StepResult:
        """One step; raises ``AdmissionError``/``SessionExpiredError`` as the server does
        (a frame over the limits is refused here, before it is sent), ``TimeoutError``
        after ``timeout_s``, ``ChannelLost`` when the connection broke."""
        tb = str(token).encode("utf-8")
        trb = json.dumps(trace_ctx).encode() if trace_ctx else b""
        if len(trb) > MAX_TRACE_BYTES:
            trb = b""  # tracing is an add-on: the step goes without it
        if len(tb) > MAX_TOKEN_BYTES:
            raise AdmissionError(f"session token of {len(tb)} bytes: at most {MAX_TOKEN_BYTES}")
        if self.max_payload_bytes is not None and len(payload) > self.max_payload_bytes:
            raise AdmissionError(f"payload of {len(payload)} bytes: at most max_payload_bytes={self.max_payload_bytes}")
        if not -(2**63) <= int(position) < 2**63:
            raise AdmissionError(f"position of {int(position).bit_length()} bits: at most a signed 64-bit integer")
        head = _REQ.pack(OP_STEP, int(position), len(tb), len(trb), len(payload))
        try:
            self.in_flight = True
            self.sock.sendall(b"".join((head, tb, trb, payload)))
            status, n = _ANS.unpack(self._recv(_ANS.size))
            if status > CLOSING or n > MAX_ANSWER_BYTES or (status == OK and n != _RESULT.size):
                raise ChannelLost(f"answer of status {status} and {n} bytes: not a slicer step channel")
            body = self._recv(n)
            self.in_flight = False
        except socket.timeout as e:
            raise TimeoutError(f"server step did not answer within {self.timeout_s:g} s") from e
        except OSError as e:
            raise ChannelLost(f"{type(e).__name__}: {e}") from e
        if status == OK:
            return _unpack_result(body)
        msg = body.decode("utf-8", "replace")
        if status == CLOSING:
            self.close()
            raise AdmissionError(msg)
        if status == EXPIRED:
            from slicer.actors.server import SessionExpiredError

            raise SessionExpiredError(msg)
        if status == REFUSED:
            raise AdmissionError(msg)
        raise RuntimeError(msg)

    def _recv(self, n: int) -> bytes:
        buf = bytearray(n)
        view, got = memoryview(buf), 0
        while got < n:
            k = self.sock.recv_into(view[got:])
            if k == 0:
                raise ChannelLost("the server closed the connection")
            got += k
        return bytes(buf)


class ChannelSteps:
    """An edge's steps over the channel where the server offers one, else through
    ``fallback`` (the Ray call). ``address()``: the server's ``{host, port, key, ...}``,
    ``{error}`` when its channel did not start, or None (``server.transport: ray``);
    asked at each (re)connect. Where the channel cannot be used now (unreachable, full)
    steps go over Ray and the channel is tried again after ``retry_s``. ``transport``
    says which path the last step took and ``fallback_reason`` why not the channel."""

    def __init__(self, address: Callable[[], dict | None],
                 fallback: Callable[[str, bytes, int, dict], StepResult], *, timeout_s: float,
                 connect_timeout_s: float = 5.0, retry_s: float = 30.0):
        self.address, self.fallback = address, fallback
        self.timeout_s, self.connect_timeout_s, self.retry_s = timeout_s, connect_timeout_s, retry_s
        self.client: ChannelClient | None = None
        self.transport: str | None = None
        self.fallback_reason: str | None = None
        self._retry_at: float | None = 0.0  # None: never (the server offers no channel)

    def step(self, token: str, payload: bytes, position: int, trace_ctx: dict) -> StepResult:
        client = self._client()
        if client is None:
            self.transport = "ray"
            return self.fallback(token, payload, position, trace_ctx)
        self.transport = "direct"
        try:
            return client.step(token, payload, position, trace_ctx)
        except BaseException:
            if client.closed or client.in_flight:  # refused frame, lost or timed-out step: reconnect next
                self.close()
            raise

    def _client(self) -> ChannelClient | None:
        if self.client is not None and not self.client.usable():
            self.close()
        if self.client is not None or self._retry_at is None or time.monotonic() < self._retry_at:
            return self.client
        addr = self.address()
        if addr is None:
            self._retry_at = None
            self.fallback_reason = "the server offers no channel (server.transport: ray)"
            return None
        if "error" in addr:
            self._retry_at = time.monotonic() + self.retry_s
            self.fallback_reason = f"the server's channel did not start: {addr['error']}; tried again after {self.retry_s:g} s"
            return None
        try:
            self.client = ChannelClient(addr["host"], addr["port"], addr["key"], timeout_s=self.timeout_s,
                                        connect_timeout_s=self.connect_timeout_s,
                                        max_payload_bytes=addr.get("max_payload_bytes"))
            self.fallback_reason = None
        except OSError as e:  # unreachable from this node (a firewall), full: Ray calls for a while
            self._retry_at = time.monotonic() + self.retry_s
            self.fallback_reason = (f"channel {addr['host']}:{addr['port']} not usable ({type(e).__name__}: {e}); "
                                    f"Ray calls, the channel tried again after {self.retry_s:g} s")
        return self.client

    def close(self) -> None:
        if self.client is not None:
            self.client.close()
            self.client = None
