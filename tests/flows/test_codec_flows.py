"""train-codec and eval-codec under a real Prefect server, through the `codecflow` CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import REPO


def test_train_then_evaluate_the_codec(
    prefect_api_url: str, tiny_manifest: Path, tmp_path: Path
) -> None:
    env = {**os.environ, "PREFECT_API_URL": prefect_api_url}

    def codecflow(*args: str) -> list[str]:
        result = subprocess.run(
            [sys.executable, "-m", "codecflow", *args],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert result.returncode == 0, result.stderr[-3000:]
        return result.stdout.strip().splitlines()

    out = tmp_path / "codec"
    lines = codecflow(
        "train-codec",
        "--set",
        f"manifest={tiny_manifest}",
        "--set",
        "num_levels=4",
        "--set",
        "steps=12",
        "--set",
        f"out={out}",
        "--set",
        "codebook_size=32",
        "--set",
        "channels=8",
        "--set",
        "latent_dim=8",
        "--set",
        "res_depth=1",
        "--set",
        "crop_seconds=0.256",
        "--set",
        "batch_size=2",
        "--set",
        "device=cpu",
        "--set",
        "checkpoint_every=5",
    )
    assert lines[-1] == f"checkpoint: {out / 'checkpoint'}"
    lines = codecflow(
        "eval-codec",
        "--set",
        f"checkpoint={out / 'checkpoint'}",
        "--set",
        f"manifest={tiny_manifest}",
        "--set",
        f"out={tmp_path / 'eval'}",
        "--set",
        "max_segments=2",
        "--set",
        "n_wavs=1",
        "--set",
        "device=cpu",
    )
    assert lines[-2:] == [
        f"report: {tmp_path / 'eval' / 'index.html'}",
        f"table: {tmp_path / 'eval' / 'levels.json'}",
    ]
    rows = json.loads((tmp_path / "eval" / "levels.json").read_text())
    assert [r["levels"] for r in rows] == [1, 2, 4]
    for row in rows:  # PESQ-WB within P.862.2's range, STOI within 0-1, beside SI-SDR and mel
        assert 1.0 <= row["pesq_wb"] <= 4.65 and 0.0 <= row["stoi"] <= 1.0, row
        assert {"si_sdr_db", "mel_l1", "spectral_loss"} <= set(row)
    # The trained codec beside mu-law on the same held-out segments, through the CLI.
    checkpoint = out / "checkpoint"
    lines = codecflow(
        "compare-codecs",
        "--set",
        f"manifest={tiny_manifest}",
        "--set",
        f"out={tmp_path / 'compare'}",
        "--set",
        f'tokenizers=["mu-law-256", "codec:{checkpoint}@1", "codec:{checkpoint}@4"]',
        "--set",
        "max_segments=2",
        "--set",
        "max_seconds=1",
        "--set",
        "device=cpu",
    )
    assert lines[-2:] == [
        f"report: {tmp_path / 'compare' / 'index.html'}",
        f"table: {tmp_path / 'compare' / 'comparison.json'}",
    ]
    table = json.loads((tmp_path / "compare" / "comparison.json").read_text())
    assert [r["tokenizer"] for r in table["rows"]][1:] == [
        f"codec:{checkpoint}@1",
        f"codec:{checkpoint}@4",
    ]
    for row, levels in zip(table["rows"][1:], (1, 4), strict=True):  # codebook 32: 5 bits
        assert row["num_levels"] == levels
        assert row["bitrate_kbps"] == pytest.approx(levels * 5 * row["frame_rate"] / 1000)
    assert all(r["trained"] for r in table["rows"])
