"""Smoke test of examples/repro_server_time.py --quick (in-process runtime, 1 device)."""
from __future__ import annotations

import csv
import math
from pathlib import Path

import pytest

from tests.examples.repro_helpers import load

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "examples" / "repro_server_time.py"
MODEL = REPO / "examples" / "models" / "slicer-tiny"


def test_quick_run_is_consistent(tmp_path):
    if not (MODEL / "config.json").exists():
        pytest.skip("examples/models/slicer-tiny not present")
    mod = load(SCRIPT)
    assert mod.main(["--quick", "--devices", "1,2", "--model", str(MODEL), "--max-new-tokens", "4",
                     "--out", str(tmp_path)]) == 0
    assert (tmp_path / "server_time.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with open(tmp_path / "server_time.csv", newline="") as f:
        rat = list(csv.DictReader(f))
    with open(tmp_path / "runs.csv", newline="") as f:
        runs = list(csv.DictReader(f))
    assert [int(r["devices"]) for r in rat] == [1, 2]
    assert {(int(r["devices"]), r["policy"]) for r in runs} == {(n, p) for n in (1, 2) for p in ("slicer", "cloud-only")}
    for r in runs:
        # Same requests under both policies: every one completes with the same tokens.
        assert r["completed"] == r["requests"]
        assert int(r["tokens"]) == int(r["devices"]) * 1 * 4
        assert float(r["server_compute_s"]) > 0
    for r in rat:
        ratio = float(r["cloud_server_s"]) / float(r["slicer_server_s"])
        assert math.isclose(float(r["ratio_cloud_over_slicer"]), ratio, rel_tol=1e-4)
        # The memory budgets are below the model: SLICER splits, it does not run edge-only.
        assert "split l=" in r["slicer_plans"] and "edge-only" not in r["slicer_plans"]
    text = (tmp_path / "README.md").read_text(encoding="utf-8")
    assert "**Measured**" in text and "**Emulated**" in text and "in this process" in text
