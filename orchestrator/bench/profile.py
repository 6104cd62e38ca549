"""`slicer bench profile`: how well a measured profile (`slicer profile`'s procedure)
predicts a real split decode loop on this machine: predicted/measured step seconds of
the edge segment and of edge + server, in rounds that alternate profile and run so that
drift in the machine's load hits both. Goal: within 25% (0.75-1.25).

Both sides time the CPU time of one torch thread by default (``--clock cpu``): on a
2-core machine shared by several jobs, wall-clock medians of a 1 ms step were 4-10x its
uncontended time, i.e. they measured the scheduler. CPU time still varies between rounds
(other jobs share the caches and the SMT siblings): one CI run on this machine saw rounds
from 0.56 to 1.74, so the target is checked here, as a benchmark, and the test suite
asserts only a band that a wrong cost model would leave (tests/policies/test_measured_latency.py)."""
from __future__ import annotations

HELP = "predicted/measured step time of a split decode loop from a measured profile (goal 0.75-1.25)"

import argparse  # noqa: E402
import json  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", nargs="?", default=None,
                   help="model folder or name (default: ../shared/fixtures/stories260k)")
    p.add_argument("--split", type=int, default=3, help="units on the edge (default 3)")
    p.add_argument("--codec", default="slicer", help="codec spec (default slicer)")
    p.add_argument("--contexts", default="8,64",
                   help="first and last cache length of the decode loop, also the profiled contexts (default 8,64)")
    p.add_argument("--rounds", type=int, default=5, help="profile + run rounds (default 5)")
    p.add_argument("--clock", default="cpu", choices=("cpu", "wall"), help="what is timed (default cpu)")
    p.add_argument("--json", default=None, help="write the results as JSON here")


def split_run(model, split: int, cfg, first: int, steps: int, seed: int, clock=time.thread_time):
    """Greedy per-token split decode of ``steps`` tokens after a ``first``-token prompt;
    returns (cache lengths, edge seconds, server seconds), one entry per step."""
    import torch

    from slicer import codec

    n = model.num_units
    g = torch.Generator().manual_seed(seed)
    ec, sc = model.new_cache(0, split), model.new_cache(split, n)
    with torch.no_grad():
        prompt = torch.randint(0, model.config.vocab_size, (1, first), generator=g)
        h = model.run(0, split, prompt, ec)
        logits = model.run(split, n, codec.decode(codec.encode(h[0], cfg))[None], sc)
        tok = logits[:, -1:].argmax(-1)  # (1, 1)
        ctxs, edge, server = [], [], []
        for _ in range(steps):
            ctxs.append(ec.length)
            t0 = clock()
            h = model.run(0, split, tok, ec)  # (1, 1, H)
            payload = codec.encode(h[0], cfg)
            t1 = clock()
            logits = model.run(split, n, codec.decode(payload)[None], sc)
            tok = logits[:, -1:].argmax(-1)
            t2 = clock()
            edge.append(t1 - t0)
            server.append(t2 - t1)
    return ctxs, edge, server


def predicted_over_measured(model, *, split: int = 3, cfg=None, contexts=(8, 64), rounds: int = 5,
                            clock: str = "cpu") -> dict:
    """``rounds`` rounds of (measure a profile, run a split decode loop), alternating which
    goes first; each round compares the medians over steps. Returns the per-round ratios
    of predicted to measured seconds for the edge segment and for edge + server, and their
    medians. Run it with one torch thread when ``clock="cpu"``."""
    from slicer.codec import CodecConfig
    from slicer.orchestrator.profiler import CLOCKS, measure_profile
    from slicer.policies import Budgets, CostModel, LinkState

    cfg = cfg or CodecConfig(method="slicer")
    first, last = contexts[0], contexts[-1]
    budgets = Budgets(latency_s=1.0, memory_bytes=1e9, new_tokens=last - first)
    fast_link = LinkState(rate_bps=1e9, bandwidth_hz=1e12)  # too fast to matter: only compute and codec compared
    edge_ratios, step_ratios = [], []
    for r in range(rounds):
        def measure():
            return measure_profile(model, contexts=contexts, prefill_tokens=0, reps=5,
                                   codec_specs=(cfg.spec(),), clock=clock)

        def decode_loop():
            return split_run(model, split, cfg, first, last - first, seed=r, clock=CLOCKS[clock])

        if r % 2 == 0:
            (prof, dev), (ctxs, edge, server) = measure(), decode_loop()
        else:
            (ctxs, edge, server), (prof, dev) = decode_loop(), measure()
        cm = CostModel(prof, dev, fast_link, budgets, server=dev)
        pred_edge = [cm.range_s(dev, 0, split, prof.dtype, c, 1) + cm.codec_s(split, 1, cfg) for c in ctxs]
        pred_srv = [cm.range_s(dev, split, prof.num_layers, prof.dtype, c, 1)
                    + cm.codec_s(split, 1, cfg, decode=True) for c in ctxs]
        edge_ratios.append(statistics.median(pred_edge) / statistics.median(edge))
        step_ratios.append(statistics.median([e + s for e, s in zip(pred_edge, pred_srv)])
                           / statistics.median([e + s for e, s in zip(edge, server)]))
    return {"edge_rounds": edge_ratios, "step_rounds": step_ratios,
            "edge": statistics.median(edge_ratios), "step": statistics.median(step_ratios)}


def run(args: argparse.Namespace) -> int:
    import torch

    from slicer.actors.models import load_model
    from slicer.codec import CodecConfig
    from slicer.orchestrator.bench.codec import STORIES260K

    contexts = tuple(int(x) for x in args.contexts.split(",") if x.strip())
    if len(contexts) < 2 or contexts[0] < 1 or contexts[-1] <= contexts[0]:
        raise SystemExit(f"--contexts {args.contexts!r}: give two cache lengths, first >= 1 and last > first")
    model = load_model(args.model or str(STORIES260K))
    if args.split < 1 or args.split >= model.num_units:
        raise SystemExit(f"--split {args.split}: allowed 1..{model.num_units - 1} for this model")
    cfg = CodecConfig.parse(args.codec)
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        out = predicted_over_measured(model, split=args.split, cfg=cfg, contexts=contexts,
                                      rounds=args.rounds, clock=args.clock)
    finally:
        torch.set_num_threads(n)
    ok = all(0.75 <= out[k] <= 1.25 for k in ("edge", "step"))
    print(f"model {args.model or 'stories260k'}, split {args.split}, codec {cfg.spec()}, "
          f"cache {contexts[0]}->{contexts[-1]}, {args.rounds} rounds, clock {args.clock}")
    for k, name in (("edge", "edge segment"), ("step", "edge + server")):
        print(f"  predicted/measured {name:<13} {out[k]:.3f}  (rounds {', '.join(f'{x:.3f}' for x in out[k + '_rounds'])})")
    print(f"goal 0.75-1.25: {'met' if ok else 'NOT met'}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"benchmark": "profile", "model": args.model or "stories260k", "split": args.split,
                       "codec": cfg.spec(), "contexts": list(contexts), "clock": args.clock, **out,
                       "goal_met": ok}, f, indent=1)
    return 0
