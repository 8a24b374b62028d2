"""bench/gpu_check.py in its tiny mode: every section on the CPU, its JSON and its table.

The script runs as a user runs it (a subprocess, each section in a child process of its own); the
checks recompute what the JSON derives (MFU from the FLOPs formula and the given peak, the
extrapolated generation time, throughputs from steps and seconds), so a section that reports
a wrong or empty number fails here.
"""

from __future__ import annotations

import copy
import importlib.util
import json
import os
import subprocess
import sys
import time
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


def _check_variant(gen: dict[str, Any], v: dict[str, Any]) -> None:
    """A decode variant has all its numbers, consistent with each other, or a reason."""
    if v["status"] != "ok":
        assert v["status"] in ("not run", "skipped") and v["reason"], v
        return
    assert gen["target_tokens"] == 1_600 and gen["audio_seconds"] == pytest.approx(0.1)
    # At most the cap; fewer (the probe) only on a machine too loaded for a longer run.
    measured = v["measured_tokens"]
    assert isinstance(measured, int) and v["probe_tokens"] <= measured <= MEASURE_TOKENS
    assert v["extrapolated_from_tokens"] == measured
    for key in ("measured_seconds", "seconds_for_target", "x_realtime", "speedup_vs_eager"):
        assert _positive(v[key]), (v["decode"], key, v.get(key))
    scaled = v["measured_seconds"] * gen["target_tokens"] / measured
    assert v["seconds_for_target"] == pytest.approx(scaled)
    assert v["tokens_per_s"] == pytest.approx(measured / v["measured_seconds"])
    assert v["x_realtime"] == pytest.approx(gen["audio_seconds"] / v["seconds_for_target"])
    eager = gen["variants"][0]
    expected = eager["seconds_for_target"] / v["seconds_for_target"]
    assert v["speedup_vs_eager"] == pytest.approx(expected)


def test_generation_by_decode_variant(tiny_run: tuple[str, dict[str, Any]]) -> None:
    """Eager and torch.compile measured (extrapolated from the tokens measured), CUDA graphs
    not run on the CPU, with the reason and without a number."""
    gen = tiny_run[1]["sections"]["generate"]
    variants = gen["variants"]
    assert [v["decode"] for v in variants] == ["eager", "cuda_graph", "compile"]
    for v in variants:
        _check_variant(gen, v)
    eager, graph, compiled = variants
    assert eager["status"] == compiled["status"] == "ok"
    assert graph == {"decode": "cuda_graph", "status": "not run", "reason": "needs CUDA"}
    assert eager["speedup_vs_eager"] == 1.0
    assert eager["setup_seconds"] is None and eager["compile_backend"] is None
    assert eager["max_logprob_diff_vs_eager"] is None
    assert compiled["compile_backend"] == "aot_eager" and compiled["compile_mode"] == "default"
    assert _positive(compiled["setup_seconds"]) and _positive(compiled["setup_seconds_per_call"])
    # The static step computes what eager does: the same log-probabilities over a slide.
    assert gen["check_tokens"] == 128 + 64
    assert 0.0 <= compiled["max_logprob_diff_vs_eager"] < 1e-4


def test_a_variant_without_numbers_needs_a_reason(gpu_check: ModuleType) -> None:
    gen: dict[str, Any] = {"target_tokens": 1_600, "audio_seconds": 0.1, "variants": []}
    numbers = {"probe_tokens": 256, "measured_tokens": 400, "extrapolated_from_tokens": 400}
    with pytest.raises(AssertionError):  # "ok" without its seconds
        _check_variant(
            gen, {"decode": "compile", "status": "ok", **numbers, "measured_seconds": None}
        )
    with pytest.raises(AssertionError):
        _check_variant(gen, {"decode": "compile", "status": "not run", "reason": ""})
    # A variant that failed fails the run (exit status 1); one without CUDA on the CPU does not.
    report: dict[str, Any] = {
        "sections": {"generate": {"status": "ok", "variants": [{"status": "not run"}]}}
    }
    assert gpu_check.all_ok(report)
    report["sections"]["generate"]["variants"].append({"status": "skipped", "reason": "boom"})
    assert not gpu_check.all_ok(report)


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
        "generate 0.1 s mu-law (KV), eager",
        "generate 0.1 s mu-law (KV), CUDA graph",
        "generate 0.1 s mu-law (KV), torch.compile",
        "Mimi encode, batch 1",
        "Mimi encode, batch 2",
        "Mimi encode, batch 4",
        "codec train",
    ):
        assert sum(line.startswith(label + " ") for line in lines) == 1, label
    assert "SKIPPED" not in stdout
    gen = report["sections"]["generate"]
    eager, _, compiled = gen["variants"]
    rows = {
        decode: next(line for line in lines if line.startswith(f"generate 0.1 s mu-law (KV), {label} "))
        for decode, label in (("eager", "eager"), ("cuda_graph", "CUDA graph"), ("compile", "torch.compile"))
    }  # fmt: skip
    assert "NOT RUN" in rows["cuda_graph"] and "needs CUDA" in rows["cuda_graph"]
    for variant in (eager, compiled):
        row = rows[variant["decode"]]
        assert f"EXTRAPOLATED from {variant['measured_tokens']:,}" in row
        assert f"{variant['tokens_per_s']:,.0f} tokens/s" in row
    assert f"{compiled['speedup_vs_eager']:.2f}x eager" in rows["compile"]
    assert f"compile aot_eager {compiled['setup_seconds']:.1f} s once" in rows["compile"]
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


def test_generate_rows_of_a_cuda_report(
    gpu_check: ModuleType, tiny_run: tuple[str, dict[str, Any]]
) -> None:
    """What a GPU run prints for CUDA graphs (not run here), and for a run of all the tokens."""
    gen = copy.deepcopy(tiny_run[1]["sections"]["generate"])
    eager, _, compiled = gen["variants"]
    graph = {**compiled, "decode": "cuda_graph", "compile_backend": None, "setup_seconds": 0.04}
    gen["variants"][1] = graph
    eager["extrapolated_from_tokens"] = None
    rows = gpu_check._generate_rows(gen)
    assert [row[0] for row in rows] == [
        f"generate 0.1 s mu-law (KV), {label}" for label in ("eager", "CUDA graph", "torch.compile")
    ]
    assert "measured: all 1,600 tokens (the post: 30 min on an H100, no cache)" in rows[0][2]
    assert f"{graph['speedup_vs_eager']:.2f}x eager, capture 0.04 s" in rows[1][2]
    assert "EXTRAPOLATED" in rows[1][2] and "max |logprob - eager's|" in rows[1][2]


def test_generate_records_each_variant_before_the_next(
    gpu_check: ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """In process: what the parent reads if the section is killed (or crashes) during a variant
    keeps the variants before it; a variant that fails is recorded with its reason."""
    out = tmp_path / "section.json"
    argv = ["--tiny", "--gen-measure-tokens", "300", "--section-out", str(out)]
    args = gpu_check._parser().parse_args(argv)
    ctx = gpu_check.Context(gpu_check.TINY, torch.device("cpu"), time.time() + 60, args)
    seen: dict[str, dict[str, Any]] = {}
    measure = gpu_check._generate_variant

    def spy(ctx: Any, model: Any, prompt: Any, decode: str, deadline: float) -> dict[str, Any]:
        seen[decode] = json.loads(out.read_text())
        if decode == "compile":
            raise RuntimeError("the compile failed")
        return measure(ctx, model, prompt, decode, deadline)

    monkeypatch.setattr(gpu_check, "_generate_variant", spy)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the section's child process (2 threads crawl on a busy CPU)
    try:
        result = gpu_check.generate_audio(ctx)
    finally:
        torch.set_num_threads(threads)
    statuses = {d: [v["status"] for v in seen[d]["variants"]] for d in seen}
    assert statuses == {
        "eager": ["skipped", "not run", "skipped"],
        "compile": ["ok", "not run", "skipped"],
    }
    assert seen["compile"]["variants"][2]["reason"] == gpu_check.UNFINISHED
    assert seen["compile"]["variants"][0] == result["variants"][0]
    assert result["variants"][2] == {
        "decode": "compile",
        "status": "skipped",
        "reason": "RuntimeError: the compile failed",
    }
    assert not gpu_check.all_ok({"sections": {"generate": {"status": "ok", **result}}})


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
