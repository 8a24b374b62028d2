"""Shared fixtures: an isolated PREFECT_HOME, one Prefect test server per session, and the tiny
corpus carried through each stage once (acquire -> tokenize -> train), reused by later tests."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

# Before anything imports prefect: nothing a test does may touch ~/.prefect or the demo's cache.
os.environ["PREFECT_HOME"] = tempfile.mkdtemp(prefix="codecflow-tests-prefect-")
# Nor the user's shard cache (~/.cache/codecflow): remote datasets are fetched into a temporary one.
os.environ["CODECFLOW_CACHE"] = tempfile.mkdtemp(prefix="codecflow-tests-cache-")
# Nor Hugging Face datasets' cache (tests/tasks/data/test_hf_interop.py; read when `datasets` is
# imported), which never goes online here.
os.environ["HF_DATASETS_CACHE"] = tempfile.mkdtemp(prefix="codecflow-tests-hf-datasets-")
os.environ["HF_DATASETS_OFFLINE"] = "1"

from helpers import TINY_TAR, tiny_tar_md5  # noqa: E402


@pytest.fixture(scope="session")
def prefect_api_url() -> Iterator[str]:
    """A Prefect server for the whole session; its URL for subprocesses (CLI runs)."""
    from prefect.settings import PREFECT_API_URL
    from prefect.testing.utilities import prefect_test_harness

    # The harness has its own 30 s start-up limit, too short on 2 cores: None waits as needed.
    with prefect_test_harness(server_startup_timeout=None):
        yield str(PREFECT_API_URL.value())


@pytest.fixture(scope="session")
def tiny_manifest(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The embedded corpus fetched, extracted and cut into 5 s segments (plain functions)."""
    from codecflow.tasks.acquire.download import fetch
    from codecflow.tasks.acquire.extract import extract_tar_safely
    from codecflow.tasks.acquire.manifest import build_segment_manifest

    root = tmp_path_factory.mktemp("acquire")
    fetched = fetch(str(TINY_TAR), root / "download" / TINY_TAR.name, tiny_tar_md5())
    extract_tar_safely(fetched.path, str(root / "librilight" / "librilight-tiny"))
    record = build_segment_manifest(
        str(root), ["librilight-tiny"], target_len_sec=5.0, val_fraction=0.2, seed=0
    )
    return Path(record.path)


@pytest.fixture(scope="session")
def tiny_dataset(tiny_manifest: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny corpus as a mu-law token dataset."""
    from codecflow.schemas.configs import TokenizeSettings
    from codecflow.tasks.tokenize.finalize import tokenize_manifest

    out = tmp_path_factory.mktemp("tokens") / "mulaw"
    return tokenize_manifest(tiny_manifest, out, TokenizeSettings()).path


@pytest.fixture(scope="session")
def tiny_lm_settings() -> object:
    from codecflow.schemas.configs import TrainLMSettings

    return TrainLMSettings(
        n_layer=2,
        n_head=2,
        n_embd=32,
        block_size=64,
        batch_size=8,
        steps=40,
        warmup_steps=5,
        eval_batches=2,
        device="cpu",
    )


@pytest.fixture(scope="session")
def tiny_checkpoint(
    tiny_dataset: Path, tiny_lm_settings: object, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """A tiny GPT trained for a few steps on the tiny dataset."""
    from codecflow.tasks.train.lm import train_lm

    out = tmp_path_factory.mktemp("lm")
    return train_lm(tiny_dataset, out, tiny_lm_settings).path  # type: ignore[arg-type]


@pytest.fixture
def tracking_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An isolated HOME and W&B environment for a test that tracks (`log_to`): no API key, no
    ~/.netrc, W&B offline and silent, its cache and settings under `tmp_path`; nothing goes to
    the network or to the user's home."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    for name in ("WANDB_API_KEY", "WANDB_BASE_URL", "WANDB_PROJECT", "WANDB_ENTITY", "NETRC"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    for name, folder in (("DIR", "dir"), ("CACHE_DIR", "cache"), ("CONFIG_DIR", "config")):
        monkeypatch.setenv(f"WANDB_{name}", str(tmp_path / "wandb-home" / folder))
    monkeypatch.setenv("WANDB_DATA_DIR", str(tmp_path / "wandb-home" / "data"))
    return home


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    """A moto S3 server on 127.0.0.1 for the session; AWS_ENDPOINT_URL points at it."""
    from s3_server import moto_s3

    with moto_s3() as endpoint:
        yield endpoint


@pytest.fixture
def s3_bucket(s3_endpoint: str) -> str:
    """A fresh, empty bucket; returns its s3:// URL."""
    import uuid

    import s3fs

    name = f"test-{uuid.uuid4().hex[:12]}"
    fs = s3fs.S3FileSystem(skip_instance_cache=True)
    fs.mkdir(name)
    return f"s3://{name}"


#: The tiers, by folder or file (`make test` runs them all; `make test-fast` leaves out every
#: tier, which is what `slow` marks):
#: - `ops`: real servers and workers (Prefect, the files server, Chromium);
#: - `e2e`: whole flows, the CLI as a subprocess, the README's commands, the wheel, the benches;
#: - `cluster`: separate Dask scheduler and worker processes, a real Slurm;
#: - `ddp`: several torchrun ranks (gloo on the CPU).
_TIERS: dict[str, tuple[str, ...]] = {
    "ops": ("tests/ops/",),
    "e2e": ("tests/flows/", "tests/bench/", "tests/test_signals.py", "tests/test_packaging.py",
            "tests/test_readme.py", "tests/test_cli.py"),
    "cluster": ("tests/flows/test_dask_cluster.py", "tests/ops/test_slurm.py"),
    "ddp": ("tests/flows/test_post_torchrun.py", "tests/tasks/train/test_codec_ddp.py",
            "tests/tasks/train/test_lm_worker.py"),
}  # fmt: skip


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    root = Path(__file__).parent.parent
    for item in items:
        path = Path(item.path).relative_to(root).as_posix()
        tiers = [name for name, prefixes in _TIERS.items() if path.startswith(prefixes)]
        for name in tiers:
            item.add_marker(getattr(pytest.mark, name))
        if tiers:
            item.add_marker(pytest.mark.slow)
