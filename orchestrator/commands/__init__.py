"""`slicer <name>` subcommands, one module each (see orchestrator/cli.py)."""
