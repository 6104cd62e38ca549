"""`slicer cluster up|down|status`: a persistent local multi-node Ray cluster on 127.0.0.1
(a server head node and edge nodes per device class, with the project's labels, slots
and token auth) for trying `slicer run --address` and `slicer submit` on one machine."""
from __future__ import annotations

HELP = "start (up), stop (down) or show (status) a persistent local multi-node cluster on 127.0.0.1"

import argparse  # noqa: E402
import sys  # noqa: E402


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("action", choices=("up", "down", "status"))
    p.add_argument("--classes", default="laptop-cpu,jetson-orin-nano",
                   help="up: edge device classes, comma separated (one node each by default)")
    p.add_argument("--nodes-per-class", type=int, default=1, help="up: edge nodes per class")
    p.add_argument("--slots", type=int, default=16, help="up: edge_slot per edge node (devices it can host)")
    p.add_argument("--cpus", type=int, default=1, help="up: logical CPUs per node")
    p.add_argument("--json", action="store_true", help="print the cluster's record as JSON on stdout")


def run(args: argparse.Namespace) -> int:
    from slicer.orchestrator import cluster as C
    from slicer.orchestrator import results as R

    try:
        if args.action == "up":
            classes = [c.strip() for c in args.classes.split(",") if c.strip()]
            from slicer.policies.devices import load_device_catalog

            catalog = load_device_catalog()
            unknown = [c for c in classes if c not in catalog]
            if unknown:
                print(f"slicer cluster: --classes {', '.join(unknown)} not in the device catalog: allowed "
                      f"{', '.join(sorted(catalog))}", file=sys.stderr)
                return 2
            st = C.cluster_up(classes, nodes_per_class=args.nodes_per_class, edge_slots=args.slots,
                              num_cpus_per_node=args.cpus, progress=sys.stderr)
            if args.json:
                print(R.dumps(st))
            else:
                print(f"cluster up in {st['start_s']:.0f} s: {st['nodes']} nodes (server + {', '.join(st['classes'])})\n"
                      f"  GCS address:  {st['address']}    e.g. slicer run WORKLOAD --address {st['address']}\n"
                      f"  dashboard:    {st['dashboard_url']}    e.g. slicer submit WORKLOAD (the default address now)\n"
                      f"  stop it with: slicer cluster down")
            return 0
        if args.action == "down":
            out = C.cluster_down()
            if args.json:
                print(R.dumps(out))
            else:
                print(f"cluster down: {out['stopped']} processes stopped"
                      + (f"; still alive: {out['left']}" if out["left"] else ""), file=sys.stderr)
            return 0 if not out["left"] else 1
        st = C.read_state()
        alive = len(C.marked_pids(st["id"])) if st else 0
        if args.json:
            print(R.dumps({**(st or {}), "up": bool(st and alive), "processes": alive}))
        elif st is None:
            print("no slicer cluster is up (`slicer cluster up`)")
        else:
            print(f"{'up' if alive else 'DOWN (processes gone; `slicer cluster down` clears the record)'}: "
                  f"{st['address']} (dashboard {st['dashboard_url']}), {st['nodes']} nodes, {alive} processes, "
                  f"classes {', '.join(st['classes'])}")
        return 0 if st is None or alive else 1
    except ValueError as e:
        print(f"slicer cluster {args.action}: {e}", file=sys.stderr)
        return 2
    except C.ClusterError as e:
        print(f"slicer cluster {args.action}: {e}", file=sys.stderr)
        return 1
