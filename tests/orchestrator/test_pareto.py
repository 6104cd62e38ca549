"""Pareto front on hand-made points, ties and duplicates included."""
from __future__ import annotations

import itertools
import random
from pathlib import Path

import pytest

from slicer.orchestrator.evaluation.pareto import dominates, pareto_mask, parse_objectives

OBJ = {"accuracy": "max", "bits": "min"}


def P(acc, bits, **kw):
    return {"accuracy": acc, "bits": bits, **kw}


def test_hand_made_front_two_objectives():
    pts = [
        P(0.90, 8.0),   # 0 front: best accuracy
        P(0.85, 4.0),   # 1 front
        P(0.80, 4.0),   # 2 dominated by 1 (same bits, lower accuracy)
        P(0.70, 1.0),   # 3 front: fewest bits
        P(0.60, 2.0),   # 4 dominated by 3
        P(0.90, 9.0),   # 5 dominated by 0 (same accuracy, more bits)
        P(0.84, 3.9),   # 6 front (trades 0.01 accuracy for 0.1 bit)
    ]
    assert pareto_mask(pts, OBJ) == [True, True, False, True, False, False, True]


def test_duplicates_are_all_kept_and_ties_do_not_dominate():
    pts = [P(0.8, 2.0), P(0.8, 2.0), P(0.8, 3.0), P(0.5, 2.0)]
    assert pareto_mask(pts, OBJ) == [True, True, False, False]


def test_directions_matter():
    pts = [P(0.9, 8.0), P(0.1, 1.0)]
    assert pareto_mask(pts, {"accuracy": "max", "bits": "min"}) == [True, True]
    assert pareto_mask(pts, {"accuracy": "max", "bits": "max"}) == [True, False]
    assert pareto_mask(pts, {"accuracy": "min", "bits": "min"}) == [False, True]


def test_three_objectives_and_missing_values():
    pts = [
        {"accuracy": 0.9, "bits": 4, "latency_ms": 50},
        {"accuracy": 0.9, "bits": 4, "latency_ms": 40},   # dominates the first
        {"accuracy": 0.5, "bits": 1, "latency_ms": 90},   # front: fewest bits
        {"accuracy": 0.95, "bits": None, "latency_ms": 1},  # missing bits: never on the front
        {"accuracy": float("nan"), "bits": 0.5, "latency_ms": 1},
    ]
    obj = {"accuracy": "max", "bits": "min", "latency_ms": "min"}
    assert pareto_mask(pts, obj) == [False, True, True, False, False]


def test_single_objective_front_is_the_set_of_maxima():
    pts = [P(0.3, 0), P(0.7, 0), P(0.7, 5), P(0.1, 0)]
    assert pareto_mask(pts, {"accuracy": "max"}) == [False, True, True, False]


def test_matches_brute_force_on_random_points():
    rng = random.Random(0)
    for _ in range(30):
        pts = [P(rng.choice([0.1, 0.5, 0.9]), rng.choice([1, 2, 4])) for _ in range(rng.randint(1, 12))]
        mask = pareto_mask(pts, OBJ)
        for i, p in enumerate(pts):
            beaten = any(
                q["accuracy"] >= p["accuracy"] and q["bits"] <= p["bits"] and (q["accuracy"] > p["accuracy"] or q["bits"] < p["bits"])
                for q in pts)
            assert mask[i] == (not beaten)
        # the front is mutually non-dominated
        front = [(p["accuracy"], -p["bits"]) for p, m in zip(pts, mask) if m]
        assert not any(dominates(a, b) for a, b in itertools.permutations(front, 2))


def test_bad_objectives_are_refused():
    with pytest.raises(ValueError, match="direction"):
        pareto_mask([P(1, 1)], {"accuracy": "up"})
    with pytest.raises(ValueError):
        pareto_mask([P(1, 1)], {})
    assert parse_objectives("accuracy:max, bits:min") == OBJ
    with pytest.raises(ValueError, match="NAME:max"):
        parse_objectives("accuracy")


def test_ineligible_points_are_never_on_the_front_and_dominate_nothing():
    pts = [{"a": 1.0, "b": 1.0}, {"a": 0.5, "b": 2.0}, {"a": 2.0, "b": 0.1}]
    obj = {"a": "max", "b": "min"}
    assert pareto_mask(pts, obj) == [False, False, True]  # the third dominates both
    # the third is infeasible: it is off the front and no longer hides the others
    assert pareto_mask(pts, obj, [True, True, False]) == [True, False, False]
    assert pareto_mask(pts, obj, [False, False, False]) == [False, False, False]
    with pytest.raises(ValueError, match="eligible has 2 entries for 3 points"):
        pareto_mask(pts, obj, [True, True])


def test_sweep_of_an_all_infeasible_grid_reports_no_front(tmp_path, capsys):
    """The issue's example: llama-3-70b on a Jetson Orin AGX at 5 and 20 Mbit/s, every plan
    infeasible: no front printed or written, infeasible plans counted."""
    import csv

    from slicer.orchestrator.cli import main

    out = tmp_path / "sw"
    assert main(["sweep", "--predict-only", "--model", "llama-3-70b", "--devices", "jetson-orin-agx",
                 "--link-mbps", "5,20", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    rows = list(csv.DictReader((out / "sweep.csv").open()))
    assert rows and all(r["feasible"] == "False" for r in rows)
    assert list(csv.DictReader((out / "front.csv").open())) == []
    assert text.count("no front on jetson-orin-agx") == 2 and "front on" not in text.replace("no front on", "")
    assert f"all {len(rows) // 2} plans are infeasible" in text


def test_mixed_feasibility_front_holds_only_feasible_rows(tmp_path, capsys):
    import csv

    from slicer.orchestrator.cli import main

    out = tmp_path / "sw"
    # a generous budget on the tiny model: some plans feasible, the 1 Mbit/s link makes others miss it
    tiny = Path(__file__).resolve().parents[2] / "examples" / "models" / "slicer-tiny"
    assert main(["sweep", "--predict-only", "--model", str(tiny), "--devices", "jetson-orin-nano",
                 "--link-mbps", "1", "--latency-budget-ms", "5", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    rows = list(csv.DictReader((out / "sweep.csv").open()))
    front = list(csv.DictReader((out / "front.csv").open()))
    n_bad = sum(r["feasible"] == "False" for r in rows)
    assert 0 < n_bad < len(rows)  # 75 of 90 when written
    assert front and all(r["feasible"] == "True" for r in front)
    assert f"({n_bad} of {len(rows)} plans infeasible, never on a front)" in text
    # the filter matters here: without it an infeasible plan would sit on the front
    obj = {"fidelity": "max", "bits_per_element": "min", "predicted_step_ms": "min"}
    pts = [{k: float(r[k]) for k in obj} for r in rows]
    assert any(m and r["feasible"] == "False" for r, m in zip(rows, pareto_mask(pts, obj)))
