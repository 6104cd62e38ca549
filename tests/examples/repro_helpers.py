"""Helpers shared by the reproduction tests: load an example script as a module, run it
quickly on the committed slicer-tiny, read its CSV output."""
from __future__ import annotations

import csv
import importlib.util
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def load(path: Path):
    """The example script at ``path`` as a module (scripts are not a package)."""
    spec = importlib.util.spec_from_file_location(path.stem, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def run_quick(script: Path, out: Path) -> Path:
    """Run ``script --quick`` on slicer-tiny (2 sequences of 32 tokens) into ``out``;
    skips when the committed model is absent."""
    if not (REPO / "examples" / "models" / "slicer-tiny" / "config.json").exists():
        pytest.skip("examples/models/slicer-tiny not present")
    assert load(script).main(["--quick", "--models", "slicer-tiny", "--sequences", "2", "--seq-len", "32",
                              "--out", str(out)]) == 0
    return out
