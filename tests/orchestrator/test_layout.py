"""The installed layout: one `slicer` namespace and no generic top-level names; every
package folder listed for the wheel; Ray's private APIs used from one file only."""
from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
TOP = ("codec", "actors", "policies", "orchestrator")


def test_only_the_slicer_namespace_is_importable_from_elsewhere(tmp_path):
    def py(code: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, check=False)

    for name in TOP:
        r = py(f"import {name}")
        assert r.returncode != 0 and "ModuleNotFoundError" in r.stderr, (name, r.stderr[-300:])
    r = py("import slicer.codec, slicer.actors, slicer.policies, slicer.orchestrator\n"
           "from slicer.codec import CodecConfig, encode, decode, predict_bytes, CodecError\n"
           "print(slicer.codec.__file__)")
    assert r.returncode == 0, r.stderr[-500:]
    assert r.stdout.strip() == str(REPO / "codec" / "__init__.py")


def test_every_package_folder_is_in_the_wheel():
    cfg = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(cfg["packages"])
    found = {"slicer." + ".".join(p.parent.relative_to(REPO).parts)
             for top in TOP for p in (REPO / top).rglob("__init__.py") if "__pycache__" not in p.parts}
    assert listed == found, (sorted(found - listed), sorted(listed - found))
    assert {cfg["package-dir"][f"slicer.{t}"] for t in TOP} == set(TOP)


def test_ray_private_apis_only_in_the_quarantine_file():
    private = re.compile(r"\bray\.(_private|_raylet|_common|core\.generated)\b")
    offenders = []
    for top in TOP:
        for p in (REPO / top).rglob("*.py"):
            if p == REPO / "orchestrator" / "cluster" / "_ray.py":
                continue
            for i, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1):
                if private.search(line) and re.match(r"\s*(from|import)\s", line):
                    offenders.append(f"{p.relative_to(REPO)}:{i}: {line.strip()}")
    assert not offenders, offenders
