"""Faults: how the driver survives an edge actor, an edge node or the server dying, and
the helpers tests use to inject those faults.

Recovery, by what died:

- **an edge actor** (process crash, OOM kill, ``ray.kill`` without ``no_restart``): Ray
  restarts it (``EDGE_MAX_RESTARTS``) on a node matching its label selector; its
  in-flight ``generate`` fails with ``RayActorError``. ``Resubmitter`` waits (bounded)
  for the restarted actor and resubmits the same request, which the new actor
  regenerates from scratch: greedy decoding makes the tokens identical, and the server
  drops the dead edge's session when the request reopens (``Server.open_session``).
- **an edge node**: every actor on it dies; Ray restarts each on another alive node with
  the same ``role``/``device-class`` labels and a free ``edge_slot`` when one exists
  (the device "moves"); otherwise ``Resubmitter`` finds no node for the class
  (``slicer.orchestrator.cluster.check_placement``) and fails the request with an
  ``EdgeLostError`` text naming the device, its class, the lost actor and the missing node.
- **the server**: Ray restarts it (``SERVER_MAX_RESTARTS``) with no sessions; each edge's
  ``slicer.actors.recovery.RecoveringServerClient`` rebuilds its session by replaying what it
  sent and goes on. The driver's own server calls (load samples) skip a sample while it
  restarts (``sample_or_none``).

Bounds: a request is resubmitted at most ``max_attempts`` times; a restart is awaited at
most ``restart_timeout_s``; everything else has the runtime's own timeouts. A request
therefore ends as a record, ok or failed with its cause: never lost, never hanging.

Fault injection (tests): ``on_placed(fn)`` registers a callback the runner calls once
every actor is up, with ``{"server", "policy", "edges": {device_id: handle}, "where":
{device_id: where()}}``; the callback may start a thread that kills things
(``kill_actor``, ``LocalCluster.remove_node``).
"""
from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from slicer.actors.protocol import Request, RequestRecord

#: Ray restarts of one edge actor over a run (a crash loop ends after these).
EDGE_MAX_RESTARTS = 3
#: Ray restarts of the server actor over a run.
SERVER_MAX_RESTARTS = 2


class EdgeLostError(RuntimeError):
    """A device's actor died and could not be brought back (no node of its class, or
    restarts exhausted). Only used for its name in records."""


def actor_died(e: BaseException) -> bool:
    """True for the errors that mean 'the actor process is gone' (retry on a restart)."""
    try:
        from ray.exceptions import RayActorError
    except ImportError:
        return False
    return isinstance(e, RayActorError)


@dataclass
class Resubmitter:
    """The driver's decision for a request whose ``generate`` raised."""

    device_class: dict[str, str]
    """Device id -> device class (for the placement check)."""
    max_attempts: int = 3
    """Most resubmissions of one request."""
    restart_timeout_s: float = 180.0
    """Longest wait for a restarted actor to answer (it loads its model first)."""
    attempts: dict[str, int] = field(default_factory=dict)
    """Request id -> resubmissions so far."""
    causes: dict[str, list[str]] = field(default_factory=dict)
    """Request id -> the failures it recovered from (or died of)."""
    where: dict[str, dict] = field(default_factory=dict)
    """Device id -> ``where()`` of its actor after a restart (its new node)."""

    def on_error(self, dev_id: str, request: Request, e: BaseException, handle: Any) -> str | None:
        """None: resubmit ``request`` to ``handle`` (the restarted actor is up); else the
        error text for the request's record (the cause named)."""
        rid = request.request_id
        cause = f"{type(e).__name__}: {_first_line(e)}"
        self.causes.setdefault(rid, []).append(cause)
        if not actor_died(e):
            return cause
        cls = self.device_class.get(dev_id, "?")
        n = self.attempts.get(rid, 0) + 1
        self.attempts[rid] = n
        if n > self.max_attempts:
            return (f"EdgeLostError: device {dev_id} (class {cls}): its actor died {n} times during request {rid}; "
                    f"gave up after {self.max_attempts} resubmissions; last cause {cause}")
        missing = self._no_node(cls)
        if missing:
            return (f"EdgeLostError: device {dev_id} (class {cls}) lost its actor ({cause}) and no alive node of "
                    f"class {cls} can take it: {missing}")
        try:
            self.where[dev_id] = self._await_restart(dev_id, handle)
        except Exception as e2:  # noqa: BLE001 (restarts exhausted, node gone, timeout: each reported with its cause)
            missing = self._no_node(cls)
            why = f"no alive node of class {cls}: {missing}" if missing else _first_line(e2)
            return f"EdgeLostError: device {dev_id} (class {cls}) lost its actor ({cause}) and it did not come back: {why}"
        return None

    def _await_restart(self, dev_id: str, handle: Any) -> dict:
        """``where()`` of the restarted actor. While Ray restarts it, calls fail at once
        with ``ActorUnavailableError`` (at-most-once calls): poll until it answers,
        it is dead for good (``ActorDiedError``) or ``restart_timeout_s`` passes."""
        from ray.exceptions import ActorUnavailableError

        from slicer.actors.ray_actors import get

        deadline = time.monotonic() + self.restart_timeout_s
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"the actor of device {dev_id} did not restart within {self.restart_timeout_s:g} s")
            try:
                return get(handle.where.remote({}), min(left, 5.0), f"restart of the actor of device {dev_id}")
            except (ActorUnavailableError, TimeoutError):
                # Still restarting, or pending placement: fail fast once the cluster
                # knows the node is gone and no other node of the class is alive.
                missing = self._no_node(self.device_class.get(dev_id, "?"))
                if missing:
                    raise RuntimeError(f"no alive node of class {self.device_class.get(dev_id, '?')}: {missing}") from None
                time.sleep(min(0.5, max(0.0, left)))

    @staticmethod
    def _no_node(device_class: str) -> str | None:
        """The placement error text when no alive node can host an edge of the class."""
        from slicer.orchestrator import cluster as C

        try:
            C.check_placement(C.edge_selector(device_class), resources={C.EDGE_SLOT: 1})
        except C.PlacementError as pe:
            return str(pe)
        return None

    def annotate(self, rec: RequestRecord) -> RequestRecord:
        """Set ``attempts`` and ``recovered_from`` of a request's record."""
        rec.attempts = 1 + self.attempts.get(rec.request_id, 0)
        rec.recovered_from = list(self.causes.get(rec.request_id, []))
        return rec


def sample_or_none(server: Any, timeout_s: float = 10.0) -> dict | None:
    """One load sample of the server, or None while it is down or restarting."""
    from slicer.actors.ray_actors import get

    try:
        return get(server.load_sample.remote(), timeout_s=timeout_s, what="server load sample")
    except Exception:  # noqa: BLE001 (a missing load sample must never end a run)
        return None


def _first_line(e: BaseException) -> str:
    s = str(e).strip().splitlines()
    return s[0][:300] if s else ""


# ----------------------------------------------------------------------------- injection

_placed_hooks: list[Callable[[dict], None]] = []
_hooks_lock = threading.Lock()


def notify_placed(actors: dict) -> None:
    """Called by the runner once every actor is up (see the module docstring)."""
    with _hooks_lock:
        hooks = list(_placed_hooks)
    for fn in hooks:
        fn(actors)


@contextlib.contextmanager
def on_placed(fn: Callable[[dict], None]) -> Iterator[None]:
    """Register ``fn`` for runs started inside the ``with`` block."""
    with _hooks_lock:
        _placed_hooks.append(fn)
    try:
        yield
    finally:
        with _hooks_lock:
            _placed_hooks.remove(fn)


def kill_actor(handle: Any, restart: bool = True) -> None:
    """Kill an actor as a crash would (``restart=True``: Ray may restart it)."""
    import ray

    ray.kill(handle, no_restart=not restart)


def wait_for_steps(server: Any, at_least: int, device_id: str | None = None, timeout_s: float = 120.0) -> int:
    """Poll the server's books until ``device_id`` (None: all devices together) has had
    ``at_least`` steps computed; returns the count. Fault tests use it to strike
    mid-generation whatever the machine's speed (a wall-clock delay is not enough)."""
    from slicer.actors.ray_actors import get

    deadline = time.monotonic() + timeout_s
    while True:
        by_dev = get(server.stats.remote(), 30.0, "server stats")["steps_by_device"]
        n = by_dev.get(device_id, 0) if device_id is not None else sum(by_dev.values())
        if n >= at_least:
            return n
        if time.monotonic() > deadline:
            raise TimeoutError(f"{device_id or 'the devices'} reached only {n} of {at_least} steps in {timeout_s:g} s")
        time.sleep(0.02)


def after(delay_s: float, fn: Callable[[], None]) -> threading.Thread:
    """Run ``fn`` after ``delay_s`` seconds in a daemon thread; exceptions are kept on
    the thread as ``.error`` so a test can assert the fault really happened."""

    def body():
        time.sleep(delay_s)
        try:
            fn()
            t.done = True
        except BaseException as e:  # noqa: BLE001 (reported to the test)
            t.error = e

    t = threading.Thread(target=body, daemon=True, name="fault-injection")
    t.error, t.done = None, False
    t.start()
    return t
