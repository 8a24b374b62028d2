"""A token dataset on S3, the user's path end to end: the datasets guide's S3 commands themselves
(the block after its marker), run with `codecflow` against moto's S3 server on 127.0.0.1.
Acquire into the bucket, tokenize from the manifest there into the bucket, train-lm from it on
two gloo ranks (torchrun: the ranks read S3 with the environment they inherit), evaluate from it.
"""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import pytest
import s3fs
import yaml
from helpers import REPO, run_codecflow

from codecflow.tasks.core.storage import CACHE_ENV, sha256_file
from codecflow.tasks.data.records import EvaluationSummary
from codecflow.tasks.data.shard_cache import dataset_cache_dir, entry_path
from codecflow.tasks.data.token_dataset import read_dataset_info

MARKER = "<!-- example: run (tests/flows/test_s3_datasets.py, on moto's S3 server) -->"
BUCKET, RUNS = "s3://my-bucket", "runs/s3"


def readme_commands() -> list[list[str]]:
    """The `codecflow` commands of the guide's S3 block, each as its argument list."""
    text = (REPO / "docs" / "guides" / "datasets.md").read_text()
    block = text.split(MARKER, 1)[1].split("```bash\n", 1)[1].split("```", 1)[0]
    commands = []
    for line in block.replace("\\\n", " ").splitlines():
        if line.startswith(".venv/bin/codecflow "):
            commands.append(shlex.split(line)[1:])
    return commands


def _here(arg: str, bucket: str, runs: Path) -> str:
    return arg.replace(BUCKET, bucket).replace(RUNS, str(runs))


def test_readme_s3_commands_tokenize_train_on_two_ranks_and_evaluate(
    prefect_api_url: str, s3_bucket: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))  # inherited by the ranks
    commands = readme_commands()
    assert [c[0] for c in commands] == ["acquire", "tokenize", "train-lm", "evaluate"]
    outputs: dict[str, str] = {}
    for command in commands:
        result = run_codecflow(prefect_api_url, *(_here(a, s3_bucket, tmp_path) for a in command))
        assert result.returncode == 0, f"{command[0]}: {result.stderr[-3000:]}"
        outputs.update(line.split(": ", 1) for line in result.stdout.splitlines() if ": " in line)
    dataset = f"{s3_bucket}/tokens/mu-law-256"
    assert outputs["manifest"] == f"{s3_bucket}/ll/manifest/segments.parquet"
    assert outputs["dataset"] == dataset
    fs = s3fs.S3FileSystem(skip_instance_cache=True)
    assert fs.exists(f"{dataset[5:]}/dataset.json")
    # Two ranks trained one model from the bucket's tokens.
    lm = tmp_path / "lm"
    assert Path(outputs["checkpoint"]) == lm / "checkpoint"
    metrics = json.loads((lm / "checkpoint" / "metrics.json").read_text())
    assert (metrics["steps"], metrics["ranks"]) == (3, 2)
    ranks = [json.loads((lm / "ranks" / f"rank-{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0]["sha256"] == ranks[1]["sha256"]
    # The URL reached the ranks whole, not as `s3:/...`.
    assert yaml.safe_load((lm / "run.yaml").read_text())["dataset"] == dataset
    # Every shard sits in the cache once, checked; no temporary is left.
    info = read_dataset_info(dataset)
    for shard in info.shards:
        assert sha256_file(entry_path(dataset, shard)) == shard.sha256
    assert not [p for p in dataset_cache_dir(dataset).iterdir() if p.name.endswith(".tmp")]
    summary = EvaluationSummary.read(Path(outputs["report"]) / "summary.json")
    assert summary.dataset == dataset and summary.n_tokens == info.totals.tokens
    assert Path(outputs["report"]) == tmp_path / "report"
    # The tar for the bucket's root was downloaded into the cache, not into the checkout.
    assert (tmp_path / "cache" / "download").is_dir() and not (REPO / ".cache").exists()


def test_a_local_only_field_given_a_url_is_one_line(s3_bucket: str) -> None:
    result = run_codecflow(
        None, "train-lm", "--set", f"dataset={s3_bucket}/tokens", "--set", f"out={s3_bucket}/lm"
    )
    assert result.returncode == 2
    (line,) = result.stderr.strip().splitlines()
    assert (
        line.startswith("error: invalid TrainLMConfig: out: ") and "s3:// is not supported" in line
    )
