"""Each evaluation test gets its own machine-local cache: the registry of committed reports
(`tasks.evaluate.reuse`) would otherwise hand one test the report another test computed."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(autouse=True)
def own_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    cache = tmp_path / "cache"
    monkeypatch.setenv("CODECFLOW_CACHE", str(cache))
    return cache
