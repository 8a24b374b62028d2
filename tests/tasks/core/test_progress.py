"""Tests of tasks.core.progress and tasks.prefect.progress: formatting, the tqdm bar, and Prefect progress artifacts (throttled
with a fake clock, and for real inside flow runs on the session's Prefect test server)."""

from __future__ import annotations

import asyncio
import io
import logging
import subprocess
import sys
import types
import uuid
from pathlib import Path
from typing import Any

import pytest

from codecflow.tasks.acquire.download import fetch
from codecflow.tasks.core import progress
from codecflow.tasks.core.progress import (
    TqdmProgress,
    combine,
    format_bytes,
    format_duration,
    format_rate,
    sanitize_artifact_key,
)
from codecflow.tasks.prefect import progress as prefect_progress
from codecflow.tasks.prefect.progress import PrefectProgress

REPO = Path(__file__).resolve().parents[3]


def test_module_is_cheap_to_import() -> None:
    code = "import sys, codecflow.tasks.core.progress; print(sorted({'prefect', 'tqdm'} & set(sys.modules)))"
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "[]"
    assert set(progress.__all__) <= set(dir(progress))


# --------------------------------------------------------------------------------------------
# formatting
# --------------------------------------------------------------------------------------------


def test_format_rate() -> None:
    # 1.2 GB of 35 GB at 45.3 MB/s: 33.8 GB left, 746 s.
    assert format_rate(1_200_000_000, 35_000_000_000, 1_200_000_000 / 45.3e6) == (
        "1.2 GB / 35.0 GB, 45.3 MB/s, ETA 12:26"
    )
    assert format_rate(0, 35_000_000_000, 0.0) == "0 B / 35.0 GB, 0.0 MB/s, ETA ?"
    assert format_rate(5_000_000, None, 1.0) == "5.0 MB / ?, 5.0 MB/s, ETA ?"
    assert format_rate(300_000, 300_000, 0.1) == "300.0 kB / 300.0 kB, 3.0 MB/s, ETA 0:00"
    # A resumed download: the rate counts this session's bytes only.
    assert format_rate(2_000_000_000, 3_050_000_000_000, 10.0, start_bytes=1_000_000_000) == (
        "2.0 GB / 3.0 TB, 100.0 MB/s, ETA 8:28:00"
    )
    with pytest.raises(ValueError, match="done bytes must be >= 0, got -1"):
        format_rate(-1, None, 1.0)


def test_format_bytes_and_duration() -> None:
    assert [format_bytes(n) for n in (0, 999, 1000, 999_949, 999_950, 35 * 10**9)] == [
        "0 B",
        "999 B",
        "1.0 kB",
        "999.9 kB",
        "1.0 MB",
        "35.0 GB",
    ]
    assert [format_duration(s) for s in (0, 59.4, 754, 3600, 100_000, -3)] == [
        "0:00",
        "0:59",
        "12:34",
        "1:00:00",
        "27:46:40",
        "0:00",
    ]


def test_sanitize_artifact_key() -> None:
    assert sanitize_artifact_key("Fetch small.tar") == "fetch-small-tar"
    assert sanitize_artifact_key("--unlab_60k / LARGE--") == "unlab-60k-large"
    with pytest.raises(ValueError, match="progress artifact key '__' has no letter or digit"):
        sanitize_artifact_key("__")


def test_combine_calls_each_in_order() -> None:
    calls: list[tuple[str, int, int | None]] = []
    both = combine(
        lambda d, t: calls.append(("a", d, t)), None, lambda d, t: calls.append(("b", d, t))
    )
    both(5, 10)
    both(10, None)
    assert calls == [("a", 5, 10), ("b", 5, 10), ("a", 10, None), ("b", 10, None)]


# --------------------------------------------------------------------------------------------
# TqdmProgress
# --------------------------------------------------------------------------------------------


def test_tqdm_progress_forced_shows_bytes_rate_and_eta() -> None:
    out = io.StringIO()
    with TqdmProgress("small.tar", file=out, force=True) as bar:
        for done in range(10_000, 300_001, 10_000):
            bar(done, 300_000)
    text = out.getvalue()
    assert "small.tar" in text and "300k/300k" in text and "100%" in text
    assert "B/s" in text and "<" in text  # rate, and elapsed<remaining
    bar.close()  # idempotent


def test_tqdm_progress_is_off_when_not_a_tty() -> None:
    out = io.StringIO()  # isatty() is False
    bar = TqdmProgress("small.tar", file=out)
    assert not bar.enabled
    bar(1, 2)
    bar.close()
    assert out.getvalue() == ""


def test_tqdm_progress_resets_when_a_download_restarts() -> None:
    out = io.StringIO()
    with TqdmProgress("x", file=out, force=True) as bar:
        bar(5000, 10_000)
        bar(1000, 10_000)  # a server that ignored the Range request: from zero again
        bar(10_000, 10_000)
        assert bar._bar.n == 10_000
    assert "10.0k/10.0k" in out.getvalue()


def test_tqdm_progress_with_fetch(tmp_path: Path) -> None:
    src = tmp_path / "src.bin"
    src.write_bytes(b"x" * 250_000)
    out = io.StringIO()
    seen: list[int] = []
    with TqdmProgress("src.bin", file=out, force=True) as bar:
        fetch(
            str(src),
            tmp_path / "dest.bin",
            chunk_size=50_000,
            progress=combine(bar, lambda done, total: seen.append(done)),
        )
    assert seen == [50_000, 100_000, 150_000, 200_000, 250_000]
    assert "250k/250k" in out.getvalue()


# --------------------------------------------------------------------------------------------
# PrefectProgress without a server
# --------------------------------------------------------------------------------------------


def test_prefect_progress_is_a_noop_outside_a_run() -> None:
    reporter = PrefectProgress("Outside a run", "nothing", min_interval_s=0)
    assert reporter.key == "outside-a-run"
    for done in (0, 50, 100):
        reporter(done, 100)
    reporter.close()
    assert reporter.artifact_id is None and not reporter._failed


class FakeArtifacts:
    """Stands in for prefect.artifacts' create/update functions, with a hand-driven clock."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        import prefect.artifacts

        self.now = 1000.0
        self.created: list[dict[str, Any]] = []
        self.updates: list[tuple[float, str]] = []
        monkeypatch.setattr(prefect_progress, "in_prefect_run", lambda: True)
        monkeypatch.setattr(
            prefect_progress, "time", types.SimpleNamespace(monotonic=lambda: self.now)
        )
        monkeypatch.setattr(prefect.artifacts, "create_progress_artifact", self.create)
        monkeypatch.setattr(prefect.artifacts, "update_progress_artifact", self.update)

    def create(self, **kwargs: Any) -> uuid.UUID:
        self.created.append(kwargs)
        return uuid.UUID(int=1)

    def update(self, **kwargs: Any) -> uuid.UUID:
        assert kwargs["artifact_id"] == uuid.UUID(int=1) and kwargs["_sync"] is True
        self.updates.append((kwargs["progress"], kwargs["description"]))
        return kwargs["artifact_id"]


def test_prefect_progress_throttles_updates(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FakeArtifacts(monkeypatch)
    reporter = PrefectProgress("Fetch: small.tar", "small.tar", min_interval_s=2.0)
    reporter(100_000_000, 1_000_000_000)  # creates the artifact at 0 %
    assert len(fake.created) == 1 and fake.created[0]["progress"] == 0.0
    assert fake.created[0]["key"] == "fetch-small-tar"
    assert fake.created[0]["description"].startswith("small.tar: 100.0 MB / 1.0 GB")
    fake.now += 1.0
    reporter(200_000_000, 1_000_000_000)  # within 2 s: held back
    assert fake.updates == []
    fake.now += 1.0
    reporter(300_000_000, 1_000_000_000)  # 2 s after creation: sent
    assert [p for p, _ in fake.updates] == [30.0]
    # 200 MB in 2 s since the first call (which started at 100 MB): 100 MB/s, 700 MB left.
    assert fake.updates[-1][1] == "small.tar: 300.0 MB / 1.0 GB, 100.0 MB/s, ETA 0:07"
    fake.now += 0.5
    reporter(1_000_000_000, 1_000_000_000)  # 100 % is always sent, once
    reporter(1_000_000_000, 1_000_000_000)
    reporter.close()
    assert [p for p, _ in fake.updates] == [30.0, 100.0]
    assert len(fake.created) == 1


def test_prefect_progress_close_sends_the_held_back_state(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FakeArtifacts(monkeypatch)
    reporter = PrefectProgress("k", "stream", min_interval_s=60.0)
    with reporter:
        reporter(10, None)
        fake.now += 1.0
        reporter(20, None)  # unknown total: progress stays 0, the description says how much
    assert fake.updates == [(0.0, "stream: 20 B / ?, 0.0 MB/s, ETA ?")]


def test_prefect_progress_api_failure_is_logged_once_and_ignored(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    fake = FakeArtifacts(monkeypatch)

    def broken(**kwargs: Any) -> uuid.UUID:
        raise RuntimeError("API unreachable")

    import prefect.artifacts

    monkeypatch.setattr(prefect.artifacts, "create_progress_artifact", broken)
    reporter = PrefectProgress("k", "x", min_interval_s=0)
    with caplog.at_level(logging.WARNING, logger="codecflow.tasks.prefect.progress"):
        reporter(1, 2)
        reporter(2, 2)
    assert [r.getMessage() for r in caplog.records] == [
        "progress artifact 'k' disabled: API unreachable"
    ]
    assert fake.updates == []


# --------------------------------------------------------------------------------------------
# PrefectProgress inside real flow runs
# --------------------------------------------------------------------------------------------


def read_progress_artifacts(key: str) -> list[Any]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    with get_client(sync_client=True) as client:
        return client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key]))
        )


STEPS = [(n * 60_000, 300_000) for n in range(1, 6)]


def test_prefect_progress_in_a_flow_run(prefect_api_url: str) -> None:
    from prefect import flow, task
    from prefect.context import get_run_context

    key = f"test-progress-{uuid.uuid4().hex[:8]}"

    @task
    def transfer(key: str) -> None:
        reporter = PrefectProgress(key, "data.bin", min_interval_s=0)
        for done, total in STEPS:
            reporter(done, total)

    @flow
    def transfer_flow(key: str) -> str:
        transfer(key)
        return str(get_run_context().flow_run.id)  # type: ignore[union-attr]

    flow_run_id = transfer_flow(key)
    [artifact] = read_progress_artifacts(key)
    assert artifact.type == "progress" and artifact.data == 100.0
    assert str(artifact.flow_run_id) == flow_run_id and artifact.task_run_id is not None
    assert artifact.description.startswith("data.bin: 300.0 kB / 300.0 kB, ")
    assert artifact.description.endswith("ETA 0:00")


def test_prefect_progress_in_an_async_flow_run(prefect_api_url: str) -> None:
    from prefect import flow

    key = f"test-progress-async-{uuid.uuid4().hex[:8]}"

    @flow
    async def transfer_flow(key: str) -> None:
        # Sync callbacks called from an async flow: prefect must not hand back coroutines.
        reporter = PrefectProgress(key, "data.bin", min_interval_s=0)
        for done, total in STEPS:
            reporter(done, total)
        assert not reporter._failed

    asyncio.run(transfer_flow(key))
    [artifact] = read_progress_artifacts(key)
    assert artifact.data == 100.0 and artifact.task_run_id is None


# --- StepProgress: a line per cadence of a long loop ------------------------------------------


class _Clock:
    """Seconds that the test moves forward (the cadence without sleeping)."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_step_progress_logs_the_first_step_then_every_interval_and_the_last(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = _Clock()
    logger = logging.getLogger("codecflow.test-progress")
    meter = progress.StepProgress(logger, "train-lm", 100, "tokens", 512, every_s=30.0, clock=clock)
    logged = []
    with caplog.at_level(logging.INFO, logger="codecflow.test-progress"):
        for step in range(1, 101):
            clock.now += 1.0  # one step a second
            if meter.update(step, loss=5.0 - step / 100):
                logged.append(step)
    assert logged == [1, 31, 61, 91, 100]
    lines = [r.getMessage() for r in caplog.records]
    assert lines[0] == "train-lm step 1/100 (1%): loss 4.9900, 512 tokens/s, ETA 1:39"
    # 30 steps of 512 tokens in 30 s; 69 steps left at the mean 1 s a step.
    assert lines[1] == "train-lm step 31/100 (31%): loss 4.6900, 512 tokens/s, ETA 1:09"
    assert lines[-1] == "train-lm step 100/100 (100%): loss 4.0000, 512 tokens/s, ETA 0:00"


def test_step_progress_of_a_resumed_run_counts_from_its_first_step(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = _Clock()
    logger = logging.getLogger("codecflow.test-progress")
    meter = progress.StepProgress(
        logger, "train-codec", 400, "samples", 4, start=300, every_s=30.0, clock=clock
    )
    with caplog.at_level(logging.INFO, logger="codecflow.test-progress"):
        clock.now += 0.5
        assert meter.update(301, loss=0.25)
        clock.now += 0.5
        assert not meter.update(302)  # within the interval: silent
    # 8 samples/s over the first step; 99 steps left at 0.5 s each.
    assert [r.getMessage() for r in caplog.records] == [
        "train-codec step 301/400 (75%): loss 0.2500, 8 samples/s, ETA 0:50"
    ]


def test_progress_interval_reads_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(progress.PROGRESS_ENV, raising=False)
    assert progress.progress_interval() == 30.0
    monkeypatch.setenv(progress.PROGRESS_ENV, "5")
    assert progress.progress_interval() == 5.0
    for bad in ("soon", "-1", "nan"):
        monkeypatch.setenv(progress.PROGRESS_ENV, bad)
        with pytest.raises(ValueError, match="CODECFLOW_PROGRESS_SECONDS must be"):
            progress.progress_interval()
