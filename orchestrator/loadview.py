"""Reading a run's server load timeline (``load.jsonl``: one row per server batch,
``LoadMeter.timeline``; runs made before that hold the driver's polled ``LoadMeter.sample``
rows, which read the same way)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def load_timeline(run: str | Path) -> list[dict[str, Any]]:
    path = Path(run)
    if path.is_dir():
        path = path / "load.jsonl"
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: not a run folder?")
    rows = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{n}: not a JSON row ({e})") from e
    bad = [n for n, r in enumerate(rows, 1) if not isinstance(r, dict) or not isinstance(r.get("t_s"), (int, float))]
    if bad:
        raise ValueError(f"{path}: row {bad[0]} has no numeric t_s: not a load timeline")
    return sorted(rows, key=lambda r: r["t_s"])


def totals(rows: list[dict[str, Any]]) -> dict[str, Any]:
    wall = sum(r["interval_s"] for r in rows) or 1e-12
    busy = sum(r["busy_frac"] * r["interval_s"] for r in rows)
    per_dev: dict[str, float] = {}
    for r in rows:
        for d, s in r.get("compute_s", {}).items():
            per_dev[d] = per_dev.get(d, 0.0) + s
    tokens = sum(r["tokens"] for r in rows)
    batches = sum(r["batches"] for r in rows)
    return {
        "wall_s": wall,
        "busy_s": busy,
        "busy_frac": busy / wall,
        "tokens": tokens,
        "tokens_per_s": tokens / wall,
        "server_compute_s": sum(per_dev.values()),
        "compute_s_by_device": per_dev,
        "queue_max": max((r.get("queue_max", r["queue_depth"]) for r in rows), default=0),
        "mean_batch": (sum(r["mean_batch"] * r["batches"] for r in rows) / batches) if batches else 0.0,
    }


def format_table(rows: list[dict[str, Any]], max_rows: int = 40) -> str:
    devs = sorted({d for r in rows for d in r.get("compute_s", {})})
    step = max(1, -(-len(rows) // max_rows))
    widths = {d: max(10, len(d)) for d in devs}  # device ids in full: they tell devices apart
    head = f"{'t_s':>7} {'busy%':>6} {'queue':>5} {'batch':>5} {'tok/s':>8} " + " ".join(f"{d:>{widths[d]}}" for d in devs)
    lines = [head, "-" * len(head)]
    for i in range(0, len(rows), step):
        chunk = rows[i : i + step]
        wall = sum(r["interval_s"] for r in chunk) or 1e-12
        busy = sum(r["busy_frac"] * r["interval_s"] for r in chunk) / wall
        q = max(r.get("queue_max", r["queue_depth"]) for r in chunk)
        nb = sum(r["batches"] for r in chunk)
        mb = sum(r["mean_batch"] * r["batches"] for r in chunk) / nb if nb else 0.0
        tps = sum(r["tokens"] for r in chunk) / wall
        cells = " ".join(f"{sum(r.get('compute_s', {}).get(d, 0.0) for r in chunk):>{widths[d]}.3f}" for d in devs)
        lines.append(f"{chunk[-1]['t_s']:>7.2f} {100 * busy:>6.1f} {q:>5} {mb:>5.1f} {tps:>8.1f} {cells}")
    lines.append("(per-device columns: server compute seconds in the interval)")
    return "\n".join(lines)


def format_totals(name: str, t: dict[str, Any]) -> str:
    return (f"{name}: wall {t['wall_s']:.1f} s, server busy {t['busy_s']:.2f} s ({100 * t['busy_frac']:.1f}%), "
            f"server compute {t['server_compute_s']:.2f} s, {t['tokens']} tokens ({t['tokens_per_s']:.1f}/s), "
            f"mean batch {t['mean_batch']:.2f}, max queue {t['queue_max']}")


def binned(rows: list[dict[str, Any]], n_bins: int = 60) -> list[dict[str, Any]]:
    """The rows merged into at most ``n_bins`` consecutive groups of equal time span
    (``LoadMeter``'s merge: sums, maxima, the last row's state): per-batch rows are ms apart
    and their tokens/s is noise; binned, a rate reads at a glance."""
    from slicer.actors.loadmeter import merge_rows

    if len(rows) <= n_bins:
        return list(rows)
    t_lo = max(0.0, rows[0]["t_s"] - rows[0]["interval_s"])
    width = max(1e-9, rows[-1]["t_s"] - t_lo) / n_bins
    out: list[dict[str, Any]] = []
    cur, edge = None, t_lo + width
    for r in rows:
        if cur is not None and r["t_s"] > edge + 1e-12:
            out.append(cur)
            cur = None
            while r["t_s"] > edge + 1e-12:
                edge += width
        cur = r if cur is None else merge_rows(cur, r)
    if cur is not None:
        out.append(cur)
    return out


def plot(runs: dict[str, list[dict[str, Any]]], out: str | Path, n_bins: int = 60) -> dict[str, dict[str, list[float]]]:
    """Write the timeline PNG; returns the series drawn per run (what the tests compare
    with the table). Five panels sharing a time axis from 0: busy %, queue (max per bin),
    tokens/s, cumulative server compute, and cumulative server compute per device. Busy %
    and tokens/s are over ``n_bins`` equal time bins, drawn as steps over each bin."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(5, 1, figsize=(9, 12), sharex=True)
    drawn: dict[str, dict[str, list[float]]] = {}
    t_max = 0.0
    for name, rows in runs.items():
        rows = sorted(rows, key=lambda r: r["t_s"])
        b = binned(rows, n_bins)
        # each bin covers [t_s - interval_s, t_s]: draw it as a step starting at 0
        starts = [max(0.0, r["t_s"] - r["interval_s"]) for r in b]
        edges = starts + [b[-1]["t_s"]] if b else []
        busy = [100 * r["busy_frac"] for r in b]
        tps = [r["tokens_per_s"] for r in b]
        qmax = [r.get("queue_max", r["queue_depth"]) for r in b]
        if b:
            axes[0].stairs(busy, edges, label=name)
            axes[1].stairs(qmax, edges, label=name)
            axes[2].stairs(tps, edges, label=name)
        t = [0.0] + [r["t_s"] for r in rows]
        cum, acc = [0.0], 0.0
        per_dev: dict[str, list[float]] = {}
        devs = sorted({d for r in rows for d in r.get("compute_s", {})})
        dev_acc = {d: 0.0 for d in devs}
        for d in devs:
            per_dev[d] = [0.0]
        for r in rows:
            acc += sum(r.get("compute_s", {}).values())
            cum.append(acc)
            for d in devs:
                dev_acc[d] += r.get("compute_s", {}).get(d, 0.0)
                per_dev[d].append(dev_acc[d])
        axes[3].plot(t, cum, label=name)
        for d in devs:
            axes[4].plot(t, per_dev[d], label=d if len(runs) == 1 else f"{name}: {d}")
        t_max = max(t_max, t[-1])
        drawn[name] = {"t_s": [r["t_s"] for r in b], "busy_pct": busy, "tokens_per_s": tps, "queue_max": qmax,
                       "compute_cum_s": cum[1:], "compute_cum_s_by_device": {d: v[1:] for d, v in per_dev.items()},
                       "samples": len(rows)}
    labels = ["server busy %", "queue depth (max)", "tokens / s", "server compute s (cum.)",
              "server compute s per device (cum.)"]
    for ax, lab in zip(axes, labels):
        ax.set_ylabel(lab, fontsize=9)
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
        ax.legend(loc="upper left", fontsize=7, ncol=2)
    axes[0].set_ylim(0, 105)
    axes[-1].set_xlim(0, t_max or 1.0)
    axes[-1].set_xlabel("time since run start (s)")
    n = ", ".join(f"{k}: {v['samples']} samples" for k, v in drawn.items())
    fig.suptitle(f"server load ({n})")
    fig.tight_layout()
    fig.savefig(out, dpi=90)
    plt.close(fig)
    return drawn
