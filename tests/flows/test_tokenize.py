"""The tokenize flow under a real Prefect server: Dask writes the same bytes as the default
runner, and a re-run is all cache hits."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from codecflow.flows.tokenize import run_tokenize
from codecflow.schemas.configs import TokenizeConfig


def _files(folder: Path) -> dict[str, str]:
    return {
        p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def test_dask_and_default_runner_write_identical_datasets(
    prefect_api_url: str, tiny_manifest: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PREFECT_API_URL", prefect_api_url)
    monkeypatch.setenv("DASK_TEMPORARY_DIRECTORY", str(tmp_path / "dask-scratch"))  # not in an out
    common = {
        "manifest": str(tiny_manifest),
        "shard_hours": 4.0 / 3600,
        "formats": ["arrow", "webdataset"],
        "max_tasks": 3,
    }
    default = run_tokenize(TokenizeConfig(**common, out=str(tmp_path / "default")))
    dask = run_tokenize(TokenizeConfig(**common, out=str(tmp_path / "dask"), workers=2))
    assert default.fingerprint == dask.fingerprint
    files = _files(tmp_path / "default")
    assert sum(name.endswith(".arrow") for name in files) >= 3
    assert files == _files(tmp_path / "dask")
