"""The post's experiments as pipeline configs: `configs/post-*.yaml` (full size) and their tiny
twins `configs/tiny/post-*.yaml` (the embedded corpus, seconds on a CPU).

Every config validates as the CLI reads it; each full-size preset runs the post's setup; each twin
keeps its preset's experiment variables; each twin's whole pipeline runs end to end under Prefect
(Mimi from a local Hugging Face cache of random weights: no network); a `codec:trained` reference
without a `train_codec` section, and the reverse, fail in one clear line.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
from helpers import REPO, TINY_TAR, FlowRunWindow, tiny_tar_md5
from pydantic import ValidationError

from codecflow.cli.config import CliError, apply_override, load_config
from codecflow.flows.pipeline import PipelineRecord, pipeline_flow, resolve_tokenizer
from codecflow.models.presets import GPT_PRESETS
from codecflow.schemas.configs import (
    PipelineConfig,
    TrainCodecSettings,
    TrainLMSettings,
)
from codecflow.schemas.post import POST_CODEC, POST_LM_RECIPES
from codecflow.schemas.tokenizers import TokenizerName, parse_tokenizer_name

CONFIGS = REPO / "configs"
TINY = CONFIGS / "tiny"


@dataclass(frozen=True)
class Experiment:
    """What one of the post's experiments varies, and the data it ran on."""

    source: str
    target_hours: float
    tokenizer: str
    num_levels: int  # levels of the token dataset
    level_weights: list[float] | None = None
    level_weights_normalized: bool = True
    codec_levels: int | None = None  # train_codec.num_levels (None: no codec stage)
    recipe: str = "mimi"  # schemas/post.py POST_LM_RECIPES key: the reference config it follows


EXPERIMENTS: dict[str, Experiment] = {
    "post-mulaw-1000h": Experiment("medium", 1000, "mu-law-256-post", 1, recipe="mulaw"),
    "post-codec-rvq8-10000h": Experiment(
        "large", 10000, "codec:trained@8", 8, codec_levels=8, recipe="codec"
    ),
    "post-mimi-8": Experiment("large", 10000, "mimi_8_rvq", 8),
    "post-mimi-32": Experiment("large", 10000, "mimi_32_rvq", 32),
    "post-mimi-31-nosemantic": Experiment("large", 10000, "mimi_31_rvq_nosemantic", 31),
    "post-mimi-8-semantic-weighted": Experiment(
        # config/train_librilight_1e4h.py token_depth_weights, not normalised (issue 24, J).
        "large",
        10000,
        "mimi_8_rvq",
        8,
        [10.0] + [0.1] * 7,
        level_weights_normalized=False,
    ),
}
NAMES = sorted(EXPERIMENTS)


def _load(path: Path) -> PipelineConfig:
    """A config as `codecflow pipeline --config PATH` reads it."""
    cfg = load_config(PipelineConfig, str(path), [])
    assert isinstance(cfg, PipelineConfig)
    return cfg


def _variables(cfg: PipelineConfig) -> dict[str, Any]:
    """The experiment variables: what a tiny twin must keep from its full-size preset."""
    codec = cfg.train_codec
    return {
        "tokenizer": cfg.tokenize.tokenizer,
        "layout": cfg.train_lm.layout,
        "level_weights": cfg.train_lm.level_weights,
        "level_weights_normalized": cfg.train_lm.level_weights_normalized,
        "codec": None if codec is None else (codec.num_levels, codec.codebook_size, codec.n_blocks),
    }


@pytest.mark.parametrize(
    "path",
    sorted(CONFIGS.glob("*.yaml")) + sorted(TINY.glob("*.yaml")),
    ids=lambda p: p.relative_to(CONFIGS).as_posix(),
)
def test_every_config_validates(path: Path) -> None:
    _load(path)


def test_each_experiment_has_a_preset_and_a_tiny_twin() -> None:
    assert sorted(p.stem for p in CONFIGS.glob("post-*.yaml")) == NAMES
    assert sorted(p.stem for p in TINY.glob("*.yaml")) == NAMES


@pytest.mark.parametrize("name", NAMES)
def test_full_size_preset_runs_the_posts_setup(name: str) -> None:
    cfg, want = _load(CONFIGS / f"{name}.yaml"), EXPERIMENTS[name]
    text = (CONFIGS / f"{name}.yaml").read_text()
    assert text.startswith("# ") and "What the post found" in text and "# Cost" in text
    assert f"--config configs/{name}.yaml" in text
    assert cfg.out == f"runs/{name}"
    assert (cfg.acquire.source, cfg.acquire.target_hours) == (want.source, want.target_hours)
    assert cfg.tokenize.tokenizer == want.tokenizer
    assert cfg.train_lm.layout == "flatten" and cfg.train_lm.level_weights == want.level_weights
    assert cfg.train_lm.level_weights_normalized == want.level_weights_normalized
    # The post's LM (models/presets.py "post"), 1 M tokens per step as its config.
    lm = cfg.train_lm
    post = GPT_PRESETS["post"]
    assert lm.preset == "post" or (lm.n_layer, lm.n_head, lm.n_embd, lm.block_size) == (
        post["n_layer"],
        post["n_head"],
        post["n_embd"],
        post["block_size"],
    )
    _assert_lm_follows_the_table(lm, want.recipe)
    if want.codec_levels is None:
        assert cfg.train_codec is None
    else:
        assert cfg.train_codec is not None
        codec = cfg.train_codec
        assert (codec.num_levels, codec.codebook_size) == (want.codec_levels, 1024)
        _assert_codec_follows_the_table(codec)


def _assert_lm_follows_the_table(lm: TrainLMSettings, recipe_name: str) -> None:
    """The YAML's train_lm section against schemas/post.py's recipe (the post's config file)."""
    recipe = POST_LM_RECIPES[recipe_name]
    got = {
        "learning_rate": lm.learning_rate,
        "min_lr": lm.learning_rate * lm.min_lr_ratio,
        "batch_size": lm.batch_size * lm.nproc_per_node,
        "grad_accum_steps": lm.grad_accum_steps,
        "block_size": GPT_PRESETS["post"]["block_size"] if lm.preset == "post" else lm.block_size,
        "beta2": lm.beta2,
        "dropout": lm.dropout,
        "weight_decay": lm.weight_decay,
        "grad_clip": lm.grad_clip,
        "warmup_steps": lm.warmup_steps,
        "steps": lm.steps,
        "lr_decay_steps": lm.lr_decay_steps or lm.steps,
    }
    want = {k: getattr(recipe, k) for k in got}
    assert got == pytest.approx(want), recipe.config
    assert recipe.beta1 == 0.9  # tasks/train_lm.py's AdamW beta1


def _assert_codec_follows_the_table(codec: TrainCodecSettings) -> None:
    """The YAML's train_codec section against schemas/post.py's POST_CODEC (train_codec.py)."""
    got = {
        "channels": codec.channels,
        "n_blocks": codec.n_blocks,
        "num_levels": codec.num_levels,  # POST_CODEC.num_levels
        "codebook_size": codec.codebook_size,
        "update_speed": codec.update_speed,
        "batch_size": codec.batch_size,
        "crop_samples": round(codec.crop_seconds * POST_CODEC.sample_rate),
        "learning_rate": codec.learning_rate,
        "min_lr": codec.learning_rate * codec.min_lr_ratio,
        "warmup_steps": codec.warmup_steps,
        "steps": codec.steps,
        "weight_decay": codec.weight_decay,
        "grad_clip": codec.grad_clip,
    }
    assert got == pytest.approx({k: getattr(POST_CODEC, k) for k in got})
    recipe = ("spectral_loss", "commitment", "codebooks", "input_audio")  # issue 24, rows B-E
    assert {k: getattr(codec, k) for k in recipe} == {k: getattr(POST_CODEC, k) for k in recipe}
    assert codec.latent_dim == POST_CODEC.channels  # codec.py: the latents are the last stage
    assert not codec.quantizer_dropout  # train_codec.py quantizes with all levels every step


@pytest.mark.parametrize("name", NAMES)
def test_tiny_twin_keeps_the_experiment_variables(name: str) -> None:
    full, tiny = _load(CONFIGS / f"{name}.yaml"), _load(TINY / f"{name}.yaml")
    assert _variables(tiny) == _variables(full)
    assert tiny.out == f"runs/tiny/{name}"
    assert (REPO / tiny.acquire.source).resolve() == TINY_TAR
    assert tiny.acquire.md5 == tiny_tar_md5()


# --- codec:trained ------------------------------------------------------------------------------


def test_trained_codec_names_fit_the_tokenizer_grammar() -> None:
    assert parse_tokenizer_name("codec:trained") == TokenizerName("codec", None, "trained")
    assert parse_tokenizer_name("codec:trained@8") == TokenizerName("codec", 8, "trained")
    assert PipelineConfig.names_trained_codec("codec:trained@8")
    assert not PipelineConfig.names_trained_codec("codec:trained-2@8")
    assert not PipelineConfig.names_trained_codec("codec:trained@x")  # malformed: not ours
    ckpt = Path("runs/x/codec/checkpoint")
    assert resolve_tokenizer("codec:trained@8", ckpt) == "codec:runs/x/codec/checkpoint@8"
    assert resolve_tokenizer("codec:trained", ckpt) == "codec:runs/x/codec/checkpoint"
    assert resolve_tokenizer("mimi_8_rvq", None) == "mimi_8_rvq"
    assert resolve_tokenizer("codec:other/ckpt@2", None) == "codec:other/ckpt@2"


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            ["tokenize.tokenizer=codec:trained@8"],
            "tokenize.tokenizer 'codec:trained@8' names the codec this pipeline trains, but there "
            "is no train_codec section",
        ),
        (
            ["train_codec.num_levels=8", "tokenize.tokenizer=mimi_8_rvq"],
            "train_codec is set, but tokenize.tokenizer 'mimi_8_rvq' does not use the codec it "
            "trains",
        ),
        (
            ["train_codec.num_levels=4", "tokenize.tokenizer=codec:trained@8"],
            "tokenize.tokenizer 'codec:trained@8' asks for 8 levels, but train_codec.num_levels "
            "is 4",
        ),
        (  # `levels`, the field's old name, is an alias
            ["train_codec.levels=4", "tokenize.tokenizer=codec:trained@8"],
            "tokenize.tokenizer 'codec:trained@8' asks for 8 levels, but train_codec.num_levels "
            "is 4",
        ),
        (
            ["train_codec.num_levels=4", "tokenize.tokenizer=codec:trained", "out=runs/a@b"],
            "out 'runs/a@b' must not contain '@' with train_codec",
        ),
    ],
)
def test_trained_codec_mismatches_are_one_clear_line(overrides: list[str], message: str) -> None:
    with pytest.raises(CliError) as info:
        load_config(PipelineConfig, None, overrides)
    line = str(info.value)
    assert "\n" not in line and line.startswith("invalid PipelineConfig: ")
    assert message in line
    # Validated in Python, the error is the same single message.
    data: dict[str, Any] = {}
    for assignment in overrides:
        apply_override(data, assignment, PipelineConfig)
    with pytest.raises(ValidationError) as direct:
        PipelineConfig.model_validate(data)
    (error,) = direct.value.errors()
    assert "\n" not in error["msg"] and message in error["msg"]


# --- The tiny twins, end to end -----------------------------------------------------------------

MIMI_COMMIT = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture(scope="module")
def hub_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A Hugging Face Hub cache holding Mimi's file with random weights (no network), laid out as
    huggingface_hub lays it out (as tests/tasks/test_loaders.py builds it)."""
    from moshi.models.loaders import get_mimi
    from safetensors.torch import save_file

    from codecflow.tasks.loaders import MIMI_FILE, MIMI_REPO

    with torch.random.fork_rng():
        torch.manual_seed(1)
        state = get_mimi(None, device="cpu", num_codebooks=8).state_dict()  # all 32 codebooks
    generator = torch.Generator().manual_seed(2)
    for key, value in state.items():
        if key.endswith("embedding_sum"):  # zeros when untrained: give the codes some spread
            state[key] = torch.randn(value.shape, generator=generator)
    cache = tmp_path_factory.mktemp("hf") / "hub"
    repo_dir = cache / f"models--{MIMI_REPO.replace('/', '--')}"
    snapshot = repo_dir / "snapshots" / MIMI_COMMIT
    snapshot.mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in state.items()}, str(snapshot / MIMI_FILE))
    (repo_dir / "refs").mkdir()
    (repo_dir / "refs" / "main").write_text(MIMI_COMMIT)
    return cache


def _hub_env(cache: Path) -> dict[str, str]:
    return {
        "HF_HOME": str(cache.parent / "home"),
        "HF_HUB_CACHE": str(cache),
        "HF_HUB_OFFLINE": "1",
    }


def _check_outputs(name: str, record: PipelineRecord) -> None:
    """The twin's dataset, checkpoint and report exist and hold its tokenizer and levels."""
    want = EXPERIMENTS[name]
    tokenizer = (
        want.tokenizer
        if want.codec_levels is None
        else f"codec:{record.codec}{want.tokenizer.removeprefix('codec:trained')}"
    )
    if want.codec_levels is None:
        assert record.codec is None
    else:
        assert record.codec == record.report.parent / "codec" / "checkpoint"
        assert (record.codec / "metrics.json").is_file()
    dataset = json.loads((record.dataset / "dataset.json").read_text())
    assert dataset["tokenizer"]["name"] == tokenizer
    assert dataset["tokenizer"]["num_levels"] == want.num_levels
    assert (record.checkpoint / "model.safetensors").is_file()
    summary = json.loads((record.report / "summary.json").read_text())
    assert summary["kind"] == "codecflow-evaluation"
    assert (summary["tokenizer"], summary["num_levels"]) == (tokenizer, want.num_levels)
    assert summary["layout"] == "flatten"
    assert len(summary["val_loss_per_level"]) == want.num_levels
    assert (record.report / "index.html").is_file()
    assert (record.report / "continuation_0.wav").is_file()


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread() -> Iterator[None]:
    """The twins' models are tiny: one intra-op thread is faster than two (no barrier waits), by
    far when another process shares the cores. Restored after this module."""
    threads = torch.get_num_threads()
    with pytest.MonkeyPatch.context() as env:
        env.setenv("CODECFLOW_THREADS", "1")  # the flows apply the policy (tasks.core.threads)
        torch.set_num_threads(1)
        yield
    torch.set_num_threads(threads)


# The Mimi-8 twin goes through the `codecflow` command (in a subprocess, as a user runs it); the
# others call the flow in this process.
VIA_CLI = "post-mimi-8"


@pytest.mark.parametrize("name", NAMES)
def test_tiny_twin_runs_end_to_end(
    name: str,
    prefect_api_url: str,
    hub_cache: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.chdir(REPO)  # the twins name the corpus and the prompt relative to the repository
    for key, value in _hub_env(hub_cache).items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("CODECFLOW_MIMI_REPO", raising=False)
    monkeypatch.delenv("CODECFLOW_MIMI_FILE", raising=False)
    out = tmp_path / name
    config = TINY / f"{name}.yaml"
    if name == VIA_CLI:
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "codecflow",
                "pipeline",
                "--config",
                str(config.relative_to(REPO)),
                "--set",
                f"out={out}",
            ],
            cwd=REPO,
            env={**os.environ, "PREFECT_API_URL": prefect_api_url, "OMP_NUM_THREADS": "1"},
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert result.returncode == 0, result.stderr[-3000:]
        lines = dict(
            line.split(": ", 1) for line in result.stdout.strip().splitlines()[-5:] if ": " in line
        )
        # The last line: the runs index beside this run, with this run's report in it.
        assert Path(lines["index"]) == out.parent / "index.html"
        assert f"{name}/report/index.html" in Path(lines["index"]).read_text()
        record = PipelineRecord(
            manifest=Path(lines["manifest"]),
            dataset=Path(lines["dataset"]),
            checkpoint=Path(lines["checkpoint"]),
            report=Path(lines["report"]),
        )
        assert record.manifest == out / "acquire" / "manifest" / "segments.parquet"
    else:
        cfg = load_config(PipelineConfig, str(config), [f"out={out}"])
        assert isinstance(cfg, PipelineConfig)
        record = pipeline_flow(cfg)
    assert record.report == out / "report"
    _check_outputs(name, record)
    if EXPERIMENTS[name].codec_levels is not None:
        # Run again: the trained codec is a cache hit, and so is everything that reads it.
        window = FlowRunWindow()
        assert pipeline_flow(cfg) == record
        states = dict(window.wait_for({"train-codec", "write-shards", "train-lm", "evaluate"}))
        assert states["train-codec"] == "Cached", states
        assert {states[t] for t in ("write-shards", "train-lm", "evaluate")} == {"Cached"}, states
