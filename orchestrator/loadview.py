"""Reading a run's server load timeline (``load.jsonl``, rows of ``LoadMeter.sample``)."""
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
    rows = [json.loads(l) for l in path.read_text(encoding="utf-8").splitlines() if l.strip()]
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
    step = max(1, len(rows) // max_rows)
    head = f"{'t_s':>7} {'busy%':>6} {'queue':>5} {'batch':>5} {'tok/s':>8} " + " ".join(f"{d[:10]:>10}" for d in devs)
    lines = [head, "-" * len(head)]
    for i in range(0, len(rows), step):
        chunk = rows[i : i + step]
        wall = sum(r["interval_s"] for r in chunk) or 1e-12
        busy = sum(r["busy_frac"] * r["interval_s"] for r in chunk) / wall
        q = max(r.get("queue_max", r["queue_depth"]) for r in chunk)
        nb = sum(r["batches"] for r in chunk)
        mb = sum(r["mean_batch"] * r["batches"] for r in chunk) / nb if nb else 0.0
        tps = sum(r["tokens"] for r in chunk) / wall
        cells = " ".join(f"{sum(r.get('compute_s', {}).get(d, 0.0) for r in chunk):>10.3f}" for d in devs)
        lines.append(f"{chunk[-1]['t_s']:>7.1f} {100 * busy:>6.1f} {q:>5} {mb:>5.1f} {tps:>8.1f} {cells}")
    lines.append("(per-device columns: server compute seconds in the interval)")
    return "\n".join(lines)


def format_totals(name: str, t: dict[str, Any]) -> str:
    return (f"{name}: wall {t['wall_s']:.1f} s, server busy {t['busy_s']:.2f} s ({100 * t['busy_frac']:.1f}%), "
            f"server compute {t['server_compute_s']:.2f} s, {t['tokens']} tokens ({t['tokens_per_s']:.1f}/s), "
            f"mean batch {t['mean_batch']:.2f}, max queue {t['queue_max']}")


def plot(runs: dict[str, list[dict[str, Any]]], out: str | Path) -> dict[str, dict[str, list[float]]]:
    """Write the timeline PNG; returns the series drawn per run (what the tests compare
    with the table)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(4, 1, figsize=(9, 10), sharex=True)
    drawn: dict[str, dict[str, list[float]]] = {}
    for name, rows in runs.items():
        t = [r["t_s"] for r in rows]
        mk = "o" if len(rows) < 30 else None  # a short run has few samples: show them
        axes[0].plot(t, [100 * r["busy_frac"] for r in rows], label=name, marker=mk)
        axes[1].step(t, [r.get("queue_max", r["queue_depth"]) for r in rows], where="post", label=name)
        axes[2].plot(t, [r["tokens_per_s"] for r in rows], label=name, marker=mk)
        cum, acc = [], 0.0
        for r in rows:
            acc += sum(r.get("compute_s", {}).values())
            cum.append(acc)
        axes[3].plot(t, cum, label=name, marker=mk)
        drawn[name] = {"t_s": t, "busy_pct": [100 * r["busy_frac"] for r in rows], "compute_cum_s": cum,
                       "tokens_per_s": [r["tokens_per_s"] for r in rows]}
    for ax, lab in zip(axes, ["server busy %", "queue depth (max)", "tokens / s", "server compute s (cum.)"]):
        ax.set_ylabel(lab)
        ax.grid(alpha=0.3)
        ax.legend(loc="upper left", fontsize=8)
    axes[-1].set_xlabel("time since run start (s)")
    fig.suptitle("server load")
    fig.tight_layout()
    fig.savefig(out, dpi=90)
    plt.close(fig)
    return drawn
