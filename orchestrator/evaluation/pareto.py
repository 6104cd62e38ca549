"""Pareto fronts: the configurations no other configuration beats on every objective.

A point ``p`` dominates ``q`` when it is at least as good as ``q`` on every objective and
strictly better on one. Points equal on every objective do not dominate each other, so
duplicates on the front are all kept (each is a real configuration a user may pick).
Points with a missing or NaN objective, and points marked not eligible (an infeasible
plan: it breaks a budget, so no user can pick it), are never on the front and dominate
nothing.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

DIRECTIONS = ("max", "min")


def _oriented(point: Mapping[str, float], objectives: Mapping[str, str]) -> tuple[float, ...] | None:
    out = []
    for name, direction in objectives.items():
        v = point.get(name)
        if v is None:
            return None
        v = float(v)
        if math.isnan(v):
            return None
        out.append(v if direction == "max" else -v)  # larger is better after this
    return tuple(out)


def dominates(a: Sequence[float], b: Sequence[float]) -> bool:
    """``a`` dominates ``b`` (both oriented so that larger is better)."""
    return all(x >= y for x, y in zip(a, b)) and any(x > y for x, y in zip(a, b))


def pareto_mask(points: Sequence[Mapping[str, float]], objectives: Mapping[str, str],
                eligible: Sequence[bool] | None = None) -> list[bool]:
    """For each point, whether it is on the front. ``objectives`` maps a field to
    ``"max"`` or ``"min"``, e.g. ``{"accuracy": "max", "bits_per_element": "min"}``;
    ``eligible`` (one bool per point, e.g. plan feasibility) leaves points out entirely."""
    if not objectives:
        raise ValueError("pareto_mask needs at least one objective")
    for name, direction in objectives.items():
        if direction not in DIRECTIONS:
            raise ValueError(f"objective {name!r} has direction {direction!r}: allowed 'max' or 'min'")
    if eligible is not None and len(eligible) != len(points):
        raise ValueError(f"eligible has {len(eligible)} entries for {len(points)} points")
    vecs = [_oriented(p, objectives) if eligible is None or eligible[i] else None for i, p in enumerate(points)]
    mask = []
    # O(n^2) comparisons: sweeps are hundreds of points, not millions.
    for i, v in enumerate(vecs):
        if v is None:
            mask.append(False)
            continue
        mask.append(not any(w is not None and j != i and dominates(w, v) for j, w in enumerate(vecs)))
    return mask


def parse_objectives(spec: str) -> dict[str, str]:
    """``"accuracy:max,bits_per_element:min"`` -> ``{"accuracy": "max", ...}``."""
    out: dict[str, str] = {}
    for part in filter(None, (p.strip() for p in spec.split(","))):
        name, _, direction = part.partition(":")
        if direction not in DIRECTIONS:
            raise ValueError(f"objective {part!r}: write NAME:max or NAME:min")
        out[name.strip()] = direction
    if not out:
        raise ValueError(f"objectives {spec!r}: none given (write NAME:max or NAME:min, comma separated)")
    return out
