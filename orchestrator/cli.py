"""The `slicer` command line.

Subcommands are discovered, so each concern owns its own module and nothing here needs
editing when one is added:

- ``orchestrator/commands/<name>.py`` becomes ``slicer <name>``;
- ``orchestrator/bench/<name>.py`` becomes ``slicer bench <name>``.

Each such module defines ``HELP`` (one line), ``add_arguments(parser)`` and
``run(args) -> int`` (the exit code). Modules are imported lazily only for the command
that runs, so ``slicer --help`` never imports torch or ray.
"""
from __future__ import annotations

import argparse
import ast
import importlib
import importlib.util
import pkgutil
import sys
from collections.abc import Sequence

from slicer.orchestrator import bench as _bench_pkg
from slicer.orchestrator import commands as _commands_pkg


def _modules(pkg) -> list[str]:
    return sorted(m.name for m in pkgutil.iter_modules(pkg.__path__) if not m.name.startswith("_"))


def _help_of(modname: str) -> str:
    # Read HELP without importing the module's heavy dependencies: HELP is a literal on
    # one line near the top, by convention.
    spec = importlib.util.find_spec(modname)
    if spec is None or spec.origin is None:
        return ""
    with open(spec.origin, encoding="utf-8") as f:
        for line in f:
            if line.startswith("HELP"):
                try:
                    return str(ast.literal_eval(line.split("=", 1)[1].strip())).replace("%", "%%")  # argparse formats help
                except Exception:
                    return ""
    return ""


def build_parser(argv: Sequence[str]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="slicer",
        description="Split-computing inference of DNNs and LLMs on Ray.",
    )
    parser.add_argument("--version", action="version", version=f"slicer {version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    wanted = argv[0] if argv else None
    for name in _modules(_commands_pkg):
        modname = f"slicer.orchestrator.commands.{name}"
        p = sub.add_parser(name.replace("_", "-"), help=_help_of(modname))
        if wanted == name.replace("_", "-"):
            mod = importlib.import_module(modname)
            mod.add_arguments(p)
            p.set_defaults(_run=mod.run)
    bench = sub.add_parser("bench", help="benchmarks that report ratios measured side by side")
    bsub = bench.add_subparsers(dest="bench", metavar="BENCH")
    wanted_bench = argv[1] if wanted == "bench" and len(argv) > 1 else None
    for name in _modules(_bench_pkg):
        modname = f"slicer.orchestrator.bench.{name}"
        p = bsub.add_parser(name.replace("_", "-"), help=_help_of(modname))
        if wanted_bench == name.replace("_", "-"):
            mod = importlib.import_module(modname)
            mod.add_arguments(p)
            p.set_defaults(_run=mod.run)
    return parser


def version() -> str:
    """The installed distribution's version (package metadata), else ``unknown``."""
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as _v

    try:
        return _v("slicer")
    except PackageNotFoundError:
        return "unknown (not installed: pip install -e .)"


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(argv)
    args = parser.parse_args(argv)
    run = getattr(args, "_run", None)
    if run is None:
        parser.print_help()
        return 2
    try:
        return int(run(args) or 0)
    except KeyboardInterrupt:
        # The command's own finally blocks (cluster stop, actor kills) have run by now.
        print(f"\nslicer {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
