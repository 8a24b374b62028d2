"""`codecflow plan` on every `configs/post-*.yaml` (the real files), each number checked against
arithmetic written out here from the configs and the post's figures, not from `flows.plan`."""

from __future__ import annotations

import json
import math
import re
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml
from helpers import REPO

from codecflow.cli.main import main
from codecflow.schemas.post import POST_LM_PARAMETERS

POST_CONFIGS = sorted((REPO / "configs").glob("post-*.yaml"))
DATASET_JSON = REPO / "tests" / "fixtures" / "records" / "dataset_arrow_only.json"

#: (tokens per second, codebook, bytes per stored token) by tokenizer, from the post: mu-law at
#: 16 kHz, its codec at 125 frames/s x 8 levels, Mimi at 12.5 frames/s x K levels.
RATES: dict[str, tuple[float, int, int]] = {
    "mu-law-256": (16_000.0, 256, 1),
    "mu-law-256-post": (16_000.0, 256, 1),
    "codec:trained@8": (125.0 * 8, 1024, 2),
    "mimi_8_rvq": (12.5 * 8, 2048, 2),
    "mimi_32_rvq": (12.5 * 32, 2048, 2),
    "mimi_31_rvq_nosemantic": (12.5 * 31, 2048, 2),
}


def _plan(capsys: pytest.CaptureFixture[str], *args: str) -> dict[str, Any]:
    assert main(["plan", *args, "--json"]) == 0
    result: dict[str, Any] = json.loads(capsys.readouterr().out)
    return result


def _activations(s: int, b: int, h: int, a: int, v: int, layers: int, flash: bool) -> int:
    """Korthikanti et al. (2022) eq. 1 at bf16 with dropout, 34 s b h + 5 a s^2 b per block, plus
    2 s b h for the fp32 LayerNorm inputs under autocast; flash attention keeps 4 a s b of
    log-sum-exp instead of the s^2 terms. Outside the blocks: mask s b h, 2 x 2 s b h, 4 s b v."""
    block = 34 * s * b * h + 4 * s * b * h + (4 * a * s * b if flash else 5 * a * s * s * b)
    return layers * block + s * b * h + 4 * s * b * h + 4 * s * b * v


@pytest.mark.parametrize("path", POST_CONFIGS, ids=lambda p: p.stem)
def test_every_post_config_is_planned(path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    raw = yaml.safe_load(path.read_text())
    lm, acquire = raw["train_lm"], raw["acquire"]
    plan = _plan(capsys, "--config", str(path))
    budget, data = plan["budget"], plan["data"]
    rate, codebook, token_bytes = RATES[raw["tokenize"]["tokenizer"]]
    # The post's LM: schemas/post.py's nanoGPT count for the vocabulary; wpe is 2 048 x 1 024.
    assert budget["parameters_nanogpt"] == POST_LM_PARAMETERS[codebook]
    total = POST_LM_PARAMETERS[codebook] + 2048 * 1024
    assert budget["parameters_total"] == total
    assert budget["flops_per_token"] == 6 * POST_LM_PARAMETERS[codebook] + 12 * 12 * 16 * 64 * 2048
    tokens_per_step = lm["batch_size"] * 2048 * lm["grad_accum_steps"]
    assert budget["tokens_per_step"] == tokens_per_step
    memory = budget["memory"]
    assert (memory["weights"], memory["gradients"], memory["adamw"]) == (
        4 * total,
        4 * total,
        8 * total,
    )
    assert memory["ddp_buckets"] == 0
    # bf16 copies of the Linear weights: 12 blocks of 12 C^2, and lm_head (tied wte) V x C.
    assert memory["weight_copies"] == 2 * (12 * 12 * 1024**2 + codebook * 1024)
    shape = (2048, lm["batch_size"], 1024, 16, codebook, 12)
    assert memory["activations_flash"] == _activations(*shape, flash=True)
    assert memory["activations_no_flash"] == _activations(*shape, flash=False)
    # The data the pipeline will acquire: target hours, of which 1 - val_fraction train.
    hours, val = acquire["target_hours"], acquire["val_fraction"]
    assert data["train_tokens"] == pytest.approx(hours * (1 - val) * 3600 * rate)
    assert plan["steps_per_epoch"] == pytest.approx(data["train_tokens"] / tokens_per_step)
    assert plan["epochs"] == pytest.approx(lm["steps"] * tokens_per_step / data["train_tokens"])
    assert data["disk_bytes"] == pytest.approx(hours * 3600 * rate * token_bytes)
    reference = 1 if token_bytes == 1 else 4  # the post's .bin: uint8 mu-law, int32 otherwise
    assert data["reference_disk_bytes"] == pytest.approx(hours * 3600 * rate * reference)
    flops = lm["steps"] * tokens_per_step * budget["flops_per_token"]
    assert plan["wall_seconds"] == pytest.approx(flops / (0.4 * 989e12))
    # 1 h shards per split, grouped into at most 1 000 tasks, plus plan and finalize.
    shards = round(hours * (1 - val)) + round(hours * val)
    per_task = math.ceil(shards / 1000)
    assert data["tokenize_tasks"]["shards"] == shards
    assert data["tokenize_task_runs"] == math.ceil(shards / per_task) + 2
    # The download: the Libri-Light archives the source names, at their published sizes
    # (Libri-Light's README: small 35 GB, medium 321 GB, large 3.05 TB), kept and extracted.
    published = {"small": 35e9, "medium": 321e9, "large": 3_050e9}
    archive = published[acquire["source"]]
    download = plan["download"]
    assert download["archives"] == [[f"{acquire['source']}.tar", archive]]
    assert download["keep_archive"] is acquire.get("keep_archive", True)
    assert download["peak_bytes"] == archive * (2 if download["keep_archive"] else 1)


def test_the_table_names_every_figure(capsys: pytest.CaptureFixture[str]) -> None:
    path = REPO / "configs" / "post-mulaw-1000h.yaml"
    assert main(["plan", "--config", str(path)]) == 0
    table = capsys.readouterr().out
    for figure in (
        "151,282,688 (nanoGPT's count",
        "153,379,840 in all",
        "1.21 GFLOP",
        "with flash attention",
        "tokens per step  1,048,576",
        "steps per epoch  54,382",
        "37.1 days at 40% MFU of 989 TFLOP/s x 1 GPU",
        "53.64 GiB (1 B per token",
        "1,002 Prefect task runs",
        "download         medium.tar 321.0 GB",
        "disk for audio   642.0 GB: 321.0 GB of tar + about 321.0 GB extracted",
    ):
        assert figure in table, figure
    assert main(["plan", "--config", str(path), "--set", "acquire.keep_archive=false"]) == 0
    assert "disk for audio   about 321.0 GB extracted (no tar kept)" in capsys.readouterr().out


def test_a_local_archive_and_a_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The demo's own tar has its size on disk; a folder of audio downloads nothing."""
    tar = REPO / "data" / "librilight-tiny" / "librilight-tiny.tar"
    demo = REPO / "configs" / "demo.yaml"
    plan = _plan(capsys, "--config", str(demo), "--set", f"acquire.source={tar}")
    size = tar.stat().st_size
    assert plan["download"]["archives"] == [[tar.name, size]]
    assert plan["download"]["peak_bytes"] == 2 * size
    plan = _plan(capsys, "--config", str(demo), "--set", f"acquire.source={tmp_path}")
    assert plan["download"]["archives"] == [] and plan["download"]["peak_bytes"] == 0
    assert plan["download"]["in_place"] == "audio source, read where it is"


def test_overrides_ranks_and_throughput(capsys: pytest.CaptureFixture[str]) -> None:
    path = str(REPO / "configs" / "post-mimi-8.yaml")
    one = _plan(capsys, "--config", path)
    eight = _plan(
        capsys, "--config", path, "--set", "train_lm.nproc_per_node=8",
        "--set", "train_lm.grad_accum_steps=1", "--mfu", "0.5", "--peak-tflops", "312",
    )  # fmt: skip
    assert eight["budget"]["tokens_per_step"] == one["budget"]["tokens_per_step"]
    assert eight["budget"]["memory"]["ddp_buckets"] == 4 * one["budget"]["parameters_total"]
    assert eight["wall_seconds"] == pytest.approx(one["wall_seconds"] * 0.4 * 989 / (0.5 * 312 * 8))


def test_a_train_lm_config_with_its_dataset(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    dataset = tmp_path / "tokens"
    dataset.mkdir()
    shutil.copy(DATASET_JSON, dataset / "dataset.json")  # mu-law, 378 240 train tokens
    config = tmp_path / "lm.yaml"
    config.write_text(f"dataset: {dataset}\npreset: tiny\nbatch_size: 4\nsteps: 100\n")
    plan = _plan(capsys, "--config", str(config))
    assert plan["kind"] == "train-lm" and plan["data"]["train_tokens"] == 378_240
    assert plan["steps_per_epoch"] == pytest.approx(378_240 / (4 * 128))
    assert plan["data"]["disk_bytes"] == 599_676 and plan["data"]["tokenize_tasks"] is None
    # nanoGPT's count of the tiny preset (2 x 64, biases) for V = 256, by models/flops.py's sum.
    c = 64
    assert plan["budget"]["parameters_nanogpt"] == 2 * (12 * c * c + 13 * c) + 2 * c + 256 * c


def test_a_train_lm_config_before_its_dataset(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = [
        "--set",
        f"dataset={tmp_path / 'none'}",
        "--set",
        "preset=post",
        "--set",
        "batch_size=8",
    ]
    plan = _plan(capsys, *args, "--tokenizer", "mimi_8_rvq", "--hours", "100")
    assert plan["data"]["train_tokens"] == 100 * 3600 * 100
    assert main(["plan", *args]) == 2
    assert "name the tokenizer it will have with --tokenizer" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["--set", "train_lm.preset=huge"],
            r"^error: invalid PipelineConfig in .*: train_lm.preset: ",
        ),
        (
            ["--set", "tokenize.tokenizer=mimi_99_rvq"],
            r"^error: invalid PipelineConfig in .*mimi_99_rvq",
        ),
        (["--mfu", "1.5"], r"^error: --mfu must be in \(0, 1\], got 1.5$"),
        (["--set", "train_lm.level_weights=[1, 2]"], r"^error: level_weights has 2 values"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(
    args: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    path = str(REPO / "configs" / "post-mulaw-1000h.yaml")
    assert main(["plan", "--config", path, *args]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and len(captured.err.strip().splitlines()) == 1
    assert re.search(message, captured.err.strip()), captured.err


def test_a_pipeline_whose_dataset_exists_plans_from_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    dataset = tmp_path / "run" / "tokens" / "mu-law-256"  # the pipeline's folder for it
    dataset.mkdir(parents=True)
    shutil.copy(DATASET_JSON, dataset / "dataset.json")
    path = str(REPO / "configs" / "post-mulaw-1000h.yaml")
    # The fixture is a mu-law-256 dataset: the config is pointed at that tokenizer's folder.
    overrides = ["--set", f"out={tmp_path / 'run'}", "--set", "tokenize.tokenizer=mu-law-256"]
    plan = _plan(capsys, "--config", path, *overrides)
    assert plan["data"]["source"] == f"dataset {dataset}"
    assert plan["data"]["train_tokens"] == 378_240 and plan["data"]["tokenize_tasks"] is None
