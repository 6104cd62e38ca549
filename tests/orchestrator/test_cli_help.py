"""Every command's and benchmark's --help renders (argparse formats help strings)."""
from __future__ import annotations

import pkgutil

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
