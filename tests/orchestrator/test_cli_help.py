"""Every command's and benchmark's --help renders (argparse formats help strings)."""
from __future__ import annotations

import pkgutil
from pathlib import Path

import pytest

from slicer.orchestrator import bench, commands
from slicer.orchestrator.cli import main

COMMANDS = [m.name.replace("_", "-") for m in pkgutil.iter_modules(commands.__path__)]
BENCHES = [m.name.replace("_", "-") for m in pkgutil.iter_modules(bench.__path__)]


@pytest.mark.parametrize("argv", [["--help"], ["bench", "--help"]] + [[c, "--help"] for c in COMMANDS]
                         + [["bench", b, "--help"] for b in BENCHES])
def test_help_renders(argv, capsys):
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 0
    assert "usage: slicer" in capsys.readouterr().out


def test_ctrl_c_ends_with_one_line(monkeypatch, capsys):
    from slicer.orchestrator.commands import load

    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(load, "run", interrupted)
    assert main(["load", "some-run"]) == 130
    cap = capsys.readouterr()
    assert cap.out == "" and cap.err.strip().splitlines() == ["slicer load: interrupted"]


def test_version_flag(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0 and capsys.readouterr().out.startswith("slicer ")


@pytest.mark.parametrize("policy", ["slicer", "all"])
def test_plan_json_to_stdout_is_json_alone(capsys, policy):
    import json

    tiny = Path(__file__).resolve().parents[2] / "examples" / "models" / "slicer-tiny"
    rc = main(["plan", "--model", str(tiny), "--device", "jetson-orin-nano", "--rate-mbps", "20",
               "--latency-ms", "50", "--policy", policy, "--json", "-"])
    cap = capsys.readouterr()
    doc = json.loads(cap.out)  # nothing else on stdout
    plans = doc if isinstance(doc, list) else [doc]
    assert rc in (0, 1) and plans and all("split" in p and "feasible" in p for p in plans)
    assert "model " in cap.err and "budgets:" in cap.err  # the human-readable lines went to stderr
