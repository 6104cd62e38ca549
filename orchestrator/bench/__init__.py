"""`slicer bench <name>` benchmarks, one module each (see orchestrator/cli.py)."""
