"""bench/tokenize_throughput.py on one minute of audio: every side runs, and its JSON holds what
the table prints, recomputed here (positive times, rates and ratios from the times, one token
per sample on every side that writes tokens). Speed goals are printed by the script, never
asserted."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "bench" / "tokenize_throughput.py"
WRITERS = ("post (librosa)", "post (emulated)", "ours")
FLOORS = ("floor: decode int16", "floor: decode + table", "floor: decode + numpy mu-law")


def _positive(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and value > 0


@pytest.fixture(scope="module")
def one_minute(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, dict[str, Any]]:
    out = tmp_path_factory.mktemp("bench") / "tokenize.json"
    command = [sys.executable, str(SCRIPT), "--minutes", "1", "--repeats", "1"]
    command += ["--startup-repeats", "1", "--json", str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout, json.loads(out.read_text())


def test_every_side_is_timed_and_writes_one_token_per_sample(
    one_minute: tuple[str, dict[str, Any]],
) -> None:
    stdout, report = one_minute
    assert report["schema"] == "codecflow.tokenize_throughput/1"
    hours = report["audio"]["hours"]
    assert report["audio"]["files"] == 1 and hours == pytest.approx(1 / 60)
    mulaw = report["mulaw"]
    assert set(mulaw) == {*WRITERS, *FLOORS}
    for name, side in mulaw.items():
        assert _positive(side["best_s"]) and side["median_s"] >= side["best_s"], name
        assert side["x_realtime"] == pytest.approx(hours * 3600 / side["best_s"]), name
        assert name in stdout
    for name in WRITERS:
        assert mulaw[name]["tokens"] == 60 * 16_000, name  # mu-law: one token per sample
    assert mulaw["post (librosa)"]["bytes"] == mulaw["post (librosa)"]["tokens"]  # uint8 .bin
    ours = mulaw["ours"]
    assert ours["tokens"] < ours["bytes"] < 1.01 * ours["tokens"]  # uint8 + Arrow's ids, offsets


def test_ratios_and_start_up_are_measured(one_minute: tuple[str, dict[str, Any]]) -> None:
    stdout, report = one_minute
    mulaw, ratios = report["mulaw"], report["ratios"]
    assert set(ratios) == {f"ours_vs_{name}" for name in mulaw if name != "ours"}
    for name in mulaw:
        if name != "ours":
            expected = mulaw[name]["best_s"] / mulaw["ours"]["best_s"]
            assert _positive(ratios[f"ours_vs_{name}"])
            assert ratios[f"ours_vs_{name}"] == pytest.approx(expected), name
    startup = report["startup"]
    assert _positive(startup["ours"]["import_s"]) and _positive(startup["ours"]["plan_s"])
    post = startup["post (librosa)"]
    assert _positive(post["import_s"]) and _positive(post["first_call_s"])
    assert "start-up (fresh processes, best): ours import" in stdout
    assert "the post's librosa path (goal >= 5x)" in stdout


def test_the_cli_is_timed_from_fresh_processes(one_minute: tuple[str, dict[str, Any]]) -> None:
    """`codecflow tokenize` against a running server: its wall (start-up in) and its fixed cost
    on one second of audio; the ratios come from those times and the in-process sides."""
    stdout, report = one_minute
    cli, mulaw = report["cli"], report["mulaw"]
    assert len(cli["runs_s"]) == len(cli["one_second_runs_s"]) == 1
    assert _positive(cli["best_s"]) and _positive(cli["one_second_s"])
    assert cli["best_s"] == min(cli["runs_s"]) and cli["one_second_s"] == min(
        cli["one_second_runs_s"]
    )
    floor = mulaw["floor: decode + table"]["best_s"]
    ratios = cli["ratios"]
    assert ratios["vs_floor_startup_in"] == pytest.approx(floor / cli["best_s"])
    assert ratios["vs_floor_startup_out"] == pytest.approx(floor / mulaw["ours"]["best_s"])
    post = report["startup"]["post (librosa)"]
    fresh = mulaw["post (librosa)"]["best_s"] + post["import_s"] + post["first_call_s"]
    assert ratios["vs_post_startup_in"] == pytest.approx(fresh / cli["best_s"])
    assert "codecflow tokenize from a fresh process" in stdout
    assert "speed with start-up out (ours, goal >= 85 %)" in stdout
