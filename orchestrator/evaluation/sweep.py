"""Sweeps: every plan of a grid run on one model, scored, costed, and its Pareto front.

A configuration is (split ℓ, codec settings, AR mode, offload step w). For each:

- **measured here**: task accuracy (when a task file is given) or fidelity to the
  unsplit model: teacher-forced next-token agreement over held-out text, the KL
  divergence of the next-token distributions, and the perplexity of both runs; bits per element of every payload (headers included);
  wall time per token of the edge half and of the server half on this machine;
- **emulated here**: a weight-only int8/int4 front (``front_bits``) runs the edge half
  with quantized weights (``slicer.actors.models.quant``), so its effect on fidelity is measured;
- **predicted** for each device class (``policies``' cost model from the model's
  profile, the device catalog and a link): per-token step latency, hand-off latency
  (Eq. 5) and server time per request.

Rows are one per (configuration, device class); the Pareto front is computed per device
class over the objectives (default: fidelity max, bits per element min, predicted step
latency min).
"""
from __future__ import annotations

import csv
import itertools
import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from slicer.orchestrator.evaluation.pareto import pareto_mask

DEFAULT_OBJECTIVES = {"fidelity": "max", "bits_per_element": "min", "predicted_step_ms": "min"}


@dataclass(frozen=True)
class SweepGrid:
    """The configurations to run."""

    splits: tuple[int, ...]
    """Split units ℓ (the edge runs [0, ℓ))."""
    codecs: tuple[str, ...]
    """Codec specs (``CodecConfig.parse``) run as given, e.g. ``lossless``, ``int8``."""
    sparsities: tuple[float, ...] = ()
    """Crossed with ``bits`` into ``slicer:sparsity=s,bits=q`` specs (added to ``codecs``)."""
    bits: tuple[str, ...] = ()
    """q_bit values or fixed lists ``8/2`` (a list sets one block per width and turns ABQ
    off: ``blocks=2,delta=none``)."""
    modes: tuple[str, ...] = ("split",)
    """``split`` and/or ``local-then-offload``."""
    offload_steps: tuple[int, ...] = (4,)
    """w values of the ``local-then-offload`` mode."""
    front_bits: tuple[int | None, ...] = (None,)
    """Edge weight precision: None (the model's dtype), 8 or 4 (weight-only int8/int4)."""

    def codec_specs(self) -> list[str]:
        specs = list(self.codecs)
        for s, q in itertools.product(self.sparsities, self.bits):
            # A fixed list Q has one width per magnitude block of each sign, ABQ off.
            q = str(q)
            spec = f"slicer:sparsity={s},bits={q}" + (f",blocks={q.count('/') + 1},delta=none" if "/" in q else "")
            if spec not in specs:
                specs.append(spec)
        return specs

    def configs(self) -> list[tuple[int, str, str, int | None, int | None]]:
        """(split, codec spec, mode, offload step, front bits) for every point of the grid."""
        out = []
        for ell, spec, mode, fb in itertools.product(self.splits, self.codec_specs(), self.modes, self.front_bits):
            if mode == "local-then-offload":
                out += [(ell, spec, mode, w, fb) for w in self.offload_steps]
            else:
                out.append((ell, spec, mode, None, fb))
        return out


@dataclass
class SweepRow:
    """One configuration on one device class."""

    model: str
    split: int
    """ℓ."""
    mode: str
    offload_step: int | None
    codec: str
    """Codec spec as run (``CodecConfig.spec()``)."""
    front_precision: str
    """Edge weights: the model's dtype, ``int8`` or ``int4`` (weight-only)."""
    device: str
    """Device class of the predicted figures (``policies`` catalog name)."""
    link_mbps: float
    """Link rate of the predicted figures."""
    metric: str
    """What ``fidelity`` is: ``next_token_agreement`` or a task metric (``accuracy``...)."""
    fidelity: float
    """Measured here (see ``metric``); the unsplit model scores 1.0 on agreement."""
    unsplit_fidelity: float
    """The unsplit model's figure of the same metric (1.0 for agreement)."""
    fidelity_source: str
    """``measured`` (run here on this model), ``table: ...`` (measured on another model,
    matched by codec setting and relative split depth) or ``prior`` (policies' prior)."""
    kl_nats: float | None
    """Mean KL(unsplit || split) of the next-token distributions over the scored
    positions, nats (fidelity sweeps only)."""
    perplexity: float | None
    """Perplexity of the split run on the held-out text (fidelity sweeps only)."""
    unsplit_perplexity: float | None
    """Perplexity of the unsplit model on the same positions."""
    bits_per_element: float
    """Measured: payload bytes x 8 / feature elements, headers included (predict-only
    sweeps: the codec's bound B^UB for one token, stated in ``sweep.json``)."""
    payload_bytes_per_token: float | None
    """Measured: payload bytes over scored tokens."""
    measured_edge_ms_per_token: float | None
    """Measured on this machine (edge half: units [0, ℓ) + encode, local steps)."""
    measured_server_ms_per_token: float | None
    """Measured on this machine (server half: decode + units [ℓ, n))."""
    predicted_step_ms: float
    """Predicted per-token latency seen by the edge on ``device`` (Eq. 2 per step)."""
    predicted_handoff_ms: float
    """Predicted hand-off latency (Eq. 5)."""
    predicted_server_ms: float
    """Predicted server time of one request (all its steps)."""
    predicted_payload_bytes_per_token: float
    """The codec's bound B^UB for one token's feature."""
    feasible: bool
    """The plan meets the budgets on ``device`` (latency, memory, link)."""
    violations: str
    """Budgets it misses, ``;``-separated."""
    on_front: bool = False
    """Non-dominated within its device class."""


@dataclass
class SweepSettings:
    """Everything but the grid."""

    devices: tuple[str, ...] = ("raspberry-pi-5", "jetson-orin-nano")
    """Device classes for predicted latency."""
    links_mbps: tuple[float, ...] = (20.0,)
    """Link rates for predicted latency (one set of rows per rate)."""
    snr_db: float = 10.0
    """Mean SNR of the links (the policies' Rayleigh ε-outage model, Eq. 1)."""
    bandwidth_mhz: float = 10.0
    """Channel bandwidth of the links. A rate far above W·log2(1 + SNR) never meets ε:
    its latency is inf (the policies' model), so raise this for fast links."""
    latency_budget_ms: float = 100.0
    """Per-token budget D for feasibility."""
    prompt_tokens: int = 32
    """Prefill tokens (one payload) before the scored tokens."""
    score_tokens: int = 32
    """Scored tokens per window (one payload each)."""
    windows: int = 2
    """Windows of held-out text scored per configuration."""
    objectives: dict[str, str] = field(default_factory=lambda: dict(DEFAULT_OBJECTIVES))
    """Pareto objectives (field -> max/min)."""


def windows_from_ids(ids: Sequence[int], prompt: int, score: int, n: int) -> list[tuple[list[int], list[int]]]:
    """Non-overlapping (context, continuation) windows from the start of ``ids``."""
    out, step = [], prompt + score
    for i in range(n):
        chunk = list(ids[i * step : (i + 1) * step])
        if len(chunk) < prompt + 1:
            break
        out.append((chunk[:prompt], chunk[prompt:]))
    if not out:
        raise ValueError(f"held-out text has {len(ids)} tokens: need at least {prompt + 1} for one window")
    return out


def sampled_ids(model, n_tokens: int, seed: int = 0, bos: int | None = None) -> list[int]:
    """Token ids sampled from the unsplit model itself (for models shipped without a
    tokenizer): text from the model's own distribution, seeded."""
    import torch

    g = torch.Generator().manual_seed(seed)
    start = bos if bos is not None else int(getattr(model.config, "bos_token_id", None) or 0)
    ids = [start]
    cache = model.new_cache(0, model.num_units)
    x = torch.tensor([ids])
    for _ in range(n_tokens - 1):
        logits = model.run(0, model.num_units, x, cache)[0, -1].float()  # (V,)
        tok = int(torch.multinomial(torch.softmax(logits, -1), 1, generator=g))
        ids.append(tok)
        x = torch.tensor([[tok]])
    return ids


def predicted(model_profile, device: str, link_mbps: float, ell: int, w: int | None, cfg, settings: SweepSettings,
              new_tokens: int, precision: str) -> dict[str, Any]:
    """The policies' cost model for one plan on one device class over one link."""
    from slicer.policies import Budgets, CostModel, LinkState, get_device

    dev = get_device(device)
    budgets = Budgets(latency_s=settings.latency_budget_ms / 1e3, memory_bytes=dev.memory_bytes,
                      new_tokens=max(1, new_tokens), prompt_tokens=settings.prompt_tokens)
    link = LinkState.from_mbps(link_mbps, snr_db=settings.snr_db, bandwidth_mhz=settings.bandwidth_mhz)
    cm = CostModel(model_profile, dev, link, budgets)
    est = cm.evaluate(ell, min(w or 1, budgets.new_tokens), precision, cfg)
    return dict(predicted_step_ms=est.step_latency_s * 1e3, predicted_handoff_ms=est.handoff_latency_s * 1e3,
                predicted_server_ms=est.server_time_s * 1e3, predicted_payload_bytes_per_token=est.bytes_per_token,
                feasible=est.feasible, violations=";".join(est.violations))


def run_sweep(model, grid: SweepGrid, settings: SweepSettings, *, text_ids: Sequence[int] | None = None,
              task=None, tokenizer=None, task_limit: int | None = None, progress=print) -> list[SweepRow]:
    """Run every configuration of ``grid`` on ``model`` (``slicer.actors.models.SplitModel``)."""
    from slicer.codec import CodecConfig
    from slicer.orchestrator.evaluation.harness import evaluate_task
    from slicer.orchestrator.evaluation.scorers import HFScorer, SplitScorer, edge_copy

    for ell in grid.splits:
        if not 1 <= ell <= model.num_units - 1:
            raise ValueError(f"split {ell} is invalid for {model.name}: allowed 1..{model.num_units - 1}")
    eos = tokenizer.eos_id if tokenizer is not None else None
    if task is not None:
        ref_run = evaluate_task(task, HFScorer(model.hf, eos_id=eos), tokenizer, limit=task_limit)
        metric = next(k for k in ("accuracy", "exact_match", "pass_at_1", "perplexity") if k in ref_run.metrics)
        unsplit_value = ref_run.metrics[metric]
        windows = []
    else:
        windows = windows_from_ids(text_ids, settings.prompt_tokens, settings.score_tokens, settings.windows)
        ref = HFScorer(model.hf)
        ref_scores = [ref.score(c, t, full=True) for c, t in windows]
        metric, unsplit_value = "next_token_agreement", 1.0
        n_ref = sum(len(r.logprobs) for r in ref_scores)
        unsplit_ppl = math.exp(-sum(sum(r.logprobs) for r in ref_scores) / n_ref)
    scored_tokens = sum(len(t) for _, t in windows)
    rows: list[SweepRow] = []
    configs = grid.configs()
    dtype = model.profile.dtype if model.profile.dtype in ("float32", "float16", "bfloat16") else "float32"
    edges: dict = {}
    for i, (ell, spec, mode, w, fb) in enumerate(configs, 1):
        cfg = CodecConfig.parse(spec)
        key = (fb, model.num_units if mode == "local-then-offload" else ell)
        if fb is not None and key not in edges:
            edges[key] = edge_copy(model, ell, mode, fb)
        precision = {None: dtype, 8: "int8", 4: "int4"}[fb]
        sc = SplitScorer(model, ell, cfg, mode=mode, offload_step=w, eos_id=eos, edge_model=edges.get(key))
        t0 = time.perf_counter()
        kl = ref_ppl = None
        if task is not None:
            run = evaluate_task(task, sc, tokenizer, limit=task_limit)
            fid, ppl = run.metrics[metric], None
            n_tok = max(1, sc.stats.payloads)
        else:
            same = total = 0
            nll = kl_sum = 0.0
            for (c, t), r in zip(windows, ref_scores):
                s = sc.score(c, t, full=True)
                same += sum(a == b for a, b in zip(s.greedy, r.greedy))
                total += len(r.greedy)
                nll -= sum(s.logprobs)
                # KL(p_ref || p_split) per position: sum_v p_ref (log p_ref - log p_split)
                kl_sum += float((r.dist.exp() * (r.dist - s.dist)).sum())
            fid, ppl, kl, ref_ppl = same / total, math.exp(nll / total), kl_sum / total, unsplit_ppl
            n_tok = scored_tokens
        wall = time.perf_counter() - t0
        st = sc.stats
        measured = dict(bits_per_element=st.bits_per_element, payload_bytes_per_token=st.payload_bytes / n_tok,
                        measured_edge_ms_per_token=st.edge_s * 1e3 / n_tok,
                        measured_server_ms_per_token=st.server_s * 1e3 / n_tok)
        for dev, link in itertools.product(settings.devices, settings.links_mbps):
            pred = predicted(model.profile, dev, link, ell, w, cfg, settings, settings.score_tokens, precision)
            rows.append(SweepRow(model=model.name, split=ell, mode=mode, offload_step=w, codec=cfg.spec(),
                                 front_precision=precision, device=dev, link_mbps=link, metric=metric,
                                 fidelity=fid, unsplit_fidelity=unsplit_value, fidelity_source="measured",
                                 kl_nats=kl, perplexity=ppl, unsplit_perplexity=ref_ppl, **measured, **pred))
        if progress:
            progress(f"[{i}/{len(configs)}] split={ell} {mode}{'' if w is None else f' w={w}'} {cfg.spec()} "
                     f"front={precision}: "
                     f"{metric}={fid:.3f} bits/elem={st.bits_per_element:.2f} ({wall:.1f} s)")
    mark_front(rows, settings.objectives)
    return rows


def mark_front(rows: list[SweepRow], objectives: dict[str, str]) -> None:
    """Set ``on_front`` per (device class, link rate), among the feasible plans only (an
    infeasible plan breaks a budget: it is never a choice, so it is on no front)."""
    for key in sorted({(r.device, r.link_mbps) for r in rows}):
        sub = [r for r in rows if (r.device, r.link_mbps) == key]
        for r, m in zip(sub, pareto_mask([asdict(r) for r in sub], objectives, [r.feasible for r in sub])):
            r.on_front = m


def accuracy_rows(rows: Sequence[SweepRow], num_units: int) -> list[dict]:
    """Measured next-token agreement as ``policies.AccuracyTable`` rows (one per split,
    codec and front precision; split mode only, where every scored position crossed
    the codec). ``num_units`` lets another model's sweep match by relative depth."""
    out, seen = [], set()
    for r in rows:
        if r.metric != "next_token_agreement" or r.mode != "split" or r.fidelity_source != "measured":
            continue
        key = (r.split, r.codec, r.front_precision)
        if key in seen:
            continue
        seen.add(key)
        out.append({"split": r.split, "codec": r.codec, "front_precision": r.front_precision,
                    "next_token_agreement": r.fidelity, "num_units": num_units, "model": r.model})
    return out


def _fidelity_lookup(table: Sequence[dict], ell: int, n: int, cfg, precision: str) -> tuple[float, str]:
    """Agreement for (ℓ of n, codec, precision) from measured rows of any model: the same
    codec setting at the nearest relative split depth; else the policies' prior."""
    from slicer.codec import CodecConfig
    from slicer.policies import accuracy_of
    from slicer.policies.accuracy import _key

    best = None
    for row in table:
        try:
            if _key(CodecConfig.parse(str(row["codec"]))) != _key(cfg):
                continue
        except Exception:  # noqa: BLE001, S112 - a row another tool wrote with a spec this codec lacks: skip it
            continue
        m = int(row.get("num_units") or n)
        rank = (abs(int(row["split"]) / m - ell / n), row.get("front_precision") != precision)
        if best is None or rank < best[0]:
            best = (rank, row, m)
    if best is not None:
        (_, wrong_precision), row, m = best
        v = float(row["next_token_agreement"])
        src = f"table: {row.get('model', '?')} split {row['split']}/{m}"
        if wrong_precision:
            from slicer.policies.accuracy import PRECISION_PRIOR

            factor = PRECISION_PRIOR.get(precision, 1.0) / PRECISION_PRIOR.get(str(row.get("front_precision")), 1.0)
            if factor != 1.0:  # float32 -> bfloat16 weights: the prior says no change
                v = min(1.0, v * factor)
                src += f", {row.get('front_precision')} scaled to {precision} by the prior (x{factor:.3f})"
        return v, src
    v, _ = accuracy_of(ell, cfg, precision, None)
    return v, "prior"


def predict_sweep(profile, grid: SweepGrid, settings: SweepSettings, table: Sequence[dict] = ()) -> list[SweepRow]:
    """Plans of a model not at hand, from its profile alone: predicted latency per device
    class and link, payload bound B^UB, fidelity from ``table`` (measured rows, e.g. a
    small model's sweep, see ``accuracy_rows``) or the prior. Nothing is run."""
    from slicer.codec import CodecConfig

    n = profile.num_layers
    for ell in grid.splits:
        if not 1 <= ell <= n - 1:
            raise ValueError(f"split {ell} is invalid for {profile.name}: allowed 1..{n - 1}")
    dtype = profile.dtype if profile.dtype in ("float32", "float16", "bfloat16") else "float32"
    rows = []
    for ell, spec, mode, w, fb in grid.configs():
        cfg = CodecConfig.parse(spec)
        precision = {None: dtype, 8: "int8", 4: "int4"}[fb]
        fid, src = _fidelity_lookup(table, ell, n, cfg, precision)
        layer = profile.layers[ell - 1]
        elems = max(1, layer.out_elements)
        for dev, link in itertools.product(settings.devices, settings.links_mbps):
            pred = predicted(profile, dev, link, ell, w, cfg, settings, settings.score_tokens, precision)
            rows.append(SweepRow(model=profile.name, split=ell, mode=mode, offload_step=w, codec=cfg.spec(),
                                 front_precision=precision, device=dev, link_mbps=link,
                                 metric="next_token_agreement", fidelity=fid, unsplit_fidelity=1.0,
                                 fidelity_source=src, kl_nats=None, perplexity=None, unsplit_perplexity=None,
                                 bits_per_element=pred["predicted_payload_bytes_per_token"] * 8 / elems,
                                 payload_bytes_per_token=None, measured_edge_ms_per_token=None,
                                 measured_server_ms_per_token=None, **pred))
    mark_front(rows, settings.objectives)
    return rows


def write_csv(rows: Sequence[SweepRow], path: str | Path) -> None:
    names = list(SweepRow.__dataclass_fields__)
    with open(path, "w", newline="", encoding="utf-8") as f:
        wr = csv.DictWriter(f, fieldnames=names)
        wr.writeheader()
        for r in rows:
            d = asdict(r)
            # 7 significant digits, not 6 decimals: KL of a near-lossless codec is ~1e-7 nats.
            wr.writerow({k: ("" if v is None else f"{v:.7g}" if isinstance(v, float) else v) for k, v in d.items()})


def _config_key(r: SweepRow) -> tuple:
    return (r.split, r.mode, r.offload_step, r.codec, r.front_precision)


def plot(rows: Sequence[SweepRow], path: str | Path, title: str = "") -> None:
    """Fidelity against bits per element (measured) and against predicted step latency,
    one colour per device class, the front drawn as a line. Infeasible plans are drawn
    grey with an x and counted in the legend; no front goes through them."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    devices = sorted({(r.device, r.link_mbps) for r in rows})
    metric = rows[0].metric if rows else "fidelity"
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    # Bits per element do not depend on the device: one series on the left panel.
    # A configuration counts as feasible there when it is feasible on some (device, link).
    first = [r for r in rows if (r.device, r.link_mbps) == devices[0]] if devices else []
    ok_somewhere = {_config_key(r) for r in rows if r.feasible}
    ok1 = [_config_key(r) in ok_somewhere for r in first]
    ax = axes[0]
    feas = [r for r, ok in zip(first, ok1) if ok]
    bad = [r for r, ok in zip(first, ok1) if not ok]
    if feas:
        ax.scatter([r.bits_per_element for r in feas], [r.fidelity for r in feas], s=18, color="#555555",
                   label=f"configurations ({len(feas)})")
    if bad:
        ax.scatter([r.bits_per_element for r in bad], [r.fidelity for r in bad], s=18, color="#cccccc", marker="x",
                   label=f"infeasible everywhere ({len(bad)})")
    front2 = pareto_mask([asdict(r) for r in first], {"fidelity": "max", "bits_per_element": "min"}, ok1)
    fr = sorted((r.bits_per_element, r.fidelity) for r, m in zip(first, front2) if m)
    if fr:
        ax.plot(*zip(*fr), "-o", c=colors[0], label="front (fidelity, bits)")
    ax.set_xlabel("bits per element (headers included)")
    ax.set_ylabel(metric)
    ax.set_title("fidelity vs. payload")
    ax.legend(fontsize=8)
    ax = axes[1]
    for k, dev in enumerate(devices):
        sub = [r for r in rows if (r.device, r.link_mbps) == dev]
        c = colors[(k + 1) % len(colors)]
        feas = [r for r in sub if r.feasible and math.isfinite(r.predicted_step_ms)]
        bad = [r for r in sub if not r.feasible and math.isfinite(r.predicted_step_ms)]
        ax.scatter([r.predicted_step_ms for r in feas], [r.fidelity for r in feas], s=14, color=c, alpha=0.5)
        n_bad = sum(not r.feasible for r in sub)
        if bad:
            ax.scatter([r.predicted_step_ms for r in bad], [r.fidelity for r in bad], s=14, color="#cccccc", marker="x")
        m2 = pareto_mask([asdict(r) for r in sub], {"fidelity": "max", "predicted_step_ms": "min"}, [r.feasible for r in sub])
        fr = sorted((r.predicted_step_ms, r.fidelity) for r, m in zip(sub, m2) if m)
        what = f"{dev[0]} @ {dev[1]:g} Mbit/s"
        if fr:
            ax.plot(*zip(*fr), "-o", c=c, label=f"{what} front ({n_bad} of {len(sub)} infeasible, grey x)")
        else:
            ax.plot([], [], "x", c="#cccccc", label=f"{what}: no front, all {len(sub)} infeasible")
    ax.set_xscale("log")
    ax.set_xlabel("per-token latency, ms (predicted by the policy's cost model)")
    ax.set_ylabel(metric)
    ax.set_title("fidelity vs. predicted latency")
    ax.legend(fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
