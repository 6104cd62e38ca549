"""`slicer load RUN [RUN_B]`: server load over time, and two runs side by side."""
from __future__ import annotations

HELP = "show server load over time (busy, queue, tokens/s, compute per device); compare two runs"

import sys  # noqa: E402


def add_arguments(p) -> None:
    p.add_argument("runs", nargs="+", metavar="RUN", help="run folder(s); two to compare")
    p.add_argument("--plot", metavar="OUT.png", help="write a PNG of the timeline(s)")
    p.add_argument("--json", action="store_true", help="print each run's totals and rows as JSON on stdout")


def run(args) -> int:
    from pathlib import Path

    from slicer.orchestrator import loadview as lv
    from slicer.orchestrator import results as R

    if len(args.runs) > 2:
        print("slicer load: give one run, or two to compare", file=sys.stderr)
        return 2
    timelines = {}
    for r in args.runs:
        try:
            timelines[Path(r).name or r] = lv.load_timeline(r)
        except (FileNotFoundError, ValueError, KeyError) as e:
            print(f"slicer load: {e}", file=sys.stderr)
            return 2
    tots = {name: lv.totals(rows) for name, rows in timelines.items()}
    ratio = None
    if len(tots) == 2:
        (a, ta), (b, tb) = tots.items()
        ratio = ta["server_compute_s"] / tb["server_compute_s"] if tb["server_compute_s"] else None
    if args.plot:
        lv.plot(timelines, args.plot)
    if args.json:
        doc = {"runs": {name: {"totals": tots[name], "samples": len(rows), "rows": rows}
                        for name, rows in timelines.items()}}
        if len(tots) == 2:
            doc["server_compute_ratio"] = ratio
        print(R.dumps(doc))
        return 0
    for name, rows in timelines.items():
        print(f"== {name} ({len(rows)} samples)")
        print(lv.format_table(rows))
        print(lv.format_totals(name, tots[name]))
        print()
    if len(tots) == 2:
        (a, ta), (b, tb) = tots.items()
        shown = f"{ratio:.2f}x" if ratio is not None else "n/a (no server compute in the second run)"
        print(f"server compute {a} / {b} = {shown}; busy {100 * ta['busy_frac']:.1f}% vs {100 * tb['busy_frac']:.1f}%")
    if args.plot:
        print(f"wrote {args.plot}")
    return 0
