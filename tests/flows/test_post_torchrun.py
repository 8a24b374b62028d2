"""The post's experiments on two ranks: each `configs/post-*.yaml` itself (not its tiny twin), read
as `codecflow pipeline --config` reads it, with only size overrides (`--set train_lm.preset=tiny`,
a batch of 2, 3 steps) and `--set train_lm.nproc_per_node=2`, trains under torchrun (gloo).

Every post config sets `preset: post` and tells the reader to add `nproc_per_node=8`; the ranks
used to validate a dump of every field, default shape included, and refuse the preset.

Why not six whole pipelines: acquiring, tokenizing (Mimi on a CPU), training the codec and
evaluating take minutes per config, none of it on the path under test. So `post-mulaw-1000h`
runs whole, through the `codecflow` command on the embedded corpus (the user's path end to end);
the other five run the pipeline's own train-lm stage (`flows.pipeline.train_lm_config`, then the
train-lm flow) on one shared tiny token dataset per tokenizer kind: the codec configs on an
untrained `codec:rvq-8@8` (8 levels of 1 024), the Mimi configs on a stand-in tokenizer with
Mimi's rates, levels and codebook (random codes: the LM's input shape is what matters here).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from helpers import REPO, TINY_TAR, run_codecflow, tiny_tar_md5

from codecflow.cli.config import load_config
from codecflow.flows.pipeline import train_lm_config
from codecflow.flows.train_lm import train_lm_flow
from codecflow.models.presets import GPT_PRESETS
from codecflow.models.tokenizer import AudioTokenizer
from codecflow.schemas.configs import PipelineConfig, TokenizeSettings, TrainLMSettings
from codecflow.schemas.tokenizers import parse_tokenizer_name

CONFIGS = sorted((REPO / "configs").glob("post-*.yaml"))
VIA_CLI = "post-mulaw-1000h"  # the cheapest to acquire and tokenize: the whole pipeline

#: The only overrides: the LM's size and the ranks (gloo: the CPU).
SIZE = [
    "train_lm.preset=tiny",
    "train_lm.batch_size=2",
    "train_lm.steps=3",
    "train_lm.nproc_per_node=2",
    "train_lm.device=cpu",
]
#: The embedded corpus instead of Libri-Light, and an evaluation of a few tokens.
CORPUS = [
    f"acquire.source={TINY_TAR.relative_to(REPO)}",
    f"acquire.md5={tiny_tar_md5()}",
    "acquire.target_len_sec=5",
    "acquire.val_fraction=0.2",
]
EVALUATE = ["evaluate.seconds=0.02", "evaluate.num_samples=1", "evaluate.speech_metrics=false"]


class _StandInMimi(AudioTokenizer):
    """Mimi's shape without its weights: 24 kHz, 12.5 frames/s, 2 048 codes, K levels."""

    def __init__(self, num_levels: int) -> None:
        super().__init__()
        self._num_levels = num_levels

    @property
    def sample_rate(self) -> int:
        return 24_000

    @property
    def frame_rate(self) -> float:
        return 12.5

    @property
    def num_levels(self) -> int:
        return self._num_levels

    @property
    def codebook_size(self) -> int:
        return 2048

    def encode(self, wav: torch.Tensor) -> torch.Tensor:
        frames = math.ceil(wav.shape[-1] / self.samples_per_frame)
        generator = torch.Generator().manual_seed(frames)
        shape = (wav.shape[0], self.num_levels, frames)
        return torch.randint(0, self.codebook_size, shape, generator=generator)

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        return torch.zeros(codes.shape[0], 1, codes.shape[-1] * self.samples_per_frame)


def _tokenize(manifest: Path, out: Path, tokenizer: str) -> Path:
    """`tokenizer`'s dataset of the tiny corpus; Mimi names get the stand-in."""
    import codecflow.tasks.loaders
    from codecflow.tasks.loaders import load_tokenizer
    from codecflow.tasks.tokenize.finalize import tokenize_manifest

    def stand_in(name: str, device: str | torch.device = "cpu") -> AudioTokenizer:
        parsed = parse_tokenizer_name(name)
        if parsed.kind != "mimi":
            return load_tokenizer(name, device)
        assert parsed.num_levels is not None
        return _StandInMimi(parsed.num_levels)

    # plan and shards import `load_tokenizer` lazily (torch and moshi take seconds to import),
    # so the stand-in goes where they look it up: the loaders module itself.
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(codecflow.tasks.loaders, "load_tokenizer", stand_in)
        return tokenize_manifest(manifest, out, TokenizeSettings(tokenizer=tokenizer)).path


@pytest.fixture(scope="module")
def dataset_of(
    tiny_manifest: Path, tiny_dataset: Path, tmp_path_factory: pytest.TempPathFactory
) -> Callable[[str], Path]:
    """The shared token dataset of a config's tokenizer, tokenized once per kind."""
    made: dict[str, Path] = {"mu-law-256": tiny_dataset}

    def dataset(tokenizer: str) -> Path:
        if PipelineConfig.names_trained_codec(tokenizer):
            tokenizer = "codec:rvq-8@8"  # the codec the pipeline would train: 8 x 1 024
        if tokenizer not in made:
            out = tmp_path_factory.mktemp("tokens") / tokenizer.replace(":", "-")
            made[tokenizer] = _tokenize(tiny_manifest, out, tokenizer)
        return made[tokenizer]

    return dataset


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread() -> Iterator[None]:
    """The tiny LM is faster on one intra-op thread, by far when the cores are shared."""
    threads = torch.get_num_threads()
    with pytest.MonkeyPatch.context() as env:
        env.setenv(
            "CODECFLOW_THREADS", "1"
        )  # the flows apply the policy (codecflow.tasks.core.threads)
        torch.set_num_threads(1)
        yield
    torch.set_num_threads(threads)


def _check_two_rank_run(lm_out: Path, settings: TrainLMSettings, num_levels: int) -> None:
    """run.yaml holds the fields the config set, the ranks trained one model with them."""
    run = yaml.safe_load((lm_out / "run.yaml").read_text())
    assert set(run) == settings.model_fields_set | {"dataset", "out"}
    assert run["preset"] == "tiny" and not {"n_layer", "n_head", "n_embd", "block_size"} & set(run)
    checkpoint = lm_out / "checkpoint"
    metrics = json.loads((checkpoint / "metrics.json").read_text())
    assert (metrics["steps"], metrics["ranks"]) == (3, 2)
    ranks = [json.loads((lm_out / "ranks" / f"rank-{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0]["sha256"] == ranks[1]["sha256"]  # one model, two processes
    config: dict[str, Any] = json.loads((checkpoint / "config.json").read_text())
    assert TrainLMSettings.model_validate(config["settings"]) == settings  # the user's settings
    tiny = GPT_PRESETS["tiny"]
    gpt = config["gpt"]
    assert (gpt["n_layer"], gpt["n_head"], gpt["n_embd"]) == (
        tiny["n_layer"],
        tiny["n_head"],
        tiny["n_embd"],
    )
    assert config["tokenizer"]["num_levels"] == num_levels


@pytest.mark.parametrize("path", [p for p in CONFIGS if p.stem != VIA_CLI], ids=lambda p: p.stem)
def test_post_config_trains_on_two_ranks(
    path: Path,
    dataset_of: Callable[[str], Path],
    prefect_api_url: str,
    tmp_path: Path,
) -> None:
    cfg = load_config(PipelineConfig, str(path), [*SIZE, f"out={tmp_path}"])
    assert isinstance(cfg, PipelineConfig) and cfg.train_lm.nproc_per_node == 2
    dataset = dataset_of(cfg.tokenize.tokenizer)
    record = train_lm_flow(train_lm_config(cfg, dataset))
    assert record.path == tmp_path / "lm" / "checkpoint"
    info = json.loads((dataset / "dataset.json").read_text())
    _check_two_rank_run(tmp_path / "lm", cfg.train_lm, info["tokenizer"]["num_levels"])


def test_post_mulaw_pipeline_on_two_ranks_through_the_command(
    prefect_api_url: str, tmp_path: Path
) -> None:
    """`codecflow pipeline --config configs/post-mulaw-1000h.yaml`, on the embedded corpus."""
    config = f"configs/{VIA_CLI}.yaml"
    overrides = [*CORPUS, *SIZE, *EVALUATE, f"out={tmp_path}"]
    args = [a for o in overrides for a in ("--set", o)]
    result = run_codecflow(prefect_api_url, "pipeline", "--config", config, *args)
    assert result.returncode == 0, result.stderr[-3000:]
    lines = dict(line.split(": ", 1) for line in result.stdout.splitlines() if ": " in line)
    assert Path(lines["checkpoint"]) == tmp_path / "lm" / "checkpoint"
    assert (Path(lines["report"]) / "summary.json").is_file()
    cfg = load_config(PipelineConfig, str(REPO / config), overrides)
    assert isinstance(cfg, PipelineConfig)
    _check_two_rank_run(tmp_path / "lm", cfg.train_lm, 1)
