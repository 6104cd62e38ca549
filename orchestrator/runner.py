"""The runner: places the actors of a workload and drives its requests.

``run_workload(wl, address=None, out=None)`` is what ``slicer run`` does:

1. tokenize the prompts and assign them to requests (device d's i-th request always
   gets the same prompt, so two runs of one workload under two policies compare the
   same requests);
2. start the embedded local cluster (``slicer.orchestrator.cluster.LocalCluster``: a server
   node and one node per edge class, with labels) or connect to ``address``;
3. check placement (every class has a node) and create the policy, the server and one
   edge actor per device (``slicer.actors.ray_actors``);
4. keep one request in flight per device, print a line per finished request, sample the
   server's load every ``load_interval_s``;
5. collect records, decisions and the load timeline, write the run folder, stop the
   cluster.

A stall (no request finished for the step timeout × (max_new_tokens + 2)) ends the
requests but not the run: the finished records are kept, each request still in flight gets
a failed record naming the stall, and ``RunOutput.error`` / ``summary["error"]`` say what
stalled (the CLI then exits 1, as for any failed request).

``run_inprocess(wl)`` runs the same plain classes in this process, no Ray (unit tests,
debugging).
"""
from __future__ import annotations

import dataclasses
import secrets
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Protocol, TextIO

from slicer.actors.protocol import Mode, Request, RequestRecord
from slicer.orchestrator import results as R
from slicer.orchestrator.workload import Workload, WorkloadError, load_prompts
from slicer.orchestrator.yamlload import short
from slicer.policies.link import RateTrace

if TYPE_CHECKING:  # the edge's module imports torch
    from slicer.actors.edge import EdgeConfig


@dataclass
class RunOutput:
    """What a run returns besides its folder."""

    run_dir: Path | None
    summary: dict
    records: list[RequestRecord]
    decisions: list[dict]
    load: list[dict] = field(default_factory=list)
    error: str | None = None
    """Why the run ended early (a stall), or None; also ``summary["error"]``."""


# ----------------------------------------------------------------------------- inputs


def tokenizer_for(model_ref: str):
    """The model folder's tokenizer, or None when it has none."""
    p = Path(model_ref)
    if not p.is_dir() or not any((p / f).exists() for f in ("tokenizer.json", "tokenizer_config.json", "tokenizer.model")):
        return None
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(p))


def make_requests(wl: Workload, model_ref: str | None = None, vocab_size: int | None = None) -> dict[str, list[Request]]:
    """Per device id, its requests (device d's i-th request always gets prompt i mod P)."""
    prompts = load_prompts(wl)
    tok = None
    ids_list: list[tuple[int, ...]] = []
    for i, rec in enumerate(prompts):
        p = rec["prompt"]
        if isinstance(p, str):
            if tok is None:
                tok = tokenizer_for(model_ref or wl.model_ref())
                if tok is None:
                    raise WorkloadError(f"inputs.prompts[{i}] is text but model {short(wl.model)} has no tokenizer: "
                                        "give prompts as lists of token ids")
            ids = list(tok(p)["input_ids"])
        else:
            ids = [int(t) for t in p]
        if not ids:
            raise WorkloadError(f"inputs.prompts[{i}]={short(p)} tokenizes to nothing")
        if vocab_size and max(ids) >= vocab_size:
            raise WorkloadError(f"inputs.prompts[{i}] holds token id {max(ids)}: allowed ids < vocab size {vocab_size}")
        ids_list.append(tuple(ids))
    out: dict[str, list[Request]] = {}
    for dev_id, g in wl.all_devices():
        n = g.requests or wl.requests
        out[dev_id] = [Request(request_id=f"{dev_id}/r{i}", index=i, prompt_ids=ids_list[i % len(ids_list)],
                               max_new_tokens=wl.max_new_tokens, prompt_index=i % len(ids_list)) for i in range(n)]
    return out


def add_text(records: list[RequestRecord], model_ref: str) -> None:
    """Decode each record's generated tokens (``text``) when the model has a tokenizer."""
    try:
        tok = tokenizer_for(model_ref)
    except Exception:  # a broken tokenizer folder must not lose the run's results
        tok = None
    if tok is None:
        return
    for r in records:
        if r.tokens:
            r.text = tok.decode(r.tokens)


def resolve_devices(wl: Workload, has_gpu: Callable[[str | None], bool]) -> dict:
    """``{"server": "cpu"|"cuda", "groups": [...]}``: each side's ``device`` resolved
    against the nodes it may run on (``has_gpu(None)``: a server node has a GPU;
    ``has_gpu(device_class)``: a node of that class has one). ``cuda`` where there is
    none is a ``WorkloadError`` naming the field, raised before any actor starts."""
    def one(field: str, want: str, gpu: bool) -> str:
        if want == "cuda" and not gpu:
            raise WorkloadError(f"workload field {field}='cuda' is invalid here: no node it may run on has a GPU "
                                f"(torch.cuda.is_available() is False on this machine, or the cluster's nodes report "
                                f"no GPU resource); allowed: auto, cpu")
        return "cuda" if want == "cuda" or (want == "auto" and gpu) else "cpu"

    return {"server": one("server.device", wl.server.device, has_gpu(None)),
            "groups": [one(f"devices[{i}].device", g.device, has_gpu(g.device_class)) for i, g in enumerate(wl.devices)]}


def _cluster_gpus():
    """``has_gpu`` for ``resolve_devices`` from the connected Ray cluster's alive nodes (a
    node without a role label counts as a server node)."""
    from slicer.orchestrator import cluster as C

    nodes = [n for n in C.list_nodes() if float(n.resources.get("GPU", 0)) > 0]

    def has_gpu(device_class: str | None) -> bool:
        return any(n.role != C.EDGE_ROLE if device_class is None else n.device_class == device_class for n in nodes)

    return has_gpu


def edge_config(wl: Workload, dev_id: str, g, device: str = "cpu", link_trace: RateTrace | None = None,
                node: str = "") -> EdgeConfig:
    """One device's ``EdgeConfig``; ``device``: the group's resolved device
    (``resolve_devices``); ``link_trace``: the group's ``_link_trace``, read once per group
    by the caller (read here when not given)."""
    from slicer.actors.edge import EdgeConfig

    return EdgeConfig(
        device_id=dev_id, device_class=g.device_class, link=g.link, budgets=g.budgets, emulation=g.emulation,
        link_schedule=tuple(g.link_schedule), codec=wl.codec, mode=None if wl.mode == "auto" else Mode(wl.mode),
        precision=g.dtype or (None if wl.precision == "auto" else wl.precision), seed=wl.seed, device=device,
        link_trace=link_trace if link_trace is not None else _link_trace(wl, g.link_trace), adapt=wl.policy.adapt,
        node=node)


def edge_configs(wl: Workload, devices: dict, node: str = "") -> dict[str, EdgeConfig]:
    """Every device's ``EdgeConfig``, its group's device resolved (``resolve_devices``) and
    each link-trace file read once per group."""
    group_dev = {id(g): d for g, d in zip(wl.devices, devices["groups"])}
    group_trace = {id(g): _link_trace(wl, g.link_trace) for g in wl.devices}
    return {dev_id: edge_config(wl, dev_id, g, group_dev[id(g)], group_trace[id(g)], node=node)
            for dev_id, g in wl.all_devices()}


def _link_trace(wl: Workload, trace) -> RateTrace | None:
    """A group's rate trace (a file is read here, once)."""
    if trace is None:
        return None
    from slicer.policies.link import load_rate_trace

    if isinstance(trace, str):
        path = wl.resolve_path(trace)
        if path is None or not path.is_file():
            raise FileNotFoundError(f"link_trace file {trace!r} not found (relative to {wl.base_dir})")
        return load_rate_trace(path)
    return RateTrace.from_rows(list(trace))


def longest_prompt(requests: dict[str, list[Request]]) -> int:
    """Tokens of the run's longest prompt (1 with none): what plans and KV room are sized for."""
    return max((len(r.prompt_ids) for rs in requests.values() for r in rs), default=1)


def policy_config(wl: Workload, requests: dict[str, list[Request]]):
    """The workload's ``policy:`` (a ``PolicyConfig``) with the run's figures filled in."""
    return dataclasses.replace(wl.policy, codec=wl.codec.spec() if wl.codec is not None else None,
                               new_tokens=wl.max_new_tokens, prompt_tokens=longest_prompt(requests),
                               front_precision=None if wl.precision == "auto" else wl.precision)


def server_config(wl: Workload, profile: Any = None, requests: dict[str, list[Request]] | None = None):
    """The workload's ``server:`` (a ``ServerConfig``). With the model's ``profile`` and the
    run's ``requests``, one request's worst-case KV is kept free for every device holding
    no session."""
    from slicer.orchestrator.validation import request_kv_bytes

    kept = request_kv_bytes(wl, profile, longest_prompt(requests)) if profile is not None and requests else 0
    return dataclasses.replace(wl.server, kv_kept_per_idle_device=kept)


def make_identities(wl: Workload) -> dict[str, str]:
    """Device id -> credential: the identities the driver assigns at placement. The
    server gets them all, each edge actor only its own; the server then checks every
    session open against them, so quotas and rates key on who a device is, not on the
    id it declares. Fresh per run, never written to the run folder."""
    return {dev_id: secrets.token_urlsafe(32) for dev_id, _ in wl.all_devices()}


def check_device_classes(wl: Workload) -> None:
    """Every device class must be in the device catalog (the policy plans with it)."""
    from slicer.policies.devices import load_device_catalog

    catalog = load_device_catalog()
    for i, g in enumerate(wl.devices):
        if g.device_class not in catalog:
            raise WorkloadError(f"workload field devices[{i}].class={g.device_class!r} is not in the device catalog: "
                                f"allowed {', '.join(sorted(catalog))}")


def _check_model_fit(wl: Workload, profile, model_ref: str, requests: dict[str, list[Request]]) -> None:
    """Fields that need the model (split range, context, KV room): ``slicer.orchestrator.validation``."""
    from slicer.orchestrator.validation import (
        check_against_model,
        model_config,
        model_max_positions,
    )

    cfg = model_config(model_ref)
    check_against_model(wl, profile, longest_prompt(requests), hf_config=cfg,
                        max_positions=model_max_positions(cfg) if cfg is not None else None)


# ----------------------------------------------------------------------------- one driver


@dataclass(frozen=True)
class Prepared:
    """What a run needs from its model before any actor starts, every model-dependent
    field checked."""

    model_ref: str
    profile: Any
    requests: dict[str, list[Request]]


def prepare(wl: Workload, profile: Any = None) -> Prepared:
    """The model's profile (from its config unless given), the requests, the fit checks."""
    from slicer.actors.models import profile_from_config

    model_ref = wl.model_ref()
    if profile is None:
        try:
            profile = profile_from_config(model_ref)
        except (OSError, ValueError) as e:  # transformers' "Repo id must be..." / "not a folder" texts
            raise WorkloadError(f"workload field model={wl.model[:120]!r}: cannot read its config "
                                f"({type(e).__name__}: {str(e)[:300]})") from None
    requests = make_requests(wl, model_ref, int(profile.vocab_size or 0))
    _check_model_fit(wl, profile, model_ref, requests)
    return Prepared(model_ref, profile, requests)


@dataclass
class Collected:
    """What a backend hands back at the end of a run besides the records."""

    stats: dict
    decisions: list[dict]
    load: list[dict]
    devices: dict[str, dict]
    cluster_info: dict
    spans: list[dict] | None = None
    load_replaces: bool = True
    """``load`` is the whole timeline (the server's per-batch rows); False: it is a last
    sample to append to the driver's polled rows."""


class Backend(Protocol):
    """Where a workload's actors run (as vLLM's executors: one driver, several backends)."""

    def start(self, wl: Workload, prep: Prepared, *, progress: TextIO | None, trace: bool, t_setup: float) -> None:
        """Create the policy, the server and one edge per device; return when all are up."""
    def submit(self, dev_id: str, request: Request) -> None:
        """Start one request of a device (the driver keeps one in flight per device)."""
    def poll(self, timeout_s: float) -> tuple[list[tuple[str, RequestRecord]], bool]:
        """Requests finished since the last poll (a lost one comes back as a failed record),
        and whether anything else moved (a request resubmitted to a restarted actor): the
        driver's stall clock restarts on either."""
    def failed(self, dev_id: str, request: Request, error: str) -> RequestRecord:
        """The record of a request that never finished."""
    def sample_load(self) -> dict | None:
        """One server load row (None while it is down)."""
    def collect(self, stalled: bool, trace: bool) -> Collected:
        """Stats, decisions, load timeline, device placement and spans."""
    def close(self) -> None:
        """Stop what ``start`` created."""


def drive(wl: Workload, backend: Backend, *, prepared: Prepared | None = None, out: str | Path | None = None,
          trace: bool = False, progress: TextIO | None = None, load_interval_s: float = 0.5, write: bool = False,
          t_setup: float | None = None) -> RunOutput:
    """Run a workload's requests on ``backend``: one request in flight per device, a
    progress line per finished request, the server's load sampled every
    ``load_interval_s``; records, summary and failures built here, once, for every backend."""
    t_setup = time.perf_counter() if t_setup is None else t_setup
    prep = prepared or prepare(wl)
    requests = prep.requests
    try:
        backend.start(wl, prep, progress=progress, trace=trace, t_setup=t_setup)
        total = sum(len(v) for v in requests.values())
        next_i = {d: 0 for d in requests}
        inflight: set[str] = set()
        records: list[RequestRecord] = []
        load_rows: list[dict] = []

        def submit(dev_id: str) -> None:
            i = next_i[dev_id]
            if i < len(requests[dev_id]):
                next_i[dev_id] += 1
                inflight.add(dev_id)
                backend.submit(dev_id, requests[dev_id][i])

        def done(rec: RequestRecord) -> None:
            records.append(rec)
            if progress is not None:
                R.progress_line(rec, len(records), total, progress)

        t0 = time.perf_counter()
        for d in requests:
            submit(d)
        # Per request: prompt + tokens, each step bounded by the step timeout.
        request_timeout_s = wl.server.step_timeout_s * (wl.max_new_tokens + 2)
        last_progress = next_sample = time.perf_counter()
        stall: str | None = None
        while inflight:
            finished, moved = backend.poll(min(load_interval_s, 1.0))
            now = time.perf_counter()
            if now >= next_sample:
                row = backend.sample_load()
                if row is not None:
                    load_rows.append(row)
                next_sample = now + load_interval_s
            if moved:
                last_progress = now
            if not finished:
                if now - last_progress > request_timeout_s:
                    # Keep what finished (raising here would lose every record of the run).
                    never = sum(len(requests[d]) - next_i[d] for d in requests)
                    stall = (f"StallError: no request finished for {request_timeout_s:.0f} s (step timeout "
                             f"{wl.server.step_timeout_s:g} s x {wl.max_new_tokens + 2} steps); in flight: "
                             f"{sorted(inflight)}; {never} request(s) never started")
                    break
                continue
            last_progress = now
            for dev_id, rec in finished:
                inflight.discard(dev_id)
                done(rec)
                submit(dev_id)
        if stall is not None:
            for dev_id in sorted(inflight):
                done(backend.failed(dev_id, requests[dev_id][next_i[dev_id] - 1], stall))
        wall = time.perf_counter() - t0
        add_text(records, prep.model_ref)
        got = backend.collect(stall is not None, trace and write)  # spans only for a run folder
        load_rows = got.load if got.load_replaces else load_rows + got.load
        summary = R.build_summary(wl.to_dict(), records, got.stats, got.decisions, got.devices, wall, got.cluster_info)
        summary["error"] = stall
        run_dir = None
        if write:
            run_dir = R.new_run_dir(wl.name, out)
            R.write_run(run_dir, wl.to_dict(), records, got.decisions, load_rows, summary)
            if got.spans:
                R.write_jsonl(run_dir / "traces.jsonl", got.spans)
        return RunOutput(run_dir, summary, records, got.decisions, load_rows, error=stall)
    finally:
        backend.close()


# ----------------------------------------------------------------------------- in-process


class InProcessBackend:
    """The plain classes in this process, no Ray: requests run one at a time, in the
    order they were submitted (round-robin over devices, as concurrent devices interleave).
    ``model``: a loaded ``SplitModel`` to use; ``planner``: a replacement for
    ``slicer.policies.plan`` (tests)."""

    def __init__(self, model: Any = None, planner: Callable | None = None):
        self.model, self.planner = model, planner
        self.queue: list[tuple[str, Request]] = []

    def start(self, wl: Workload, prep: Prepared, *, progress: TextIO | None, trace: bool, t_setup: float) -> None:
        import torch

        from slicer.actors.edge import EdgeDevice, InProcessPolicy, InProcessServer
        from slicer.actors.models import load_model
        from slicer.actors.models.devices import resolve_dtype
        from slicer.actors.policy_actor import Policy
        from slicer.actors.server import Server

        if self.planner is None:
            check_device_classes(wl)
        devices = resolve_devices(wl, lambda _cls: torch.cuda.is_available())
        if self.model is None:
            self.model = load_model(prep.model_ref, device=devices["server"],
                                    dtype=resolve_dtype(wl.server.dtype, devices["server"]))
        identities = make_identities(wl)
        self.server = Server(self.model, server_config(wl, prep.profile, prep.requests), identities=identities)
        self.policy = Policy(policy_config(wl, prep.requests), prep.profile, planner=self.planner)
        self.edges = {dev_id: EdgeDevice(cfg, prep.model_ref, InProcessServer(self.server, identities[dev_id]),
                                         InProcessPolicy(self.policy), model=self.model)
                      for dev_id, cfg in edge_configs(wl, devices, node="local").items()}
        self.devices = {d: {"device_class": g.device_class, "node": "local", "emulated": g.emulation.active}
                        for d, g in wl.all_devices()}

    def submit(self, dev_id: str, request: Request) -> None:
        self.queue.append((dev_id, request))

    def poll(self, timeout_s: float) -> tuple[list[tuple[str, RequestRecord]], bool]:
        if not self.queue:
            return [], False
        dev_id, request = self.queue.pop(0)
        return [(dev_id, self.edges[dev_id].generate(request, {}))], False

    def failed(self, dev_id: str, request: Request, error: str) -> RequestRecord:
        return RequestRecord.failed(request, dev_id, self.devices[dev_id]["device_class"], error, node="local")

    def sample_load(self) -> dict | None:
        return None  # one sample at the end: nothing runs beside the requests

    def collect(self, stalled: bool, trace: bool) -> Collected:
        return Collected(self.server.stats(), self.policy.decisions(), [self.server.load_sample()], self.devices,
                         {"backend": "in-process"})

    def close(self) -> None:
        pass


def run_inprocess(wl: Workload, *, model: Any = None, planner: Callable | None = None,
                  progress: TextIO | None = None) -> RunOutput:
    """Run a workload with the plain classes in this process (``InProcessBackend``)."""
    prep = prepare(wl, profile=model.profile if model is not None else None)
    return drive(wl, InProcessBackend(model, planner), prepared=prep, progress=progress)


# ----------------------------------------------------------------------------- on Ray


class RayBackend:
    """One actor per device, a server actor and a policy actor on the connected Ray
    cluster. ``where_to``: placement options (``place``; computed at start when None).
    Lost actors: the server's sessions are rebuilt by the edges' replay
    (``actors.recovery``); an edge's request is resubmitted to its restart
    (``orchestrator.faults.Resubmitter``)."""

    def __init__(self, where_to: dict | None = None, cluster_info: dict | None = None):
        self.where_to = where_to
        self.cluster_info = dict(cluster_info or {})
        self.handles: list = []
        self.inflight: dict[Any, tuple[str, Request]] = {}

    def start(self, wl: Workload, prep: Prepared, *, progress: TextIO | None, trace: bool, t_setup: float) -> None:
        from slicer.actors import ray_actors as RA
        from slicer.orchestrator import faults

        self.RA = RA
        where_to = self.where_to or place(wl)
        timeout_s = wl.server.step_timeout_s
        devices = resolve_devices(wl, _cluster_gpus())  # before any actor starts: `cuda` without a GPU fails here
        configs = edge_configs(wl, devices)  # a missing link-trace file fails here too
        self.policy = RA.make_policy(policy_config(wl, prep.requests), prep.profile, trace=trace, **where_to["policy"])
        identities = make_identities(wl)
        self.server = RA.make_server(
            prep.model_ref, server_config(wl, prep.profile, prep.requests), trace=trace,
            max_restarts=faults.SERVER_MAX_RESTARTS, identities=identities, device=devices["server"],
            dtype=wl.server.dtype, metrics_tags={"run": f"{wl.name}-{time.strftime('%Y%m%d-%H%M%S')}",
                                                 "device_classes": {d: g.device_class for d, g in wl.all_devices()}},
            **where_to["server"])
        self.handles += [self.policy, self.server]
        self.edges = {}
        for dev_id, g in wl.all_devices():
            self.edges[dev_id] = RA.make_edge(configs[dev_id],
                                              prep.model_ref, self.server, self.policy, timeout_s=timeout_s, trace=trace,
                                              max_restarts=faults.EDGE_MAX_RESTARTS, credential=identities[dev_id],
                                              **where_to["edges"][g.device_class])
            self.handles.append(self.edges[dev_id])
        # Wait for every actor to be up (model loaded, plan received) before timing requests.
        # Each actor is a process importing torch + transformers and loading the model:
        # ~4.6 CPU-s each (measured: `load_model` in a fresh python, 2-core machine), so
        # 10 actors need ~25 s on 2 idle cores and minutes on a loaded one: the bound is
        # generous, but there is one.
        refs = [self.server.where.remote()] + [e.where.remote() for e in self.edges.values()]
        startup_s = max(300.0, 30.0 * len(self.edges))
        if progress is not None:
            R.wait_progress(refs, progress, "actors ready (each loads the model)", timeout_s=startup_s)
        where = RA.get(refs, timeout_s=startup_s, what="actors starting (model load, first plan)")
        self.server_where, self.edge_where = where[0], dict(zip(self.edges, where[1:]))
        self.device_class = {d: g.device_class for d, g in wl.all_devices()}
        self.emulated = {d: g.emulation.active for d, g in wl.all_devices()}
        self.resub = faults.Resubmitter(self.device_class, restart_timeout_s=max(180.0, 3 * timeout_s))
        faults.notify_placed({"server": self.server, "policy": self.policy, "edges": dict(self.edges),
                              "where": dict(self.edge_where)})
        if progress is not None:
            progress.write(f"slicer: {len(self.edges)} devices on "
                           f"{len(set(w['node_id'] for w in self.edge_where.values()))} edge node(s), server on "
                           f"{self.server_where['node_id'][:8]} (setup {time.perf_counter() - t_setup:.1f} s)\n")
        # starts the timeline at t=0 (the per-batch rows are measured from it: loadmeter.rebase)
        self.t0_server = RA.get(self.server.load_sample.remote(), timeout_s=30, what="server load sample")["t_s"]

    def submit(self, dev_id: str, request: Request) -> None:
        self.inflight[self.edges[dev_id].generate.remote(request, {})] = (dev_id, request)

    def poll(self, timeout_s: float) -> tuple[list[tuple[str, RequestRecord]], bool]:
        import ray

        ready, _ = ray.wait(list(self.inflight), num_returns=1, timeout=timeout_s)
        out, moved = [], False
        for ref in ready:
            dev_id, request = self.inflight.pop(ref)
            try:
                rec = self.RA.get(ref, timeout_s=30, what=f"request of {dev_id}")
            except Exception as e:  # the actor died: resubmit to its restart, or record the cause
                err = self.resub.on_error(dev_id, request, e, self.edges[dev_id])
                if err is None:
                    self.edge_where[dev_id] = self.resub.where.get(dev_id, self.edge_where[dev_id])
                    self.submit(dev_id, request)
                    moved = True  # the resubmitted request gets its whole time again
                    continue
                rec = RequestRecord.failed(request, dev_id, self.device_class.get(dev_id), err)
            self.resub.annotate(rec)
            rec.node = rec.node or self.edge_where[dev_id]["node_id"]
            out.append((dev_id, rec))
        return out, moved

    def failed(self, dev_id: str, request: Request, error: str) -> RequestRecord:
        rec = RequestRecord.failed(request, dev_id, self.device_class.get(dev_id), error,
                                   node=self.edge_where[dev_id]["node_id"])
        return self.resub.annotate(rec)

    def sample_load(self) -> dict | None:
        from slicer.orchestrator import faults

        return faults.sample_or_none(self.server)  # None while the server restarts

    def collect(self, stalled: bool, trace: bool) -> Collected:
        from slicer.actors.loadmeter import rebase

        RA = self.RA

        def ask(ref, what: str, default):
            # After a stall the hung actor may be the one asked: its answer is optional then
            # (5 s each), so the finished records still come back.
            try:
                return RA.get(ref, timeout_s=5 if stalled else 30, what=what)
            except Exception:  # noqa: BLE001
                if not stalled:
                    raise
                return default

        sample = ask(self.server.load_sample.remote(), "server load sample", None)
        # One row per server batch (the driver's polled rows are the fallback: a restarted
        # server has lost its batches; a short run polls only a couple of times).
        per_batch = ask(self.server.load_timeline.remote(), "server load timeline", None)
        same_server = ask(self.server.where.remote(), "server where", {}).get("pid") == self.server_where.get("pid")
        replaces = bool(per_batch and same_server)
        load = rebase(per_batch, self.t0_server) if replaces else ([sample] if sample is not None else [])
        stats = ask(self.server.stats.remote(), "server stats", {})
        stats["node"] = self.server_where["node_id"]
        decisions = ask(self.policy.decisions.remote(), "policy decisions", [])
        devices = {d: {"device_class": self.device_class[d], "node": self.edge_where[d]["node_id"],
                       "node_labels": self.edge_where[d].get("labels", {}), "emulated": self.emulated[d]}
                   for d in self.edges}
        info = {**self.cluster_info, "server_node": self.server_where, "edge_nodes": self.edge_where}
        spans = None
        if trace:
            try:
                spans = RA.drain_traces([self.policy, self.server, *self.edges.values()], timeout_s=5 if stalled else 30)
            except Exception:  # noqa: BLE001 (after a stall a hung actor has no spans to give)
                if not stalled:
                    raise
        return Collected(stats, decisions, load, devices, info, spans, load_replaces=replaces)

    def close(self) -> None:
        for h in self.handles:  # on a shared cluster nothing of this run stays behind
            self.RA.kill(h)


def _start_cluster(wl: Workload):
    """The embedded local cluster: a server node and a node per edge class, with
    enough ``edge_slot`` on each for the workload's devices of that class."""
    from slicer.orchestrator.cluster import LocalCluster

    per_class = max(sum(g.count for g in wl.devices if g.device_class == c) for c in wl.device_classes())
    return LocalCluster(edge_classes=wl.device_classes(), edge_slots=max(16, per_class))


def place(wl: Workload) -> dict[str, Any]:
    """Check that every actor of the workload has a node (``PlacementError`` within
    milliseconds otherwise) and return the Ray options placing each."""
    from slicer.orchestrator import cluster as C

    server = {"label_selector": C.server_selector(), "resources": {C.SERVER_SLOT: 1}}
    C.check_placement(server["label_selector"], resources=server["resources"])
    edges = {}
    for cls in wl.device_classes():
        n = sum(g.count for g in wl.devices if g.device_class == cls)
        opt = {"label_selector": C.edge_selector(cls), "resources": {C.EDGE_SLOT: 1}}
        C.check_placement(opt["label_selector"], resources=opt["resources"], count=n)
        edges[cls] = opt
    # The policy shares the server node (it holds no model, only plans) without a slot.
    return {"server": server, "policy": {"label_selector": C.server_selector()}, "edges": edges}


def run_workload(wl: Workload, *, address: str | None = None, out: str | Path | None = None,
                 trace: bool = True, progress: TextIO | None = sys.stderr, load_interval_s: float = 0.5,
                 write: bool = True) -> RunOutput:
    """Run a workload on Ray (see the module docstring). With ``address`` None it starts
    and finally stops an embedded local cluster, unless this process is already
    connected to one (tests sharing a cluster), which it then uses and leaves running."""
    import ray

    check_device_classes(wl)
    t_setup = time.perf_counter()
    # Everything the workload needs from its model (config, tokenizer, prompts, fit) is
    # checked before any Ray work: a bad model path fails here in about a second, not
    # after a cluster start and an actor's model load.
    prepared = prepare(wl)
    if address is None and not ray.is_initialized():
        # an embedded cluster runs on this machine (its server node gets the GPUs):
        # `cuda` without one fails here, in seconds, before a cluster starts
        import torch

        resolve_devices(wl, lambda cls: cls is None and torch.cuda.is_available())
    cluster = conn = None
    try:
        if address is None and ray.is_initialized():
            pass
        elif address is None:
            cluster = _start_cluster(wl)
            if progress is not None:
                progress.write(f"slicer: starting a local Ray cluster on 127.0.0.1 (server node + "
                               f"{len(cluster.edge_specs)} edge node(s))...\n")
                progress.flush()
            cluster.__enter__()
        else:
            from slicer.orchestrator.cluster import connect

            if progress is not None:
                progress.write(f"slicer: connecting to the Ray cluster at {address}...\n")
                progress.flush()
            conn = connect(address)
        return drive(wl, RayBackend(cluster_info={"address": address or "embedded"}), prepared=prepared, out=out,
                     trace=trace, progress=progress, load_interval_s=load_interval_s, write=write, t_setup=t_setup)
    finally:
        if cluster is not None:
            cluster.__exit__(None, None, None)
        if conn is not None:
            conn.close()


def run_many(workloads: list[Workload], *, address: str | None = None, trace: bool = False,
             progress: TextIO | None = None) -> list[RunOutput]:
    """Run several workloads one after another on ONE cluster (benchmarks comparing
    variants side by side): the embedded one covering every device class, started once,
    or ``address``. Nothing is written; each returns its ``RunOutput``."""
    import ray

    from slicer.orchestrator.cluster import LocalCluster, connect

    classes = sorted({c for wl in workloads for c in wl.device_classes()})
    per_class = max(sum(g.count for g in wl.devices if g.device_class == c) for wl in workloads for c in wl.device_classes())
    cluster = conn = None
    try:
        if address is not None:
            conn = connect(address)
        elif not ray.is_initialized():
            cluster = LocalCluster(edge_classes=classes, edge_slots=max(16, per_class))
            cluster.start()
        outs = []
        for wl in workloads:
            outs.append(run_workload(wl, trace=trace, progress=progress, write=False))
        return outs
    finally:
        if cluster is not None:
            cluster.stop()
        if conn is not None:
            conn.close()


def variant(wl: Workload, **changes: Any) -> Workload:
    """A copy of ``wl`` with top-level fields replaced (``devices``, ``policy``, ``server``...)."""
    return dataclasses.replace(wl, **changes)


def scale_devices(wl: Workload, n: int) -> Workload:
    """``wl`` with ``n`` devices in all, spread over its groups in turn (group order kept)."""
    counts = [0] * len(wl.devices)
    for i in range(n):
        counts[i % len(wl.devices)] += 1
    groups = tuple(dataclasses.replace(g, count=c) for g, c in zip(wl.devices, counts) if c > 0)
    return dataclasses.replace(wl, devices=groups)
