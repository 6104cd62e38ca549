"""`slicer bench serve`: the serving path on the embedded cluster against the same work with
no framework (the segment batched in one process), as ratios measured in one run.

For each model (a compute-bound random-weight Llama, hidden 1024 and 8 blocks, saved as
safetensors; and slicer-tiny with its position limit raised to 1024, weights unchanged):

- ``latency_ratio``: per-token latency of one device on the cluster / the same workload
  run in one process (``--in-process``: the plain classes, no Ray), over its last 4 of 5
  requests; and the same with ``server.transport: ray`` (every step a Ray call instead of
  the step channel);
- ``tokens_s_ratio[N]``: the cluster's generation tokens/s with N devices (split ``ell``)
  / the back segment ``[ell, n)`` batched N in one process (the limit), and
  ``batch_ratio[N]``: the server's mean batch / N;
- ``e2e_ratio``: 8 devices split near the end (``n - 2``), the run's tokens/s / the whole
  model's batched greedy generation of 8 sequences in one process (this run and the
  cloud-only one go twice, alternated; figures are their means and sums);
- ``saving_ratio``: the server-compute saving of that deep split at 8 devices against
  cloud-only on the cluster (CPU seconds of the server's compute thread) / the same
  saving of the same generation in one process (CPU seconds of ``[n-2, n)`` batched 8
  with each session's front run between its steps, against ``[0, n)`` batched 8;
  ``deep_saving_ratio_hot_loop``: against the back segments' hot loops instead);
- ``context_ratio``: one batched server step of 16 sessions at context 1024 / at 64 (in one
  process: the KV cache's cost), and for slicer-tiny the cluster's per-token time of 8
  devices at 384 new tokens / at 32;
- memory: each edge's and the server's measured RSS and held weights, against the
  policy's prediction (the plan's ``predicted_memory_bytes``; the profile's weight bytes
  of ``[ell, n)`` for the server).

Every figure of a row comes from the same run on the same machine; on a shared machine
only the ratios mean anything.
"""
from __future__ import annotations

HELP = "serving path: cluster vs one process (latency, tokens/s, mean batch, memory, context), ratios"

import argparse
import json
import time

#: Requests of the one-device run and its in-process twin (all but the first give latency).
LATENCY_REQUESTS = 5

LLAMA_1024 = dict(model_type="llama", hidden_size=1024, intermediate_size=2816, num_hidden_layers=8,
                  num_attention_heads=16, num_key_value_heads=4, vocab_size=8192, max_position_embeddings=2048,
                  tie_word_embeddings=False)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--models", default="llama1024,tiny", help="llama1024 and/or tiny (default both)")
    p.add_argument("--devices", default="1,4,8,16", help="device counts of the throughput rows (default 1,4,8,16)")
    p.add_argument("--max-devices-llama", type=int, default=16,
                   help="cap on llama1024's device counts (each edge process holds its front; default 16)")
    p.add_argument("--tokens", type=int, default=32, help="new tokens per request (default 32)")
    p.add_argument("--long-tokens", type=int, default=384, help="slicer-tiny's long run (default 384; 0 skips)")
    p.add_argument("--split", type=int, default=2, help="split of the throughput and memory rows (default 2)")
    p.add_argument("--window-ms", type=float, default=2.0, help="server batch_window_ms (default 2)")
    p.add_argument("--address", default=None, help="an existing cluster instead of the embedded one")
    p.add_argument("--json", default=None, help="write the results as JSON here")


# ----------------------------------------------------------------------------- models
def _prepare_models(names: list[str], folder: str) -> dict[str, str]:
    """Model folders: llama1024 saved from a seeded random init; slicer-tiny's weights
    linked beside a config whose position limit is 1024."""
    import os
    import shutil
    from pathlib import Path

    from slicer.actors.models import load_model
    from slicer.orchestrator.workload import REPO_ROOT

    out = {}
    if "llama1024" in names:
        d = Path(folder) / "llama1024"
        load_model(dict(LLAMA_1024), seed=0).hf.save_pretrained(d)
        out["llama1024"] = str(d)
    if "tiny" in names:
        src = REPO_ROOT / "examples" / "models" / "slicer-tiny"
        d = Path(folder) / "slicer-tiny-1024"
        d.mkdir(parents=True)
        cfg = json.loads((src / "config.json").read_text())
        cfg["max_position_embeddings"] = 1024  # RoPE: no learned table, weights unchanged
        (d / "config.json").write_text(json.dumps(cfg))
        for f in src.iterdir():
            if f.name != "config.json" and f.is_file():
                try:
                    os.symlink(f, d / f.name)
                except OSError:
                    shutil.copy(f, d / f.name)
        out["tiny"] = str(d)
    return out


# ----------------------------------------------------------------------------- one process
def _prompts(n: int, vocab: int) -> list[list[int]]:
    """``n`` seeded 8-token prompts (``actors.models.testing.random_prompts``)."""
    from slicer.actors.models.testing import random_prompts

    return [p[0].tolist() for p in random_prompts(vocab, [8] * n)]


def _segment_tokens_s(model, a: int, n_sessions: int, steps: int, context: int = 8, repeats: int = 3) -> float:
    """Decode tokens/s of units ``[a, n)`` batched ``n_sessions`` in this process (the
    server's work with no framework): caches filled to ``context``, then ``steps``
    batched one-token steps with the server's own call (``run_batch``, last position).
    The best of ``repeats`` (a ceiling: on a shared machine the least disturbed run)."""
    return max(_segment_tokens_s_once(model, a, n_sessions, steps, context) for _ in range(repeats))


def _segment_tokens_s_once(model, a: int, n_sessions: int, steps: int, context: int) -> float:
    import torch

    n = model.num_units
    caches = [_filled_cache(model, a, context + steps + 2, context) for _ in range(n_sessions)]
    g = torch.Generator().manual_seed(1)
    H = model.config.hidden_size
    xs = [torch.randint(3, 200, (1, 1), generator=g) if a == 0 else torch.randn(1, 1, H, generator=g) * 0.1
          for _ in range(n_sessions)]
    model.run_batch(a, n, xs, caches, last_only=True)  # warm-up
    t0 = time.perf_counter()
    for _ in range(steps):
        model.run_batch(a, n, xs, caches, last_only=True)
    return n_sessions * steps / (time.perf_counter() - t0)


def _filled_cache(model, a: int, capacity: int, length: int):
    """A cache of ``[a, n)`` holding ``length`` tokens of random keys/values (no prefill
    compute: only the cost of attending over them is measured)."""
    import torch

    ad = model.adapter
    c = model.new_cache(a, model.num_units, capacity)
    for lid in c.layer_ids:
        k = torch.randn(1, ad.num_kv_heads, length, ad.head_dim, dtype=model.dtype) * 0.1
        c.write(lid, k, k.clone())
    c.length = length
    return c


def _step_cost_ratio(model, a: int, n_sessions: int = 16, short: int = 64, long: int = 1024, steps: int = 5):
    """Seconds per batched server step at context ``long`` / at ``short``."""
    t_short = 1.0 / _segment_tokens_s(model, a, n_sessions, steps, short)
    t_long = 1.0 / _segment_tokens_s(model, a, n_sessions, steps, long)
    return t_long / t_short


def _full_generate_tokens_s(model, n_seq: int, new_tokens: int, repeats: int = 2) -> float:
    """The whole model's batched greedy generation of ``n_seq`` prompts in this process
    (best of ``repeats``)."""
    return max(_full_generate_once(model, n_seq, new_tokens) for _ in range(repeats))


def _full_generate_once(model, n_seq: int, new_tokens: int) -> float:
    import torch

    n = model.num_units
    prompts = [torch.tensor([p]) for p in _prompts(n_seq, vocab=int(model.config.vocab_size))]
    t0 = time.perf_counter()
    caches = [model.new_cache(0, n, p.shape[1] + new_tokens + 1) for p in prompts]
    outs = model.run_batch(0, n, prompts, caches, last_only=True)
    for _ in range(new_tokens - 1):
        xs = [o[:, -1:].argmax(-1) for o in outs]  # (1, 1) ids
        outs = model.run_batch(0, n, xs, caches, last_only=True)
    return n_seq * new_tokens / (time.perf_counter() - t0)


def _split_generation_cpu_s(model, a: int, n_seq: int, new_tokens: int, repeats: int = 2) -> float:
    """Server CPU seconds per new token of the same split generated in one process (the
    best of ``repeats``): the cluster run's prompts, every step each session's front
    ``[0, a)`` then the back ``[a, n)`` batched ``n_seq`` (``a = 0``: the whole model on
    token ids, cloud-only), greedy, CPU time of this thread over the back only. A hot loop
    of the back alone is not this: the fronts running between back steps evict its
    weights from the caches (slicer-tiny, split 6 of 8, 200 steps of 8: 0.14-0.15 ms of
    CPU a token hot, 0.20-0.26 after the fronts), as the edge processes do on the
    cluster's shared cores. CPU time by ``time.thread_time``: the server's getrusage
    clock counts in 4 ms ticks here, too coarse for 50 ms of work."""
    return min(_split_generation_once(model, a, n_seq, new_tokens) for _ in range(repeats))


def _split_generation_once(model, a: int, n_seq: int, new_tokens: int) -> float:
    import torch

    n = model.num_units
    prompts = [torch.tensor([p]) for p in _prompts(n_seq, vocab=int(model.config.vocab_size))]
    cap = max(p.shape[1] for p in prompts) + new_tokens + 1
    fronts = [model.new_cache(0, a, cap) for _ in prompts] if a else []
    backs = [model.new_cache(a, n, cap) for _ in prompts]
    xs, cpu = prompts, 0.0
    with torch.no_grad():
        for _ in range(new_tokens):
            if a:
                xs = [model.run(0, a, x, f) for x, f in zip(xs, fronts)]
            c0 = time.thread_time()
            outs = model.run_batch(a, n, xs, backs, last_only=True)
            cpu += time.thread_time() - c0
            xs = [o[:, -1:].argmax(-1) for o in outs]  # (1, 1) ids
    return cpu / (n_seq * new_tokens)


def hop_costs(n: int = 2000) -> dict:
    """Median seconds of the server's per-step mechanism with nothing to compute: a step
    queued (asyncio queue + future) and its batch computed through a one-thread executor,
    against computed on the event loop's thread (what ``Server._batch_loop`` does)."""
    import asyncio
    import concurrent.futures
    import statistics

    async def measure(use_executor: bool) -> float:
        loop = asyncio.get_running_loop()
        q: asyncio.Queue = asyncio.Queue()
        ex = concurrent.futures.ThreadPoolExecutor(1)

        async def serve():
            while True:
                fut = await q.get()
                fut.set_result(await loop.run_in_executor(ex, int) if use_executor else 0)

        task = loop.create_task(serve())
        ts = []
        for _ in range(n):
            t0 = time.perf_counter()
            fut = loop.create_future()
            await q.put(fut)
            await fut
            ts.append(time.perf_counter() - t0)
        task.cancel()
        ex.shutdown()
        return statistics.median(ts)

    ex_s, loop_s = asyncio.run(measure(True)), asyncio.run(measure(False))
    return {"queue_executor_s": ex_s, "queue_loop_thread_s": loop_s, "ratio": ex_s / loop_s}


# ----------------------------------------------------------------------------- cluster runs
def _workload(model_dir: str, n_devices: int, split: int | None, tokens: int, window_ms: float, name: str,
              vocab: int, requests: int = 2, transport: str = "direct"):
    from slicer.orchestrator.workload import parse_workload

    policy = {"name": "cloud-only"} if split is None else {"name": "fixed", "split": split, "offload_step": 1}
    return parse_workload({
        "name": name, "model": model_dir,
        "devices": [{"class": "raspberry-pi-5", "count": n_devices}],
        "inputs": {"prompts": _prompts(n_devices, vocab=vocab)}, "policy": policy,
        "codec": "lossless", "precision": "float32", "mode": "split" if split is not None else "cloud-only",
        "requests": requests, "max_new_tokens": tokens,
        "server": {"max_batch": 16, "batch_window_ms": window_ms, "max_kv_mib": 4096, "max_kv_mib_per_device": 1024,
                   "transport": transport},
    }, base_dir=".")


def _run_row(out) -> dict:
    recs = [r for r in out.records if r.ok]
    warm = [r for r in recs if r.index >= 1] or recs  # all but each device's first request: warm
    s = out.summary
    t0 = min((r.t_start for r in recs), default=0.0)
    t1 = max((r.t_end for r in recs), default=0.0)
    tokens = sum(r.new_tokens for r in recs)
    window = max(t1 - t0, 1e-9)
    per_dev = max((r.new_tokens for r in recs), default=0)
    return {
        "completed": len(recs), "requests": len(out.records), "tokens": tokens, "window_s": round(window, 4),
        "tokens_s": tokens / window, "per_token_s": window / per_dev if per_dev else None,
        "latency_per_token_s": (sum(r.latency_s / max(r.new_tokens, 1) for r in warm) / len(warm)) if warm else None,
        "batch_mean": s["server"].get("batch_size_mean", 0.0), "server_compute_s": s["server"].get("compute_s_total", 0.0),
        # CPU seconds of the server's compute thread: wall time is inflated when the edge
        # processes compute on the same cores (a split near the end), CPU time is not
        "server_compute_cpu_s": s["server"].get("compute_cpu_s_total", 0.0),
        "server_rss_bytes": s["server"].get("rss_bytes"), "server_weight_bytes": s["server"].get("weight_bytes"),
        "edge_rss_bytes": [r.edge_rss_bytes for r in recs],
        "edge_weight_bytes": [r.edge_weight_bytes for r in recs],
        "predicted_memory_bytes": [r.predicted_memory_bytes for r in recs],
        "errors": [r.error for r in out.records if not r.ok][:3],
    }


def run(args: argparse.Namespace) -> int:
    import tempfile

    import torch

    from slicer.actors.models import load_model
    from slicer.orchestrator.runner import run_inprocess, run_many

    names = [m.strip() for m in args.models.split(",") if m.strip()]
    bad = [m for m in names if m not in ("llama1024", "tiny")]
    if bad:
        raise SystemExit(f"--models: {bad} unknown: allowed llama1024, tiny")
    counts = [int(x) for x in args.devices.split(",") if x.strip()]
    result: dict = {"benchmark": "serve", "machine": "shared CPU machine (other processes use the cores)", "models": {}}
    result["hop"] = hop_costs()
    print(f"per-step mechanism, nothing computed: queue + executor {result['hop']['queue_executor_s'] * 1e6:.1f} us, "
          f"queue + loop thread {result['hop']['queue_loop_thread_s'] * 1e6:.1f} us", flush=True)
    tmp = tempfile.TemporaryDirectory(prefix="slicer-serve-")
    try:
        dirs = _prepare_models(names, tmp.name)
        for name in names:
            d = dirs[name]
            threads = torch.get_num_threads()
            torch.set_num_threads(1)  # as the server actor (one torch thread per actor)
            model = load_model(d)
            n, ell, vocab = model.num_units, args.split, int(model.config.vocab_size)
            deep = n - 2
            my_counts = [c for c in counts if name != "llama1024" or c <= args.max_devices_llama]
            steps = 24 if name == "tiny" else 8
            limit = {c: _segment_tokens_s(model, ell, c, steps) for c in my_counts}
            limit_deep = _segment_tokens_s(model, deep, 8, steps)
            limit_cloud = _segment_tokens_s(model, 0, 8, steps)
            gen_splits = {"deep": deep, "cloud": 0}
            gen_cpu = {k: _split_generation_cpu_s(model, a, 8, args.tokens) for k, a in gen_splits.items()}
            ctx_ratio = _step_cost_ratio(model, ell)
            _full_generate_tokens_s(model, 8, 2)  # warm-up
            full8 = _full_generate_tokens_s(model, 8, args.tokens)
            torch.set_num_threads(threads)
            print(f"[{name}] one-process limits measured; running on the cluster...", flush=True)
            # One device: 5 requests (4 warm ones give its latency). The deep and cloud-only
            # runs twice, alternated: the saving sums both (the server's CPU clock counts in
            # 4 ms ticks, about 280 in one deep run of the Llama).
            wls = [_workload(d, c, ell, args.tokens, args.window_ms, f"serve-{name}-{c}", vocab,
                             requests=LATENCY_REQUESTS if c == 1 else 2) for c in my_counts]
            for rep in ("a", "b"):
                wls.append(_workload(d, 8, deep, args.tokens, args.window_ms, f"serve-{name}-deep8{rep}", vocab))
                wls.append(_workload(d, 8, None, args.tokens, args.window_ms, f"serve-{name}-cloud8{rep}", vocab))
            if 1 in my_counts:  # the same one-device run with every step a Ray call
                wls.append(_workload(d, 1, ell, args.tokens, args.window_ms, f"serve-{name}-1ray", vocab,
                                     requests=LATENCY_REQUESTS, transport="ray"))
            long = name == "tiny" and args.long_tokens > 0
            if long:
                wls.append(_workload(d, 8, ell, args.long_tokens, args.window_ms, f"serve-{name}-long8", vocab))
            # The first workload on a fresh cluster pays its warm-up (Ray starting worker
            # processes on the same two cores): run a short one first and drop it.
            warm = _workload(d, 1, ell, 8, args.window_ms, f"serve-{name}-warmup", vocab)
            outs = run_many([warm, *wls], address=args.address)[1:]
            # the limits again after the cluster runs: each is the better of the two (a
            # ceiling: the machine's load changes over minutes)
            torch.set_num_threads(1)
            limit = {c: max(v, _segment_tokens_s(model, ell, c, steps)) for c, v in limit.items()}
            limit_deep = max(limit_deep, _segment_tokens_s(model, deep, 8, steps))
            limit_cloud = max(limit_cloud, _segment_tokens_s(model, 0, 8, steps))
            gen_cpu = {k: min(v, _split_generation_cpu_s(model, gen_splits[k], 8, args.tokens))
                       for k, v in gen_cpu.items()}
            full8 = max(full8, _full_generate_tokens_s(model, 8, args.tokens))
            torch.set_num_threads(threads)
            row = {w.name.removeprefix(f"serve-{name}-"): _run_row(o) for w, o in zip(wls, outs)}
            torch.set_num_threads(1)  # as each actor
            inproc = _run_row(run_inprocess(_workload(d, 1, ell, args.tokens, args.window_ms, "serve-inproc", vocab,
                                                      requests=LATENCY_REQUESTS)))
            torch.set_num_threads(threads)
            by_n = {c: row[str(c)] for c in my_counts}
            deep_row, cloud_row, deep_b, cloud_b = row["deep8a"], row["cloud8a"], row["deep8b"], row["cloud8b"]
            m = {"model": name, "units": n, "split": ell, "deep_split": deep, "rows": {str(c): r for c, r in by_n.items()},
                 "deep8": deep_row, "cloud8": cloud_row, "deep8_b": deep_b, "cloud8_b": cloud_b, "inprocess1": inproc,
                 "limit_tokens_s": {str(c): v for c, v in limit.items()}, "limit_deep8_tokens_s": limit_deep,
                 "limit_cloud8_tokens_s": limit_cloud, "full_generate8_tokens_s": full8,
                 "split_generation8_cpu_s_per_token": gen_cpu, "ratios": {}}
            R = m["ratios"]
            if 1 in by_n:
                m["ray_transport1"] = row["1ray"]
                for key, r in (("latency_cluster_over_inprocess", by_n[1]),
                               ("latency_ray_transport_over_inprocess", row["1ray"])):
                    if r["latency_per_token_s"] and inproc["latency_per_token_s"]:
                        R[key] = r["latency_per_token_s"] / inproc["latency_per_token_s"]
            R["tokens_s_over_limit"] = {str(c): by_n[c]["tokens_s"] / limit[c] for c in my_counts}
            R["batch_mean_over_n"] = {str(c): by_n[c]["batch_mean"] / c for c in my_counts}
            R["deep8_tokens_s_over_full_generate8"] = (deep_row["tokens_s"] + deep_b["tokens_s"]) / 2 / full8
            R["deep8_batch_mean"] = (deep_row["batch_mean"] + deep_b["batch_mean"]) / 2
            deep_cpu = deep_row["server_compute_cpu_s"] + deep_b["server_compute_cpu_s"]
            if deep_cpu > 0 and gen_cpu["deep"] > 0 and limit_cloud > 0:
                saving_cluster = (cloud_row["server_compute_cpu_s"] + cloud_b["server_compute_cpu_s"]) / deep_cpu
                R["deep_saving_cluster_wall"] = (cloud_row["server_compute_s"] + cloud_b["server_compute_s"]) \
                    / max(deep_row["server_compute_s"] + deep_b["server_compute_s"], 1e-12)
                saving_one = gen_cpu["cloud"] / gen_cpu["deep"]
                R["deep_saving_cluster"] = saving_cluster
                R["deep_saving_one_process"] = saving_one
                R["deep_saving_ratio"] = saving_cluster / saving_one
                # the same against the back segment's hot loop (no fronts between its steps)
                R["deep_saving_ratio_hot_loop"] = saving_cluster / (limit_deep / limit_cloud)
            R["step_ctx1024_over_ctx64"] = ctx_ratio
            if long:
                lr = row["long8"]
                m["long8"] = lr
                if 8 in by_n and by_n[8]["per_token_s"]:
                    R["per_token_long_over_short"] = lr["per_token_s"] / by_n[8]["per_token_s"]
            mem_row = by_n.get(8) or by_n.get(max(by_n))
            edge_rss = [x for x in mem_row["edge_rss_bytes"] if x]
            pred = [x for x in mem_row["predicted_memory_bytes"] if x]
            prof = model.profile
            server_pred = sum(lay.param_bytes for lay in prof.layers[ell:])
            m["memory"] = {"edge_rss_max_bytes": max(edge_rss, default=None),
                           "edge_weight_bytes": max(mem_row["edge_weight_bytes"], default=None),
                           "edge_predicted_bytes": max(pred, default=None),
                           "server_rss_bytes": mem_row["server_rss_bytes"], "server_weight_bytes": mem_row["server_weight_bytes"],
                           "server_predicted_weight_bytes": server_pred}
            mm = m["memory"]
            if mm["edge_rss_max_bytes"] and mm["server_rss_bytes"]:
                R["server_rss_minus_edge_rss_mb"] = (mm["server_rss_bytes"] - mm["edge_rss_max_bytes"]) / 2**20
            if mm["edge_predicted_bytes"] and mm["edge_weight_bytes"]:
                R["edge_weights_over_prediction"] = mm["edge_weight_bytes"] / mm["edge_predicted_bytes"]
                R["edge_rss_over_prediction"] = mm["edge_rss_max_bytes"] / mm["edge_predicted_bytes"]
            if mm["server_weight_bytes"]:
                R["server_weights_over_prediction"] = mm["server_weight_bytes"] / server_pred
                R["server_rss_over_prediction"] = (mm["server_rss_bytes"] or 0) / server_pred
            result["models"][name] = m
            _print(m)
    finally:
        tmp.cleanup()
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1, default=str)
    return 0


def _print(m: dict) -> None:
    R = m["ratios"]
    f = lambda v: "n/a" if v is None else f"{v:.3g}"
    print(f"\n== {m['model']} ({m['units']} units; split {m['split']}, deep split {m['deep_split']}) ==")
    print(f"per-token latency, 1 device, cluster / in-process: {f(R.get('latency_cluster_over_inprocess'))} "
          f"(steps as Ray calls, server.transport ray: {f(R.get('latency_ray_transport_over_inprocess'))})")
    print(f"{'N':>3} {'cluster tok/s':>13} {'limit tok/s':>11} {'ratio':>6} {'mean batch':>10} {'batch/N':>7} done")
    for c, row in m["rows"].items():
        print(f"{c:>3} {row['tokens_s']:>13.1f} {m['limit_tokens_s'][c]:>11.1f} {R['tokens_s_over_limit'][c]:>6.3f} "
              f"{row['batch_mean']:>10.2f} {R['batch_mean_over_n'][c]:>7.2f} {row['completed']}/{row['requests']}")
    print(f"8 devices, split {m['deep_split']} (two runs): tokens/s {m['deep8']['tokens_s']:.1f}, "
          f"{m['deep8_b']['tokens_s']:.1f} / whole-model batched generation {m['full_generate8_tokens_s']:.1f} = "
          f"{f(R['deep8_tokens_s_over_full_generate8'])}; mean batch {R['deep8_batch_mean']:.2f}")
    print(f"server-compute saving of split {m['deep_split']} vs cloud-only at 8: cluster {f(R.get('deep_saving_cluster'))}, "
          f"one process {f(R.get('deep_saving_one_process'))}, ratio {f(R.get('deep_saving_ratio'))} "
          f"(against the back segments' hot loops {f(R.get('deep_saving_ratio_hot_loop'))})")
    print(f"server step, 16 sessions, context 1024 / 64: {f(R['step_ctx1024_over_ctx64'])}")
    if "per_token_long_over_short" in R:
        print(f"8 devices, per-token time at long / short run: {f(R['per_token_long_over_short'])}")
    mm = m["memory"]
    mb = lambda v: "n/a" if not v else f"{v / 2**20:.0f} MB"
    print(f"memory: edge RSS {mb(mm['edge_rss_max_bytes'])} (weights {mb(mm['edge_weight_bytes'])}, policy predicts "
          f"{mb(mm['edge_predicted_bytes'])}); server RSS {mb(mm['server_rss_bytes'])} (weights "
          f"{mb(mm['server_weight_bytes'])}, predicted {mb(mm['server_predicted_weight_bytes'])}); "
          f"server - edge RSS {f(R.get('server_rss_minus_edge_rss_mb'))} MB")
