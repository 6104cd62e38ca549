"""`slicer traces RUN`: per-request waterfall, time breakdown, Perfetto export."""
from __future__ import annotations

import json
import sys

HELP = "show a run's traces: waterfall per request, where time goes, Perfetto export"


def add_arguments(p) -> None:
    p.add_argument("run", help="run folder (or its traces.jsonl)")
    p.add_argument("--request", help="show the waterfall of this request id (default: the first and slowest)")
    p.add_argument("--perfetto", metavar="OUT.json", help="write Chrome-trace JSON that opens in Perfetto")
    p.add_argument("--width", type=int, default=50, help="waterfall width in characters")
    p.add_argument("--json", action="store_true",
                   help="print counts, hop coverage, the breakdown and the waterfalls as JSON on stdout")


def run(args) -> int:
    from slicer.orchestrator import results as R
    from slicer.orchestrator import traceview as tv

    err = sys.stderr
    try:
        spans = tv.load_spans(args.run)
    except (FileNotFoundError, ValueError) as e:
        print(f"slicer traces: {e}", file=err)
        return 2
    traces = tv.request_traces(spans) or tv.group_traces(spans)
    if not traces:
        print("slicer traces: no spans in this run", file=err)
        return 1
    if args.request:
        chosen = [t for t in traces if t.request_id == args.request or t.trace_id.startswith(args.request)]
        if not chosen:
            ids = ", ".join(t.request_id for t in traces[:20])
            print(f"slicer traces: no request {args.request!r}; requests include: {ids}", file=err)
            return 2
    else:
        chosen = tv.pick(traces)
    if args.perfetto:
        with open(args.perfetto, "w", encoding="utf-8") as f:
            json.dump(tv.to_chrome_trace(spans), f)
    if args.json:
        print(R.dumps(tv.to_json(spans, traces, chosen)))
        return 0
    for t in chosen:
        print(tv.format_waterfall(t, args.width))
        print()
    cov = sorted(t.hop_coverage() for t in traces)
    print(f"{len(traces)} requests, {len(spans)} spans; hop coverage of request wall time: "
          f"min {100 * cov[0]:.1f}%, median {100 * cov[len(cov) // 2]:.1f}%")
    print()
    print(tv.format_breakdown(tv.breakdown(traces)))
    if args.perfetto:
        print(f"\nwrote {args.perfetto} (open it at ui.perfetto.dev)")
    return 0
