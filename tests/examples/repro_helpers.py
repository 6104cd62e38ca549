"""Helpers shared by the reproduction tests: load an example script as a module, read
its CSV output."""
from __future__ import annotations

import csv
import importlib.util
from pathlib import Path


def load(path: Path):
    """The example script at ``path`` as a module (scripts are not a package)."""
    spec = importlib.util.spec_from_file_location(path.stem, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))
