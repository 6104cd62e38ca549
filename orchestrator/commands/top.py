"""`slicer top [--address]`: a live view of the running server(s) of a cluster, read from
the metrics every node exports for Prometheus (``ray_slicer_server_*``,
``slicer.actors.loadmeter.METRICS``): per run, busy %, queue, mean batch, open sessions,
rejections, and tokens/s per device class, as rates between two scrapes."""
from __future__ import annotations

HELP = "live view of a cluster's slicer server(s): busy %, queue, batch, tokens/s per device class"

import argparse  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from collections import defaultdict  # noqa: E402

PREFIX = "ray_slicer_server_"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--address", default="auto",
                   help="the cluster's GCS HOST:PORT (default auto: $RAY_ADDRESS, the `slicer cluster up` cluster)")
    p.add_argument("--interval-s", type=float, default=5.0,
                   help="seconds between scrapes (rates are over this; Ray exports metrics every 10 s by default, "
                        "every 2 s on a `slicer cluster up` cluster)")
    p.add_argument("--once", action="store_true", help="print one view (two scrapes --interval-s apart) and exit")
    p.add_argument("--run", default=None, help="only this run (its name as in the metrics' run label)")
    p.add_argument("--json", action="store_true", help="with --once: print the view as JSON on stdout")


def parse(text: str) -> dict[tuple[str, tuple], float]:
    """Prometheus text -> ``{(sample name, sorted label items): value}`` for slicer's
    series (Ray's own labels such as WorkerId or SessionName dropped, values summed)."""
    from prometheus_client.parser import text_string_to_metric_families

    keep = ("run", "device_class", "what", "le", "server")
    out: dict[tuple[str, tuple], float] = defaultdict(float)
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if s.name.startswith(PREFIX):
                out[(s.name, tuple(sorted((k, v) for k, v in s.labels.items() if k in keep)))] += s.value
    return dict(out)


def scrape(urls: list[str], timeout_s: float = 5.0) -> tuple[float, dict]:
    import urllib.request

    merged: dict[tuple[str, tuple], float] = defaultdict(float)
    for url in urls:
        try:
            text = urllib.request.urlopen(url, timeout=timeout_s).read().decode("utf-8", "replace")
        except OSError:
            continue  # a node that went away: the others still count
        try:
            rows = parse(text)
        except ValueError:  # not Prometheus text (a proxy's error page): skip that node
            continue
        for k, v in rows.items():
            merged[k] += v
    return time.time(), dict(merged)


def view(a: tuple[float, dict], b: tuple[float, dict], run: str | None = None) -> dict[str, dict]:
    """Per run: rates between scrapes ``a`` and ``b`` and the gauges at ``b``."""
    dt = max(1e-9, b[0] - a[0])

    def total(snap: dict, name: str, r: str, **want) -> float:
        return sum(v for (n, labels), v in snap.items() if n == PREFIX + name and dict(labels).get("run") == r
                   and all(dict(labels).get(k) == w for k, w in want.items()))

    runs = sorted({dict(labels).get("run") for (_, labels) in b[1] if dict(labels).get("run")})
    out = {}
    for r in runs:
        if run is not None and r != run:
            continue
        classes = sorted({dict(labels).get("device_class") for (n, labels) in b[1]
                          if n == PREFIX + "tokens_total" and dict(labels).get("run") == r})
        d_count = total(b[1], "batch_size_count", r) - total(a[1], "batch_size_count", r)
        d_sum = total(b[1], "batch_size_sum", r) - total(a[1], "batch_size_sum", r)
        out[r] = {
            "busy_pct": round(100 * (total(b[1], "busy_seconds_total", r) - total(a[1], "busy_seconds_total", r)) / dt, 1),
            "queue": total(b[1], "queue_depth", r),
            "mean_batch": round(d_sum / d_count, 2) if d_count > 0 else None,
            "sessions": total(b[1], "sessions", r),
            "kv_mib": round(total(b[1], "kv_bytes", r) / 2**20, 2),
            "rejections": total(b[1], "rejections_total", r),
            "tokens_per_s": {c: round((total(b[1], "tokens_total", r, device_class=c)
                                       - total(a[1], "tokens_total", r, device_class=c)) / dt, 2) for c in classes},
            "tokens": {c: total(b[1], "tokens_total", r, device_class=c) for c in classes},
            "interval_s": round(dt, 2),
        }
    return out


def format_view(v: dict[str, dict]) -> str:
    if not v:
        return "no slicer server metrics yet (is a run going? metrics appear a few seconds after it starts)"
    lines = []
    for r, x in v.items():
        batch = "-" if x["mean_batch"] is None else f"{x['mean_batch']:.2f}"
        lines.append(f"run {r}: busy {x['busy_pct']:5.1f}%  queue {x['queue']:g}  batch {batch}  sessions "
                     f"{x['sessions']:g}  KV {x['kv_mib']:.1f} MiB  rejected {x['rejections']:g}  (over {x['interval_s']:g} s)")
        w = max([12] + [len(c) for c in x["tokens_per_s"]])
        lines.append(f"  {'device class':<{w}}  {'tokens/s':>9}  {'tokens':>8}")
        for c, tps in x["tokens_per_s"].items():
            lines.append(f"  {c:<{w}}  {tps:>9.1f}  {x['tokens'][c]:>8g}")
    return "\n".join(lines)


def endpoints() -> list[str]:
    """Every alive node's metrics URL (needs a connection: ``cluster.connect``)."""
    import ray

    return [f"http://{n['NodeManagerAddress']}:{n['MetricsExportPort']}/metrics"
            for n in ray.nodes() if n.get("Alive") and n.get("MetricsExportPort")]


def run(args: argparse.Namespace) -> int:
    from slicer.orchestrator import cluster as C
    from slicer.orchestrator import results as R

    if args.interval_s <= 0:
        print(f"slicer top: --interval-s {args.interval_s:g}: must be > 0", file=sys.stderr)
        return 2
    try:
        conn = C.connect(args.address)
    except C.ClusterError as e:
        print(f"slicer top: {e}", file=sys.stderr)
        return 1
    try:
        urls = endpoints()
        prev = scrape(urls)
        while True:
            time.sleep(args.interval_s)
            cur = scrape(urls)
            v = view(prev, cur, args.run)
            if args.once:
                print(R.dumps(v) if args.json else format_view(v))
                return 0
            if sys.stdout.isatty():
                sys.stdout.write("\x1b[2J\x1b[H")
            print(f"slicer top  {time.strftime('%H:%M:%S')}  {len(urls)} node(s)  (Ctrl-C to quit)\n")
            print(format_view(v), flush=True)
            prev = cur
    finally:
        conn.close()
