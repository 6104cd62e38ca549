"""The Ray shells: the only module that calls ``ray.remote``. Each shell builds its plain
class (``EdgeDevice``, ``Server``, ``Policy``) inside the actor and forwards calls to it.

Every method takes a ``trace_ctx`` dict (a W3C carrier, possibly empty) so tracing can
propagate context without changing signatures. Every wait has a timeout (``get``):
nothing waits forever. Steps go over the server's step channel (``slicer.actors.channel``:
one TCP connection per edge, 0.07 ms a round trip against 1.0 ms for an actor call);
with ``server.transport: ray``, or where an edge cannot connect, payload bytes go by
value in the actor call (Ray inlines arguments under ~100 KB: 0.7-0.8 ms per 10 KB round
trip on loopback against 1.8-4.6 ms through ``ray.put``, NOTES.md).

Placement: the caller (``slicer.orchestrator.runner``) passes the label selector and custom
resources (``slicer.orchestrator.cluster``: ``role``/``device-class`` labels, ``edge_slot``/
``server_slot`` resources) after checking that a node matches, since a selector that
matches nothing pends forever in Ray.
"""
from __future__ import annotations

import os
from dataclasses import replace
from typing import Any, Iterable

import ray
from ray.exceptions import GetTimeoutError, RayActorError, RayTaskError

from slicer.actors.edge import EdgeConfig, EdgeDevice
from slicer.actors.policy_actor import Policy, PolicyConfig
from slicer.actors.protocol import AdmissionError, Request, RequestRecord, to_json
from slicer.actors.server import Server, ServerConfig


def get(refs, timeout_s: float, what: str = "a call"):
    """``ray.get`` with a timeout; unwraps an actor's own exception (``AdmissionError``,
    ``MemoryError``...) so callers see the cause, and names ``what`` on a timeout."""
    try:
        return ray.get(refs, timeout=timeout_s)
    except GetTimeoutError as e:
        raise TimeoutError(f"{what} did not answer within {timeout_s:g} s") from e
    except RayTaskError as e:
        cause = getattr(e, "cause", None)
        if isinstance(cause, BaseException) and not isinstance(cause, RayTaskError):
            raise cause from None
        raise


def where() -> dict[str, Any]:
    """Node id, node labels and pid of the calling actor."""
    ctx = ray.get_runtime_context()
    return {"node_id": ctx.get_node_id(), "labels": dict(ctx.get_node_labels() or {}), "pid": os.getpid()}


def _quiet() -> None:
    """One torch thread per actor (several actors share 2 cores; more threads only
    contend) and no transformers progress bars in worker logs."""
    import sys

    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(1)
    if "transformers" in sys.modules:
        from transformers.utils import logging as tlog

        tlog.disable_progress_bar()
        tlog.set_verbosity_error()


def _init_tracing(service: str, enabled: bool, attributes: dict) -> None:
    try:
        from slicer.actors import telemetry

        telemetry.init_tracing(service, enabled=enabled, attributes=attributes)
    except Exception:
        pass  # tracing is an add-on: a run never fails for it


class RayServerClient:
    """The edge's view of the server actor (``slicer.actors.edge.ServerClient``);
    ``credential``: the device's, issued by the driver at placement. Steps go over the
    server's step channel where it offers one (``slicer.actors.channel``), else as Ray
    calls; opens and closes are Ray calls."""

    def __init__(self, handle, timeout_s: float, credential: str | None = None):
        from slicer.actors.channel import ChannelSteps

        self.h, self.timeout_s, self.credential = handle, timeout_s, credential
        self.steps = ChannelSteps(lambda: get(self.h.channel.remote(), self.timeout_s, "server.channel"),
                                  self._ray_step, timeout_s=timeout_s)

    def open_session(self, device_id, request_id, split, max_tokens, trace_ctx=None, supersedes=None):
        return get(self.h.open_session.remote(device_id, request_id, split, max_tokens, trace_ctx or {},
                                              credential=self.credential, supersedes=supersedes),
                   self.timeout_s, "server.open_session")

    def step(self, session_id, payload, position, trace_ctx=None):
        return self.steps.step(session_id, payload, position, trace_ctx or {})

    @property
    def transport(self) -> tuple[str | None, str | None]:
        """How the last step went (``direct``/``ray``) and why not direct."""
        return self.steps.transport, self.steps.fallback_reason

    def _ray_step(self, session_id, payload, position, trace_ctx):
        return get(self.h.step.remote(session_id, payload, position, trace_ctx), self.timeout_s,
                   f"server.step of {session_id}")

    def close_session(self, session_id, trace_ctx=None):
        return get(self.h.close_session.remote(session_id, trace_ctx or {}), self.timeout_s, "server.close_session")


class RayPolicyClient:
    """The edge's view of the policy actor (``slicer.actors.edge.PolicyClient``)."""

    def __init__(self, handle, timeout_s: float):
        self.h, self.timeout_s = handle, timeout_s

    def register(self, device_id, info, trace_ctx=None):
        return get(self.h.register.remote(device_id, info, trace_ctx or {}), self.timeout_s, "policy.register")

    def report(self, device_id, report, trace_ctx=None):
        return get(self.h.report.remote(device_id, report, trace_ctx or {}), self.timeout_s, "policy.report")


class EdgeShell:
    """One edge device as an actor."""

    def __init__(self, cfg: EdgeConfig, model_ref: str, server, policy, timeout_s: float = 60.0, trace: bool = False,
                 credential: str | None = None):
        """``credential``: the device's identity credential (the driver's, at placement;
        Ray restarts the actor with the same one)."""
        import transformers  # noqa: F401  (so _quiet silences its progress bars)

        _quiet()
        self.info = where()
        _init_tracing(f"slicer-edge-{cfg.device_id}", trace,
                      {"slicer.device": cfg.device_id, "slicer.device_class": cfg.device_class})
        from slicer.actors.recovery import RecoveringServerClient

        # A restarted server has no sessions: the client rebuilds them by replay (actors.recovery).
        self.server_client = RecoveringServerClient(RayServerClient(server, timeout_s, credential),
                                                    recovery_timeout_s=max(180.0, 3 * timeout_s))
        self.edge = EdgeDevice(replace(cfg, node=self.info["node_id"]), model_ref,
                               self.server_client, RayPolicyClient(policy, timeout_s))

    def where(self, trace_ctx: dict | None = None) -> dict:
        return {**self.info, "device_id": self.edge.cfg.device_id, "plan": to_json(self.edge.plan)}

    def generate(self, request: Request, trace_ctx: dict | None = None) -> RequestRecord:
        rec = self.edge.generate(request, trace_ctx or {})
        rec.server_recoveries = self.server_client.drain_events()  # sessions rebuilt by replay
        return rec

    def drain_traces(self, trace_ctx: dict | None = None) -> list[dict]:
        from slicer.actors import telemetry

        return telemetry.drain()


class ServerShell:
    """The shared server as an async actor: ``step`` coroutines queue into the
    server's batching loop while one thread computes batches."""

    def __init__(self, model_ref: str, cfg: ServerConfig, trace: bool = False, identities: dict | None = None,
                 device: str = "cpu", dtype: str | None = None, metrics_tags: dict | None = None):
        """``identities``: device id -> credential (the driver's, at placement; Ray
        restarts the actor with the same ones, so a restarted server knows them).
        ``device``/``dtype``: the workload's ``server.device``/``server.dtype``
        (``slicer.actors.models.devices``), resolved on this node. ``metrics_tags``:
        ``ServerMetrics`` keywords (``run``, ``device_classes``)."""
        import transformers  # noqa: F401

        _quiet()
        from slicer.actors.loadmeter import ServerMetrics
        from slicer.actors.models import load_model

        self.info = where()
        _init_tracing("slicer-server", trace, {"slicer.role": "server"})
        # Segment-only weights: units [split, n) load at the first session of each split.
        from slicer.actors.models.devices import resolve_device, resolve_dtype

        dev = resolve_device(device, "server.device")
        self.info["device"] = dev
        model = load_model(model_ref, units=(0, 0), device=dev, dtype=resolve_dtype(dtype, dev))
        self.metrics = ServerMetrics(**(metrics_tags or {}))
        self.server = Server(model, cfg, metrics=self.metrics, identities=identities)
        self._channel = None  # the step channel's start (a task), at the first edge's ask

    async def channel(self, trace_ctx: dict | None = None) -> dict | None:
        """The step channel's ``{host, port, key, max_payload_bytes}`` (started at the
        first call, on this node's address), ``{error}`` when it could not listen, or
        None with ``server.transport: ray``."""
        if self.server.cfg.transport != "direct":
            return None
        if self._channel is None:
            import asyncio

            from ray.util import get_node_ip_address

            from slicer.actors.channel import ChannelServer

            chan = ChannelServer(self.step, max_payload_bytes=self.server.cfg.max_payload_bytes)
            self._channel = (chan, asyncio.ensure_future(chan.start(get_node_ip_address())))
        entry = self._channel
        try:
            return dict(await entry[1])
        except OSError as e:  # no port to listen on: the edges send over Ray (the next ask retries)
            if self._channel is entry:
                self._channel = None
            return {"error": f"{type(e).__name__}: {e}"}

    async def where(self, trace_ctx: dict | None = None) -> dict:
        return dict(self.info)

    async def open_session(self, device_id, request_id, split, max_tokens, trace_ctx=None, credential=None,
                           supersedes=None):
        try:
            return self.server.open_session(device_id, request_id, split, max_tokens, trace_ctx or {},
                                            credential=credential, supersedes=supersedes)
        except AdmissionError:
            self.metrics.on_reject("open", device_id if isinstance(device_id, str) else None)
            raise

    async def step(self, session_id, payload, position, trace_ctx=None):
        try:
            return await self.server.step(session_id, payload, position, trace_ctx or {})
        except AdmissionError:
            self.metrics.on_reject("step")
            raise

    async def close_session(self, session_id, trace_ctx=None):
        return self.server.close_session(session_id, trace_ctx or {})

    async def stats(self, trace_ctx: dict | None = None) -> dict:
        out = self.server.stats()
        out["channel"] = self._channel[0].stats() if self._channel is not None else None
        return out

    async def load_sample(self, trace_ctx: dict | None = None) -> dict:
        return self.server.load_sample()

    async def load_timeline(self, trace_ctx: dict | None = None) -> list[dict]:
        """One load row per batch since the last call (``LoadMeter.timeline``)."""
        return self.server.meter.timeline()

    async def drain_traces(self, trace_ctx: dict | None = None) -> list[dict]:
        from slicer.actors import telemetry

        return telemetry.drain()


class PolicyShell:
    """The central policy as an actor (calls are serialised: one at a time)."""

    def __init__(self, cfg: PolicyConfig, profile, trace: bool = False):
        """``profile``: the model's ``ModelProfile`` (plain data, built by the caller, so
        this process never imports transformers)."""
        _quiet()
        self.info = where()
        _init_tracing("slicer-policy", trace, {"slicer.role": "policy"})
        self.policy = Policy(cfg, profile)

    def where(self, trace_ctx: dict | None = None) -> dict:
        return dict(self.info)

    def register(self, device_id, info, trace_ctx=None):
        return self.policy.register(device_id, info, trace_ctx or {})

    def report(self, device_id, report, trace_ctx=None):
        return self.policy.report(device_id, report, trace_ctx or {})

    def plan_for(self, device_id, trace_ctx=None):
        return self.policy.plan_for(device_id, trace_ctx or {})

    def decisions(self, trace_ctx=None):
        return self.policy.decisions()

    def drain_traces(self, trace_ctx: dict | None = None) -> list[dict]:
        from slicer.actors import telemetry

        return telemetry.drain()


# Logical CPUs: 0 for every actor. The embedded cluster gives each node one CPU and a
# run puts 8+ edge actors on one node; what is counted is slots (custom resources).
def make_server(model_ref: str, cfg: ServerConfig, *, label_selector: dict, resources: dict,
                trace: bool = False, name: str | None = None, max_restarts: int = 0, identities: dict | None = None,
                device: str = "cpu", dtype: str | None = None, metrics_tags: dict | None = None):
    """``device``: ``cpu`` or ``cuda`` (resolved by the caller against the cluster's
    nodes): a CUDA server is placed with ``num_gpus=1``. ``metrics_tags``: see ServerShell."""
    return ray.remote(ServerShell).options(
        num_cpus=0, num_gpus=1 if device == "cuda" else 0, label_selector=label_selector, resources=resources,
        name=name, max_restarts=max_restarts, max_concurrency=1000).remote(model_ref, cfg, trace, identities,
                                                                           device, dtype, metrics_tags)


def make_policy(cfg: PolicyConfig, profile, *, label_selector: dict, resources: dict | None = None,
                trace: bool = False, name: str | None = None):
    return ray.remote(PolicyShell).options(
        num_cpus=0, label_selector=label_selector, resources=resources or {}, name=name).remote(cfg, profile, trace)


def make_edge(cfg: EdgeConfig, model_ref: str, server, policy, *, label_selector: dict, resources: dict,
              timeout_s: float = 60.0, trace: bool = False, max_restarts: int = 0, credential: str | None = None):
    return ray.remote(EdgeShell).options(  # a CUDA edge gets a GPU
        num_cpus=0, num_gpus=1 if cfg.device == "cuda" else 0,
        label_selector=label_selector, resources=resources, max_restarts=max_restarts,
        name=None).remote(cfg, model_ref, server, policy, timeout_s, trace, credential)


def drain_traces(handles: Iterable, timeout_s: float = 30.0) -> list[dict]:
    """Finished spans of every actor (and nothing when tracing is off)."""
    out: list[dict] = []
    for rows in get([h.drain_traces.remote({}) for h in handles], timeout_s, "drain traces"):
        out.extend(rows or [])
    return out


def kill(handle) -> None:
    try:
        ray.kill(handle, no_restart=True)
    except (RayActorError, ValueError):
        pass
