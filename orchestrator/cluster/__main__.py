"""``python -m slicer.orchestrator.cluster ray-start ARGS``: `ray start` with every node
address on 127.0.0.1 (the child process ``cluster_up`` runs for each node)."""
import sys

from slicer.orchestrator.cluster.persistent import _ray_start_main

if sys.argv[1:2] != ["ray-start"]:
    sys.exit("usage: python -m slicer.orchestrator.cluster ray-start RAY_START_ARGS...")
sys.exit(_ray_start_main(sys.argv[2:]))
