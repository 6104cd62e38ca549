"""Smoke test of examples/repro_codec_ablation.py --quick on slicer-tiny (committed): the
outputs exist and hang together (rows, ranges, Eq. 1, ABQ monotone in δ, size invariance)."""
from __future__ import annotations

import itertools
import json
import math

import pytest

from tests.examples.repro_helpers import REPO, run_quick
from tests.examples.repro_helpers import read_csv as rows

SCRIPT = REPO / "examples" / "repro_codec_ablation.py"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def out(tmp_path_factory):
    return run_quick(SCRIPT, tmp_path_factory.mktemp("ablation"))


def test_files_and_labels(out):
    for name in ("modules.csv", "orders.csv", "deltas.csv", "results.json", "README.md", "codec_ablation.png"):
        assert (out / name).exists(), name
    assert (out / "codec_ablation.png").read_bytes()[:8] == PNG_MAGIC
    text = (out / "README.md").read_text(encoding="utf-8")
    for label in ("**Measured**", "**Predicted**", "**Emulated**"):
        assert label in text


def test_module_rows_and_ranges(out):
    mods = rows(out / "modules.csv")
    for s in ("0.75", "0.85", "0.1"):
        labels = {r["modules"].split(" ")[0] for r in mods if r["sparsity"] == s}
        assert labels == {"ATKF", "ATKF+MS", "ATKF+ABQ", "ATKF+MS+ABQ"}, (s, labels)
    for r in mods:
        assert 0.0 <= float(r["agreement"]) <= 1.0
        assert float(r["kl"]) >= 0.0
        assert float(r["bits_per_element"]) > 0
    lossless = next(r for r in mods if r["modules"].startswith("lossless"))
    # The split itself is exact: the lossless codec must reproduce the unsplit model.
    assert float(lossless["agreement"]) == 1.0 and float(lossless["kl"]) < 1e-9
    assert float(lossless["bits_per_element"]) >= 32.0
    # Sparser ATKF sends fewer bytes than denser ATKF at the same width.
    atkf = {r["sparsity"]: float(r["payload_bytes"]) for r in mods if r["modules"] == "ATKF"}
    assert atkf["0.85"] < atkf["0.75"] < atkf["0.1"]


def test_lc_is_eq1_of_the_payload(out):
    from slicer.policies import LinkState, comm_latency_s

    link = LinkState.from_mbps(10.0, snr_db=10.0, bandwidth_mhz=10.0, epsilon=1e-3)
    for r in rows(out / "modules.csv") + rows(out / "orders.csv"):
        want = comm_latency_s(float(r["payload_bytes"]), link) * 1e3
        assert math.isclose(float(r["Lc_pred_ms"]), want, rel_tol=1e-5), r


def test_permuted_q_lists_cost_the_same_bytes(out):
    # Equal-cardinality blocks (sizes differ by at most one per sign): permuting the widths
    # of Q moves bits between blocks of (almost) the same size, so [8,4,2,1] and [1,2,4,8]
    # differ by at most 2 x (7+3+1+... < 14) bits = 4 bytes, whatever the data.
    orders = rows(out / "orders.csv")
    for s in {r["sparsity"] for r in orders}:
        by_q = {r["Q"]: float(r["payload_bytes"]) for r in orders if r["sparsity"] == s}
        assert abs(by_q["[8, 4, 2, 1]"] - by_q["[1, 2, 4, 8]"]) <= 4.0
        # ... while a list with fewer bits per value is clearly smaller.
        assert by_q["[1, 4, 4]"] < by_q["[8, 2]"] - 4.0


def test_abq_width_falls_with_delta(out):
    res = json.loads((out / "results.json").read_text())
    for model in res["models"]:
        for s in {r["sparsity"] for r in model["deltas"]}:
            sub = sorted((r for r in model["deltas"] if r["sparsity"] == s), key=lambda r: r["delta"])
            widths = [r["value_bits"] for r in sub]
            assert widths[0] == 8.0  # δ = 0 never lowers a width (Eq. 9's DS is > 0 at q = 7)
            assert all(a >= b - 1e-12 for a, b in itertools.pairwise(widths)), widths
            for r in sub:
                assert len(r["avg_Q"]) == 3 and all(1.0 <= q <= 8.0 for q in r["avg_Q"])
