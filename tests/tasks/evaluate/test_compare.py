"""compare-codecs (`tasks.evaluate.compare`): mu-law, an untrained codec preset at 2 levels and
Mimi with random weights (from a Hub cache this test lays out: no network) on the tiny
corpus's held-out segments; one table of finite numbers, one plot, one player per row."""

from __future__ import annotations

import json
import logging
import math
import re
from pathlib import Path

import pytest
import soundfile as sf
import torch
from moshi.models.loaders import get_mimi
from safetensors.torch import save_file

from codecflow.schemas.configs import CompareCodecsSettings
from codecflow.tasks.core.progress import PROGRESS_ENV
from codecflow.tasks.data.records import CodecComparison
from codecflow.tasks.evaluate.compare import compare_codecs
from codecflow.tasks.loaders import MIMI_FILE, MIMI_REPO

NAMES = ["mu-law-256", "codec:rvq-8@2", "mimi_8_rvq"]


@pytest.fixture(scope="module")
def hub_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Mimi's file with random weights (`get_mimi(None)`, codebooks given values), laid out as
    huggingface_hub lays out its cache (as tests/tasks/test_loaders.py does)."""
    with torch.random.fork_rng():
        torch.manual_seed(1)
        state = get_mimi(None, device="cpu", num_codebooks=8).state_dict()
    generator = torch.Generator().manual_seed(2)
    for key, value in state.items():
        if key.endswith("embedding_sum"):  # zeros when untrained: every code would be 0
            state[key] = torch.randn(value.shape, generator=generator)
    cache = tmp_path_factory.mktemp("hf") / "hub"
    repo = cache / f"models--{MIMI_REPO.replace('/', '--')}"
    snapshot = repo / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in state.items()}, str(snapshot / MIMI_FILE))
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0" * 40)
    return cache


@pytest.fixture
def offline_mimi(hub_cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_CACHE", str(hub_cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def _settings() -> CompareCodecsSettings:
    return CompareCodecsSettings(tokenizers=NAMES, max_segments=2, max_seconds=1.0, device="cpu")


def test_three_tokenizers_on_the_same_segments(
    tiny_manifest: Path,
    tmp_path: Path,
    offline_mimi: None,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    out = tmp_path / "compare"
    monkeypatch.setenv(PROGRESS_ENV, "0")  # a line per segment: the cadence is training's
    with caplog.at_level(logging.INFO, logger="codecflow.compare-codecs"):
        record = compare_codecs(str(tiny_manifest), out, _settings())
    lines = [r.getMessage() for r in caplog.records if r.name == "codecflow.compare-codecs"]
    assert lines[0] == "compare-codecs: 3 tokenizers, each on 2 segments (2.0 s of audio)"
    done = [int(re.match(r"compare-codecs segment (\d+)/6 ", x)[1]) for x in lines[1:]]  # type: ignore[index]
    assert done == [1, 2, 3, 4, 5, 6] and "ETA" in lines[-1]
    assert record.tokenizers == tuple(NAMES) and record.table == out / "comparison.json"
    table = CodecComparison.read(out / "comparison.json")
    assert len(table.segments) == 2 and table.audio_seconds == pytest.approx(2.0)
    rows = {r.tokenizer: r for r in table.rows}
    for row in table.rows:
        numbers = row.model_dump(exclude={"tokenizer", "trained", "audio", "pesq_wb"})
        assert all(math.isfinite(v) for v in numbers.values()), row
        assert row.encode_x_realtime > 0 and row.decode_x_realtime > 0
        audio, rate = sf.read(out / row.audio)
        assert rate == row.sample_rate and abs(audio.size / rate - 1.0) < 0.1
    # The rates follow from the names: 8 bits x 16 kHz; 2 x 10 bits x 125 Hz; 8 x 11 bits x 12.5 Hz.
    assert (
        rows["mu-law-256"].bitrate_kbps == 128.0 and rows["mu-law-256"].tokens_per_second == 16_000
    )
    assert rows["codec:rvq-8@2"].bitrate_kbps == pytest.approx(2.5)
    assert rows["mimi_8_rvq"].bitrate_kbps == pytest.approx(1.1)
    assert rows["mimi_8_rvq"].tokens_per_second == 100
    # mu-law keeps the waveform; untrained codecs do not (nor does their speech stay intelligible).
    assert rows["mu-law-256"].si_sdr_db > 20 and rows["mu-law-256"].stoi > 0.95
    assert rows["mu-law-256"].pesq_wb is not None and rows["mu-law-256"].pesq_wb > 2.0
    assert rows["codec:rvq-8@2"].si_sdr_db < 5 and not rows["codec:rvq-8@2"].trained
    assert (out / "bitrate_quality.png").read_bytes()[:4] == b"\x89PNG"
    page = (out / "index.html").read_text()
    assert page.count("<audio ") == 1 + len(NAMES)  # the original, then one player per row
    assert "PESQ-WB" in page and "(untrained)" in page and 'class="sortable"' in page
    # Committed: the same identity returns the table without computing (its bytes unchanged).
    before = (out / "comparison.json").read_bytes()
    again = compare_codecs(str(tiny_manifest), out, _settings())
    assert again == record and (out / "comparison.json").read_bytes() == before
    assert json.loads(before)["identity"]["weights"]["codec:rvq-8@2"] == "untrained preset"
