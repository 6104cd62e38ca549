"""Shared fixtures. Tests that need ../shared skip cleanly when it is absent."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("SLICER_SHARED", REPO.parent / "shared"))
STORIES260K = SHARED / "fixtures" / "stories260k"


@pytest.fixture(scope="session")
def stories260k_path() -> Path:
    if not (STORIES260K / "config.json").exists():
        pytest.skip(f"fixture {STORIES260K} not present (../shared absent)")
    return STORIES260K
