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
from typing import Any, Callable, TextIO

from slicer.orchestrator import results as R
from slicer.orchestrator.workload import Workload, WorkloadError, load_prompts
from slicer.orchestrator.yamlload import short


@dataclass
class RunOutput:
    """What a run returns besides its folder."""

    run_dir: Path | None
    summary: dict
    records: list[dict]
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


def make_requests(wl: Workload, model_ref: str | None = None, vocab_size: int | None = None) -> dict[str, list[dict]]:
    """Per device id, its requests: ``{"request_id", "index", "prompt_ids", "max_new_tokens"}``."""
    prompts = load_prompts(wl)
    tok = None
    ids_list: list[list[int]] = []
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
        ids_list.append(ids)
    out: dict[str, list[dict]] = {}
    for dev_id, g in wl.all_devices():
        n = g.requests or wl.requests
        out[dev_id] = [{"request_id": f"{dev_id}/r{i}", "index": i, "prompt_ids": ids_list[i % len(ids_list)],
                        "max_new_tokens": wl.max_new_tokens, "prompt_index": i % len(ids_list)} for i in range(n)]
    return out


def add_text(records: list[dict], model_ref: str) -> None:
    """Decode each record's generated tokens (``text``) when the model has a tokenizer."""
    try:
        tok = tokenizer_for(model_ref)
    except Exception:  # a broken tokenizer folder must not lose the run's results
        tok = None
    if tok is None:
        return
    for r in records:
        if r.get("tokens"):
            r["text"] = tok.decode(r["tokens"])


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


def edge_config(wl: Workload, dev_id: str, g, device: str = "cpu", link_trace: dict | None = None) -> dict:
    """``slicer.actors.edge.EdgeConfig`` fields (plain data) of one device; ``device``:
    the group's resolved device (``resolve_devices``); ``link_trace``: the group's
    ``_link_trace``, read once per group by the caller (read here when not given)."""
    return {
        "device_id": dev_id, "device_class": g.device_class, "link": g.link.as_dict(),
        "budgets": dataclasses.asdict(g.budgets), "emulation": dataclasses.asdict(g.emulation),
        "link_schedule": [dataclasses.asdict(c) for c in g.link_schedule],
        "codec": wl.codec.spec() if wl.codec is not None else None, "mode": wl.mode,
        "precision": g.dtype or (None if wl.precision == "auto" else wl.precision), "seed": wl.seed,
        "device": device,
        "link_trace": link_trace if link_trace is not None else _link_trace(wl, g.link_trace),
        "adapt": wl.policy.adapt,
    }


def _link_trace(wl: Workload, trace) -> dict | None:
    """A group's rate trace as ``EdgeConfig.link_trace`` (a file is read here, once)."""
    if trace is None:
        return None
    from slicer.policies.link import RateTrace, load_rate_trace

    if isinstance(trace, str):
        path = wl.resolve_path(trace)
        if path is None or not path.is_file():
            raise FileNotFoundError(f"link_trace file {trace!r} not found (relative to {wl.base_dir})")
        t = load_rate_trace(path)
    else:
        t = RateTrace.from_rows(list(trace))
    return {"times_s": list(t.times_s), "rates_mbps": list(t.rates_mbps)}


def longest_prompt(requests: dict[str, list[dict]]) -> int:
    """Tokens of the run's longest prompt (1 with none): what plans and KV room are sized for."""
    return max((len(r["prompt_ids"]) for rs in requests.values() for r in rs), default=1)


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


def failed_record(request: dict, dev_id: str, index: int, device_class: str | None, error: str,
                  node: str | None = None) -> dict:
    """The record of a request that produced nothing (its actor died for good, or the run
    stalled): the same fields a finished record's summary reads, ``ok`` False, the cause."""
    rec = {"request_id": request["request_id"], "device": dev_id, "index": index, "ok": False,
           "device_class": device_class, "error": error, "latency_s": 0.0, "new_tokens": 0, "tokens": []}
    if node is not None:
        rec["node"] = node
    return rec


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


def _check_model_fit(wl: Workload, profile, model_ref: str, requests: dict[str, list[dict]]) -> None:
    """Fields that need the model (split range, context, KV room): ``slicer.orchestrator.validation``."""
    from slicer.actors.server import ServerConfig
    from slicer.orchestrator.validation import check_against_model, model_max_positions

    longest = longest_prompt(requests)
    check_against_model(wl, profile, longest, max_positions=model_max_positions(model_ref),
                        max_tokens_per_session=ServerConfig().max_tokens_per_session)


# ----------------------------------------------------------------------------- in-process


def run_inprocess(wl: Workload, *, model: Any = None, planner: Callable | None = None,
                  progress: TextIO | None = None) -> RunOutput:
    """Run a workload with the plain classes in this process (no Ray, one request at a
    time). ``model``: a loaded ``SplitModel`` to use; ``planner``: a replacement for
    ``slicer.policies.plan`` (tests)."""
    from slicer.actors.edge import EdgeConfig, EdgeDevice, InProcessPolicy, InProcessServer
    from slicer.actors.models import load_model
    from slicer.actors.policy_actor import Policy
    from slicer.actors.server import Server

    if planner is None:
        check_device_classes(wl)
    t0 = time.perf_counter()
    from slicer.actors.models.devices import resolve_dtype

    model_ref = wl.model_ref()
    import torch

    devices = resolve_devices(wl, lambda _cls: torch.cuda.is_available())
    if model is None:
        model = load_model(model_ref, device=devices["server"], dtype=resolve_dtype(wl.server.dtype, devices["server"]))
    requests = make_requests(wl, model_ref, int(getattr(model.config, "vocab_size", 0) or 0))
    _check_model_fit(wl, model.profile, model_ref, requests)
    identities = make_identities(wl)
    server = Server(model, server_config(wl, model.profile, requests), identities=identities)
    policy = Policy(policy_config(wl, requests), model.profile, planner=planner)
    edges = {}
    group_dev = {id(g): d for g, d in zip(wl.devices, devices["groups"])}
    group_trace = {id(g): _link_trace(wl, g.link_trace) for g in wl.devices}  # each trace file read once
    for dev_id, g in wl.all_devices():
        cfg = edge_config(wl, dev_id, g, group_dev[id(g)], group_trace[id(g)])
        edges[dev_id] = EdgeDevice(EdgeConfig(**cfg, node="local"), model_ref,
                                   InProcessServer(server, identities[dev_id]), InProcessPolicy(policy), model=model)
    records: list[dict] = []
    total = sum(len(v) for v in requests.values())
    longest = max(len(v) for v in requests.values())
    for i in range(longest):  # round-robin over devices, like concurrent devices would interleave
        for dev_id, reqs in requests.items():
            if i < len(reqs):
                rec = edges[dev_id].generate(reqs[i], {})
                records.append(rec)
                if progress is not None:
                    R.progress_line(rec, len(records), total, progress)
    wall = time.perf_counter() - t0
    add_text(records, model_ref)
    devices = {d: {"device_class": g.device_class, "node": "local", "emulated": g.emulation.active}
               for d, g in wl.all_devices()}
    decisions = policy.decisions()
    summary = R.build_summary(wl.to_dict(), records, server.stats(), decisions, devices, wall, {"backend": "in-process"})
    return RunOutput(None, summary, records, decisions, [server.load_sample()])


# ----------------------------------------------------------------------------- on Ray


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
    prepared = _prepare(wl)
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
        return _drive(wl, prepared, out=out, trace=trace, progress=progress, load_interval_s=load_interval_s,
                      write=write, t_setup=t_setup, cluster_info={"address": address or "embedded"})
    finally:
        if cluster is not None:
            cluster.__exit__(None, None, None)
        if conn is not None:
            conn.close()


def _prepare(wl: Workload) -> tuple[str, Any, dict[str, list[dict]]]:
    """``(model_ref, profile, requests)``, every model-dependent field checked; no Ray."""
    from slicer.actors.models import profile_from_config

    model_ref = wl.model_ref()
    try:
        profile = profile_from_config(model_ref)
    except (OSError, ValueError) as e:  # transformers' "Repo id must be..." / "not a folder" texts
        raise WorkloadError(f"workload field model={wl.model[:120]!r}: cannot read its config ({type(e).__name__}: "
                            f"{str(e)[:300]})") from None
    requests = make_requests(wl, model_ref, int(profile.vocab_size or 0))
    _check_model_fit(wl, profile, model_ref, requests)
    return model_ref, profile, requests


def _drive(wl: Workload, prepared, *, out, trace, progress, load_interval_s, write, t_setup,
           cluster_info) -> RunOutput:
    from slicer.actors import ray_actors as RA

    model_ref, profile, requests = prepared
    where_to = place(wl)
    handles: list = []
    try:
        return _drive_placed(wl, where_to, handles, model_ref, profile, requests, out=out, trace=trace, progress=progress,
                             load_interval_s=load_interval_s, write=write, t_setup=t_setup, cluster_info=cluster_info)
    finally:
        for h in handles:  # on a shared cluster nothing of this run stays behind
            RA.kill(h)


def _drive_placed(wl, where_to, handles, model_ref, profile, requests, *, out, trace, progress, load_interval_s, write,
                  t_setup, cluster_info) -> RunOutput:
    import ray

    from slicer.actors import ray_actors as RA

    timeout_s = wl.server.step_timeout_s
    devices = resolve_devices(wl, _cluster_gpus())  # before any actor starts: `cuda` without a GPU fails here
    group_trace = {id(g): _link_trace(wl, g.link_trace) for g in wl.devices}  # each trace file read once, here too
    policy = RA.make_policy(policy_config(wl, requests), profile, trace=trace, **where_to["policy"])
    from slicer.orchestrator import faults

    # Restarts: the server's sessions are rebuilt by the edges' replay (actors.recovery),
    # an edge's request is resubmitted by the driver (orchestrator.faults.Resubmitter).
    identities = make_identities(wl)
    server = RA.make_server(model_ref, server_config(wl, profile, requests), trace=trace, max_restarts=faults.SERVER_MAX_RESTARTS,
                            identities=identities, device=devices["server"], dtype=wl.server.dtype,
                            metrics_tags={"run": f"{wl.name}-{time.strftime('%Y%m%d-%H%M%S')}",
                                          "device_classes": {d: g.device_class for d, g in wl.all_devices()}},
                            **where_to["server"])
    handles += [policy, server]
    edges = {}
    group_dev = {id(g): d for g, d in zip(wl.devices, devices["groups"])}
    for dev_id, g in wl.all_devices():
        edges[dev_id] = RA.make_edge(edge_config(wl, dev_id, g, group_dev[id(g)], group_trace[id(g)]), model_ref,
                                     server, policy,
                                     timeout_s=timeout_s, trace=trace, max_restarts=faults.EDGE_MAX_RESTARTS,
                                     credential=identities[dev_id], **where_to["edges"][g.device_class])
        handles.append(edges[dev_id])
    # Wait for every actor to be up (model loaded, plan received) before timing requests.
    # Each actor is a process importing torch + transformers and loading the model:
    # ~4.6 CPU-s each (measured: `load_model` in a fresh python, 2-core machine), so
    # 10 actors need ~25 s on 2 idle cores and minutes on a loaded one: the bound is
    # generous, but there is one.
    refs = [server.where.remote()] + [e.where.remote() for e in edges.values()]
    startup_s = max(300.0, 30.0 * len(edges))
    if progress is not None:
        R.wait_progress(refs, progress, "actors ready (each loads the model)", timeout_s=startup_s)
    where = RA.get(refs, timeout_s=startup_s, what="actors starting (model load, first plan)")
    server_where, edge_where = where[0], dict(zip(edges, where[1:]))
    resub = faults.Resubmitter({d: g.device_class for d, g in wl.all_devices()},
                               restart_timeout_s=max(180.0, 3 * timeout_s))
    faults.notify_placed({"server": server, "policy": policy, "edges": dict(edges), "where": dict(edge_where)})
    if progress is not None:
        progress.write(f"slicer: {len(edges)} devices on {len(set(w['node_id'] for w in edge_where.values()))} edge "
                       f"node(s), server on {server_where['node_id'][:8]} (setup {time.perf_counter() - t_setup:.1f} s)\n")
    # starts the timeline at t=0 (the per-batch rows are measured from it: loadmeter.rebase)
    t0_server = RA.get(server.load_sample.remote(), timeout_s=30, what="server load sample")["t_s"]
    total = sum(len(v) for v in requests.values())
    next_i = {d: 0 for d in requests}
    inflight: dict[Any, str] = {}
    records: list[dict] = []
    load_rows: list[dict] = []

    def submit(dev_id: str) -> None:
        i = next_i[dev_id]
        if i < len(requests[dev_id]):
            next_i[dev_id] += 1
            inflight[edges[dev_id].generate.remote(requests[dev_id][i], {})] = dev_id

    t0 = time.perf_counter()
    for d in requests:
        submit(d)
    # Per request: prompt + tokens, each step bounded by the step timeout.
    request_timeout_s = timeout_s * (wl.max_new_tokens + 2)
    last_progress = time.perf_counter()
    next_sample = time.perf_counter() + load_interval_s
    stall: str | None = None
    while inflight:
        ready, _ = ray.wait(list(inflight), num_returns=1, timeout=min(load_interval_s, 1.0))
        now = time.perf_counter()
        if now >= next_sample:
            row = faults.sample_or_none(server)  # None while the server restarts
            if row is not None:
                load_rows.append(row)
            next_sample = now + load_interval_s
        if not ready:
            if now - last_progress > request_timeout_s:
                # Keep what finished (raising here lost every record of the run).
                never = sum(len(requests[d]) - next_i[d] for d in requests)
                stall = (f"StallError: no request finished for {request_timeout_s:.0f} s (step timeout "
                         f"{timeout_s:g} s x {wl.max_new_tokens + 2} steps); in flight: "
                         f"{sorted(set(inflight.values()))}; {never} request(s) never started")
                break
            continue
        last_progress = now
        for ref in ready:
            dev_id = inflight.pop(ref)
            try:
                rec = RA.get(ref, timeout_s=30, what=f"request of {dev_id}")
            except Exception as e:  # the actor died: resubmit to its restart, or record the cause
                i = next_i[dev_id] - 1
                err = resub.on_error(dev_id, requests[dev_id][i], e, edges[dev_id])
                if err is None:
                    edge_where[dev_id] = resub.where.get(dev_id, edge_where[dev_id])
                    inflight[edges[dev_id].generate.remote(requests[dev_id][i], {})] = dev_id
                    continue
                rec = failed_record(requests[dev_id][i], dev_id, i, resub.device_class.get(dev_id), err)
            resub.annotate(rec)
            rec["node"] = rec.get("node") or edge_where[dev_id]["node_id"]
            records.append(rec)
            if progress is not None:
                R.progress_line(rec, len(records), total, progress)
            submit(dev_id)
    if stall is not None:
        for dev_id in inflight.values():
            i = next_i[dev_id] - 1
            rec = failed_record(requests[dev_id][i], dev_id, i, resub.device_class.get(dev_id), stall,
                                node=edge_where[dev_id]["node_id"])
            records.append(resub.annotate(rec))
            if progress is not None:
                R.progress_line(rec, len(records), total, progress)
    wall = time.perf_counter() - t0
    add_text(records, model_ref)

    def ask(ref, what: str, default):
        # After a stall the hung actor may be the one asked: its answer is optional then
        # (5 s each), so the finished records still come back.
        try:
            return RA.get(ref, timeout_s=5 if stall else 30, what=what)
        except Exception:  # noqa: BLE001
            if stall is None:
                raise
            return default

    sample = ask(server.load_sample.remote(), "server load sample", None)
    if sample is not None:
        load_rows.append(sample)
    # One row per server batch (the polled rows above are the fallback: a restarted server
    # has lost its batches; a short run polls only a couple of times).
    from slicer.actors.loadmeter import rebase

    per_batch = ask(server.load_timeline.remote(), "server load timeline", None)
    same_server = ask(server.where.remote(), "server where", {}).get("pid") == server_where.get("pid")
    if per_batch and same_server:
        load_rows = rebase(per_batch, t0_server)
    stats = ask(server.stats.remote(), "server stats", {})
    stats["node"] = server_where["node_id"]
    decisions = ask(policy.decisions.remote(), "policy decisions", [])
    devices = {d: {"device_class": g.device_class, "node": edge_where[d]["node_id"],
                   "node_labels": edge_where[d].get("labels", {}), "emulated": g.emulation.active}
               for d, g in wl.all_devices()}
    cluster_info = {**cluster_info, "server_node": server_where, "edge_nodes": edge_where}
    summary = R.build_summary(wl.to_dict(), records, stats, decisions, devices, wall, cluster_info)
    summary["error"] = stall
    run_dir = None
    if write:
        run_dir = R.new_run_dir(wl.name, out)
        R.write_run(run_dir, wl.to_dict(), records, decisions, load_rows, summary)
        if trace:
            spans = None
            try:
                spans = RA.drain_traces([policy, server, *edges.values()], timeout_s=5 if stall else 30)
            except Exception:  # noqa: BLE001 (after a stall a hung actor has no spans to give)
                if stall is None:
                    raise
            if spans:
                R.write_jsonl(run_dir / "traces.jsonl", spans)
    return RunOutput(run_dir, summary, records, decisions, load_rows, error=stall)


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
