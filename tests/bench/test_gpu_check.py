"""bench/gpu_check.py in its tiny mode: every section on the CPU, its JSON and its table.

The script runs as a user runs it (a subprocess, each section in a child process of its own); the
checks recompute what the JSON derives (MFU from the FLOPs formula and the given peak, the
extrapolated generation time, throughputs from steps and seconds), so a section that reports
a wrong or empty number fails here.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import torch
import yaml

from codecflow.models.flops import flops_per_token
from codecflow.schemas.configs import TrainLMSettings
from codecflow.tasks.data.lm_windows import model_config

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "bench" / "gpu_check.py"
SECTIONS = {"lm_train_eager", "lm_train_compiled", "generate", "mimi_encode", "codec_train"}
PEAK_TFLOPS = 0.5  # given on the command line: the CPU has no entry in the peak table
ORDERS = ("manifest", "pools-64", "sorted")  # bench/tokenizers_rtf.py's
MEASURE_TOKENS = 400  # of the tiny mode's 1 600: the generation must be extrapolated


def _run(tmp_path: Path, *extra: str) -> tuple[subprocess.CompletedProcess[str], dict[str, Any]]:
    out = tmp_path / "gpu_check.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, str(SCRIPT), "--tiny", "--out", str(out), *extra]
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert out.exists(), result.stderr[-3000:]
    return result, json.loads(out.read_text())


def _positive(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and value > 0


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, dict[str, Any]]:
    extra = ["--peak-tflops", str(PEAK_TFLOPS), "--gen-measure-tokens", str(MEASURE_TOKENS)]
    result, report = _run(tmp_path_factory.mktemp("gpu_check"), *extra)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout, report


def test_every_section_measured(tiny_run: tuple[str, dict[str, Any]]) -> None:
    _, report = tiny_run
    assert report["schema"] == "codecflow.gpu_check/1" and report["mode"] == "tiny"
    assert set(report["sections"]) == SECTIONS
    for name, section in report["sections"].items():
        assert section["status"] == "ok", (name, section.get("reason"))
        assert _positive(section["wall_s"])
    machine = report["machine"]
    assert machine["device"] == "cpu" and machine["device_name"] == "cpu"
    assert machine["peak_bf16_tflops"] == PEAK_TFLOPS and machine["peak_source"] == "--peak-tflops"
    assert machine["torch_threads"] == 1


@pytest.mark.parametrize("name", ["lm_train_eager", "lm_train_compiled"])
def test_lm_training_tokens_per_s_and_mfu(tiny_run: tuple[str, dict[str, Any]], name: str) -> None:
    lm = tiny_run[1]["sections"][name]
    with open(REPO / "configs/tiny/post-mulaw-1000h.yaml") as f:
        settings = TrainLMSettings.model_validate(yaml.safe_load(f)["train_lm"])
    config = model_config(settings, 256)
    assert lm["compile"] is (name == "lm_train_compiled")
    assert lm["compile_backend"] == ("aot_eager" if lm["compile"] else None)
    assert lm["batch"] == settings.batch_size and lm["oom_batches"] == []
    assert lm["tokens_per_step"] == settings.batch_size * config.block_size
    assert isinstance(lm["steps"], int) and lm["steps"] >= 1
    assert all(_positive(lm[k]) for k in ("seconds", "tokens_per_s", "first_step_s", "mfu"))
    assert lm["tokens_per_s"] == pytest.approx(lm["steps"] * lm["tokens_per_step"] / lm["seconds"])
    assert lm["flops_per_token"] == flops_per_token(config)
    assert lm["mfu"] == pytest.approx(lm["tokens_per_s"] * lm["flops_per_token"] / 0.5e12)
    assert lm["precision"] == "float32" and lm["peak_memory_gib"] is None


def test_generation_extrapolated_from_the_tokens_measured(
    tiny_run: tuple[str, dict[str, Any]],
) -> None:
    gen = tiny_run[1]["sections"]["generate"]
    assert gen["target_tokens"] == 1_600 and gen["audio_seconds"] == pytest.approx(0.1)
    # At most the cap; fewer (the probe) only on a machine too loaded for a longer run.
    measured = gen["measured_tokens"]
    assert isinstance(measured, int) and gen["probe_tokens"] <= measured <= MEASURE_TOKENS
    assert gen["extrapolated_from_tokens"] == measured
    assert all(_positive(gen[k]) for k in ("measured_seconds", "seconds_for_target", "x_realtime"))
    scaled = gen["measured_seconds"] * gen["target_tokens"] / measured
    assert gen["seconds_for_target"] == pytest.approx(scaled)
    assert gen["tokens_per_s"] == pytest.approx(measured / gen["measured_seconds"])
    assert gen["x_realtime"] == pytest.approx(gen["audio_seconds"] / gen["seconds_for_target"])


def test_mimi_encode_at_each_batch(tiny_run: tuple[str, dict[str, Any]]) -> None:
    mimi = tiny_run[1]["sections"]["mimi_encode"]
    assert [row["batch"] for row in mimi["batches"]] == [1, 2, 4]
    assert mimi["parameters"] > 50_000_000  # moshi's real architecture, not a stand-in
    for row in mimi["batches"]:
        assert row["status"] == "ok" and row["frames"] == 4  # 0.32 s at 12.5 Hz
        assert _positive(row["seconds"]) and _positive(row["x_realtime"])
        expected = row["batch"] * mimi["audio_seconds_per_item"] / row["seconds"]
        assert row["x_realtime"] == pytest.approx(expected)


def test_mimi_batching_by_order(tiny_run: tuple[str, dict[str, Any]]) -> None:
    """The length-varied set by batch size and order: sorting pads least (recomputed here from
    the set's lengths), and x real time is the set's audio over the seconds."""
    from codecflow.tasks.tokenize.shards import batch_plan, padded_frames

    sys.path.insert(0, str(REPO / "bench"))
    from tokenizers_rtf import length_varied_seconds

    batching = tiny_run[1]["sections"]["mimi_encode"]["batching"]
    assert batching["status"] == "ok" and batching["segments"] == 12
    seconds = length_varied_seconds(12, 0.08, 0.4)
    assert batching["audio_seconds"] == pytest.approx(sum(seconds))
    frames = [max(1, -(-round(s * 24_000) // 1_920)) for s in seconds]  # Mimi: 1 920 per frame
    rows = {(r["batch"], r["order"]): r for r in batching["rows"]}
    assert set(rows) == {(1, "any")} | {(b, o) for b in (2, 4) for o in ORDERS}
    for (batch, order), row in rows.items():
        assert row["x_realtime"] == pytest.approx(sum(seconds) / row["seconds"])
        if order == "sorted":
            assert row["padded_frames"] == padded_frames(frames, batch_plan(frames, batch, 1e9))
    assert rows[(1, "any")]["padded_frames"] == 0
    for batch in (2, 4):
        assert rows[(batch, "sorted")]["padded_frames"] < rows[(batch, "manifest")]["padded_frames"]


def test_codec_training_steps_per_s(tiny_run: tuple[str, dict[str, Any]]) -> None:
    codec = tiny_run[1]["sections"]["codec_train"]
    assert codec["arch"] == "post" and codec["batch"] == 4 and codec["crop_samples"] == 4096
    assert isinstance(codec["steps"], int) and codec["steps"] >= 1
    assert _positive(codec["steps_per_s"]) and _positive(codec["parameters"])
    assert codec["steps_per_s"] == pytest.approx(codec["steps"] / codec["seconds"])
    assert codec["samples_per_s"] == pytest.approx(codec["steps_per_s"] * codec["batch"])


def test_the_table_has_a_row_per_measurement(tiny_run: tuple[str, dict[str, Any]]) -> None:
    stdout, report = tiny_run
    lines = stdout.splitlines()
    assert lines[0].startswith("GPU check (tiny): cpu")
    for label in (
        "LM train, eager",
        "LM train, torch.compile",
        "generate 0.1 s mu-law (KV)",
        "Mimi encode, batch 1",
        "Mimi encode, batch 2",
        "Mimi encode, batch 4",
        "codec train",
    ):
        assert sum(line.startswith(label + " ") for line in lines) == 1, label
    assert "SKIPPED" not in stdout
    assert f"EXTRAPOLATED from {report['sections']['generate']['measured_tokens']:,}" in stdout
    tokens = report["sections"]["lm_train_eager"]["tokens_per_s"]
    assert f"{tokens:,.0f} tokens/s" in stdout


def test_a_section_past_its_budget_is_skipped_and_the_others_kept(tmp_path: Path) -> None:
    # Start-up alone takes longer than 1 s: the child is killed, the next section still runs.
    only = ["--only", "lm_train_compiled", "codec_train", "--budget", "lm_train_compiled=1"]
    result, report = _run(tmp_path, *only)
    assert result.returncode == 1
    skipped = report["sections"]["lm_train_compiled"]
    assert skipped["status"] == "skipped"
    assert skipped["reason"] == "killed past its time budget of 1 s"
    assert report["sections"]["codec_train"]["status"] == "ok"
    row = [line for line in result.stdout.splitlines() if line.startswith("lm_train_compiled ")]
    assert len(row) == 1 and "SKIPPED" in row[0] and skipped["reason"] in row[0]


@pytest.fixture(scope="module")
def gpu_check() -> Iterator[ModuleType]:
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    yield module
    del sys.modules[spec.name]


@pytest.mark.parametrize(
    ("name", "peak"),
    [
        ("NVIDIA H100 80GB HBM3", 989.0),
        ("NVIDIA H100 PCIe", 756.0),
        ("NVIDIA H100 NVL", 835.0),
        ("NVIDIA H200", 989.0),
        ("NVIDIA A100-SXM4-80GB", 312.0),
        ("NVIDIA L40S", 362.0),
        ("NVIDIA L40", 181.0),
        ("NVIDIA L4", 121.0),
        ("NVIDIA GeForce RTX 4090", None),
        ("cpu", None),
    ],
)
def test_peak_table(gpu_check: ModuleType, name: str, peak: float | None) -> None:
    found, source = gpu_check.peak_tflops(name, None)
    assert found == peak
    assert source.startswith("table: " if peak else "no known peak")
    assert gpu_check.peak_tflops(name, 123.0) == (123.0, "--peak-tflops")


def test_out_of_memory_halves_the_batch(gpu_check: ModuleType) -> None:
    ctx = gpu_check.Context(gpu_check.TINY, torch.device("cpu"), deadline=0.0, args=None)
    tried: list[int] = []

    def run(batch: int) -> dict[str, Any]:
        tried.append(batch)
        if batch > 16:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return {"batch": batch}

    assert gpu_check._halving_on_oom(run, 64, ctx) == {"batch": 16, "oom_batches": [64, 32]}
    assert tried == [64, 32, 16]

    def broken(batch: int) -> dict[str, Any]:
        raise ValueError("not a memory problem")

    with pytest.raises(ValueError):  # other errors are the section's, not retried
        gpu_check._halving_on_oom(broken, 64, ctx)
    oom = torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB\nmore")
    assert gpu_check._reason(oom) == "out of memory: CUDA out of memory. Tried to allocate 2.00 GiB"
