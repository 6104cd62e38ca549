"""Pareto front on hand-made points, ties and duplicates included."""
from __future__ import annotations

import itertools
import random

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
