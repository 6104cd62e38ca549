"""`slicer load RUN [RUN_B]`: server load over time, and two runs side by side."""
from __future__ import annotations

HELP = "show server load over time (busy, queue, tokens/s, compute per device); compare two runs"


def add_arguments(p) -> None:
    p.add_argument("runs", nargs="+", metavar="RUN", help="run folder(s); two to compare")
    p.add_argument("--plot", metavar="OUT.png", help="write a PNG of the timeline(s)")


def run(args) -> int:
    from pathlib import Path

    from slicer.orchestrator import loadview as lv

    if len(args.runs) > 2:
        print("slicer load: give one run, or two to compare")
        return 2
    timelines = {}
    for r in args.runs:
        try:
            timelines[Path(r).name or r] = lv.load_timeline(r)
        except FileNotFoundError as e:
            print(f"slicer load: {e}")
            return 2
    tots = {}
    for name, rows in timelines.items():
        print(f"== {name}")
        print(lv.format_table(rows))
        tots[name] = lv.totals(rows)
        print(lv.format_totals(name, tots[name]))
        print()
    if len(tots) == 2:
        (a, ta), (b, tb) = tots.items()
        ratio = ta["server_compute_s"] / tb["server_compute_s"] if tb["server_compute_s"] else float("inf")
        print(f"server compute {a} / {b} = {ratio:.2f}x; busy {100 * ta['busy_frac']:.1f}% vs {100 * tb['busy_frac']:.1f}%")
    if args.plot:
        lv.plot(timelines, args.plot)
        print(f"wrote {args.plot}")
    return 0
