"""pass@k: the unbiased estimator, and scoring of given samples end to end."""
from __future__ import annotations

import itertools
import json
from math import comb
from pathlib import Path

import pytest

from slicer.orchestrator.cli import main
from slicer.orchestrator.evaluation.passk import SampleResult, aggregate, pass_at_k

TASKS = Path(__file__).resolve().parents[2] / "examples" / "tasks"


@pytest.mark.parametrize("n,c,k", [(1, 0, 1), (1, 1, 1), (5, 2, 1), (5, 2, 3), (10, 3, 5), (200, 7, 100), (20, 0, 10)])
def test_estimator_matches_the_closed_form(n, c, k):
    expected = 1.0 - comb(n - c, k) / comb(n, k)
    assert pass_at_k(n, c, k) == pytest.approx(expected, rel=1e-12, abs=1e-12)


def test_estimator_is_the_probability_over_subsets():
    # By enumeration: the fraction of k-subsets of the n samples holding a pass.
    samples = [True, False, False, True, False, False]
    n, c = len(samples), sum(samples)
    for k in range(1, n + 1):
        subsets = list(itertools.combinations(samples, k))
        assert pass_at_k(n, c, k) == pytest.approx(sum(any(s) for s in subsets) / len(subsets))


def test_estimator_refuses_impossible_counts():
    with pytest.raises(ValueError):
        pass_at_k(3, 4, 1)
    with pytest.raises(ValueError):
        pass_at_k(3, 1, 4)


def test_aggregate_skips_k_larger_than_some_problem_has():
    rs = [SampleResult("a", 0, True, ""), SampleResult("a", 1, False, ""), SampleResult("b", 0, False, "")]
    agg = aggregate(rs, [1, 2])
    assert agg == {"pass@1": pytest.approx((0.5 + 0.0) / 2)}


def test_cli_scores_samples_with_hostile_completions(tmp_path, capsys):
    outside = tmp_path / "outside" / "escaped.txt"
    outside.parent.mkdir()
    samples = [
        ("mini/0", "    return a + b\n"),                                   # pass
        ("mini/0", "    return a * b\n"),                                   # wrong
        ("mini/1", "    while True:\n        pass\n"),                     # loops forever
        ("mini/1", "    return s == s[::-1]\n"),                            # pass
        ("mini/2", "    x = []\n    while True:\n        x.append(bytearray(10 ** 7))\n"),  # allocates without bound
        ("mini/3", f"    open({str(outside)!r}, 'w').write('x')\n    return sum(ch in 'aeiouAEIOU' for ch in s)\n"),
    ]
    sp = tmp_path / "samples.jsonl"
    sp.write_text("".join(json.dumps({"task_id": t, "completion": c}) + "\n" for t, c in samples))
    out = tmp_path / "report.json"
    # 4 s: on a loaded machine the bomb must still meet its memory limit before the clock.
    rc = main(["eval", "--task", str(TASKS / "humaneval_mini.jsonl"), "--samples", str(sp), "--json", str(out),
               "--k", "1,2", "--timeout-s", "4", "--memory-mib", "256"])
    assert rc == 0
    rep = json.loads(out.read_text())
    assert rep["task"] == "humaneval_mini"
    got = [(r["task_id"], r["passed"], r["error"].split(":")[0]) for r in rep["results"]]
    assert got == [("mini/0", True, ""), ("mini/0", False, "failed"), ("mini/1", False, "timeout"),
                   ("mini/1", True, ""), ("mini/2", False, "memory"), ("mini/3", False, "failed")]
    assert not outside.exists()
    # pass@1 per problem: 1/2, 1/2, 0, 0 -> mean 0.25; pass@2 only where every problem has 2 samples.
    assert rep["pass_at_1"] == pytest.approx(0.25)
    assert "pass@2" not in rep["pass_at_k"]


def test_cli_canonical_solutions_all_pass(tmp_path):
    recs = [json.loads(l) for l in (TASKS / "humaneval_mini.jsonl").read_text().splitlines()]
    sp = tmp_path / "canon.jsonl"
    sp.write_text("".join(json.dumps({"task_id": r["task_id"], "completion": r["canonical_solution"]}) + "\n" for r in recs))
    out = tmp_path / "r.json"
    assert main(["eval", "--task", str(TASKS / "humaneval_mini.jsonl"), "--samples", str(sp), "--json", str(out)]) == 0
    rep = json.loads(out.read_text())
    assert rep["pass_at_1"] == 1.0 and all(r["passed"] for r in rep["results"])


def test_cli_exact_match_samples(tmp_path):
    out = tmp_path / "r.json"
    assert main(["eval", "--task", str(TASKS / "gsm8k_mini.jsonl"), "--samples", str(TASKS / "gsm8k_mini_samples.jsonl"),
                 "--json", str(out)]) == 0
    rep = json.loads(out.read_text())
    assert [r["passed"] for r in rep["results"]] == [True, True, True, False]


def test_cli_rejects_unknown_task_ids_and_bad_files(tmp_path, capsys):
    sp = tmp_path / "s.jsonl"
    sp.write_text(json.dumps({"task_id": "nope", "completion": "x"}) + "\n")
    assert main(["eval", "--task", str(TASKS / "humaneval_mini.jsonl"), "--samples", str(sp)]) == 2
    assert "nope" in capsys.readouterr().err
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"x": 1}) + "\n")
    assert main(["eval", "--task", str(bad), "--samples", str(sp)]) == 2
    assert "Accepted task shapes" in capsys.readouterr().err
