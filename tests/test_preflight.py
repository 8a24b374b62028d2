"""Bad input is refused before any Prefect server starts: one `error: ...` line, exit status 2,
no traceback, nothing written. Run as a user runs the CLI (`python -m codecflow`), from an empty
folder, with no Prefect server to talk to and no credentials anywhere."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from codecflow.cli.config import CliError, config_path, load_config, packaged_configs
from codecflow.cli.prefect_env import apply_prefect_defaults, codecflow_home
from codecflow.cli.preflight import check_config
from codecflow.schemas.configs import (
    AcquireConfig,
    EvaluateConfig,
    PipelineConfig,
    TokenizeConfig,
    TrainLMConfig,
)
from codecflow.schemas.resources import PACKAGE_ROOT


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])  # closed again when the block ends


def _cli(folder: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "PREFECT_"))}
    base.update(HOME=str(folder), AWS_SHARED_CREDENTIALS_FILE=str(folder / "none"), **env)
    base["AWS_CONFIG_FILE"] = str(folder / "none")
    return subprocess.run(
        [sys.executable, "-m", "codecflow", *args],
        cwd=folder, env=base, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip


@pytest.mark.parametrize(
    ("args", "env", "line"),
    [
        (["tokenize", "--set", "manifest=missing.parquet"], {},
         "error: manifest: file not found: missing.parquet"),
        (["tokenize", "--set", "manifest=."], {}, "error: manifest: . is a folder, expected a file"),
        (["train-lm", "--set", "dataset=x.txt"], {}, "error: dataset: x.txt is a file, expected a folder"),
        (["tokenize", "--set", "manifest=s3://bucket/segments.parquet"], {},
         "error: manifest: s3://bucket/segments.parquet needs S3 credentials: set "
         "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or AWS_PROFILE)"),
        (["tokenize", "--set", "tokeniser=mimi_8_rvq"], {},
         "error: invalid TokenizeConfig: unknown field 'tokeniser'; did you mean 'tokenizer'?"),
        (["pipeline", "--config", "demo", "--set", "tokenize.tokeniser=mulaw"], {},
         "error: invalid PipelineConfig in demo: unknown field 'tokenize.tokeniser'; did you mean "
         "'tokenizer'?"),
        (["acquire", "--set", "source=smal"], {},
         "error: source not found: smal (nor an archive or split name: small, medium, large, "
         "duplicate, librispeech_finetuning, unlab-600, unlab-6k, unlab-60k)"),
        (["pipeline", "--config", "nope.yaml"], {},
         "error: config file not found: nope.yaml (the shipped configs are: demo, "
         "post-codec-rvq8-10000h, post-mimi-31-nosemantic, post-mimi-32, post-mimi-8, "
         "post-mimi-8-semantic-weighted, post-mulaw-1000h)"),
    ],
)  # fmt: skip
def test_bad_input_is_one_line_before_any_server(
    args: list[str], env: dict[str, str], line: str, tmp_path: Path
) -> None:
    (tmp_path / "x.txt").write_text("not a dataset")
    done = _cli(tmp_path, *args, **env)
    assert done.returncode == 2, done.stderr
    assert done.stderr.splitlines() == [line]
    assert done.stdout == ""
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.txt"]  # nothing written


def test_an_unreachable_s3_endpoint_is_named(tmp_path: Path) -> None:
    endpoint = f"http://127.0.0.1:{_closed_port()}"
    done = _cli(
        tmp_path, "train-lm", "--set", "dataset=s3://bucket/tokens",
        AWS_ACCESS_KEY_ID="k", AWS_SECRET_ACCESS_KEY="s", AWS_ENDPOINT_URL=endpoint,
    )  # fmt: skip
    assert done.returncode == 2
    assert done.stderr.splitlines() == [
        f"error: dataset: the S3 endpoint {endpoint} (AWS_ENDPOINT_URL) is unreachable: "
        "Connection refused"
    ]


def test_a_reachable_endpoint_with_credentials_passes(s3_endpoint: str) -> None:
    env = {"AWS_ACCESS_KEY_ID": "k", "AWS_SECRET_ACCESS_KEY": "s", "AWS_ENDPOINT_URL": s3_endpoint}
    with pytest.MonkeyPatch.context() as patch:
        for key, value in env.items():
            patch.setenv(key, value)
        check_config(TrainLMConfig(dataset="s3://bucket/tokens"))


def test_inputs_outputs_and_unused_fields(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "lm" / "checkpoint").mkdir(parents=True)
    (tmp_path / "tokens").mkdir()
    check_config(EvaluateConfig(checkpoint="lm/checkpoint", dataset="tokens"))
    # A scheduled evaluation names its run folder: the default checkpoint is not read then.
    check_config(EvaluateConfig(train_run="lm", checkpoint="absent", dataset="tokens"))
    (tmp_path / "a-file").write_text("")
    with pytest.raises(CliError, match=r"^out: a-file is a file, expected a folder$"):
        check_config(TokenizeConfig(manifest=__file__, out="a-file"))
    with pytest.raises(CliError, match=r"^evaluate.prompt: file not found: nope.wav$"):
        check_config(PipelineConfig(evaluate={"prompt": "nope.wav"}))  # type: ignore[arg-type]


def test_a_tracker_without_its_package_is_named_by_its_section(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "tokens").mkdir()
    config = TrainLMConfig(dataset="tokens", log_to=["tensorboard", "wandb"])
    check_config(config)  # both installed here (the tracking extra)
    monkeypatch.setitem(sys.modules, "wandb", None)  # as if not installed
    with pytest.raises(CliError, match=r"^log_to: wandb needs the wandb package \(pip install"):
        check_config(config)
    pipeline = PipelineConfig(evaluate={"log_to": ["wandb"]})  # type: ignore[arg-type]
    with pytest.raises(CliError, match=r"^evaluate.log_to: wandb needs the wandb package"):
        check_config(pipeline)


def test_shipped_configs_and_data_work_from_any_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    assert {"demo", "post-mimi-8", "tiny/post-mimi-8"} <= set(packaged_configs())
    assert config_path("demo") == config_path("configs/demo.yaml") == config_path("demo.yaml")
    demo = load_config(PipelineConfig, "demo", [])
    assert isinstance(demo, PipelineConfig)
    assert Path(demo.acquire.source).is_file()
    assert Path(demo.acquire.source).is_relative_to(PACKAGE_ROOT)
    assert Path(demo.evaluate.prompt).is_file()
    check_config(demo)
    # A user's own data/ in the current folder wins over the shipped files.
    (tmp_path / "data" / "prompts").mkdir(parents=True)
    (tmp_path / "data" / "prompts" / "prompt_librilight_uk_4s.wav").write_bytes(b"mine")
    assert EvaluateConfig().prompt == "data/prompts/prompt_librilight_uk_4s.wav"
    assert AcquireConfig(source="small").source == "small"


def test_prefect_defaults_apply_only_where_unset(tmp_path: Path) -> None:
    env = {"XDG_DATA_HOME": str(tmp_path / "xdg"), "PREFECT_SERVER_ANALYTICS_ENABLED": "true"}
    applied = apply_prefect_defaults(env)
    assert env["PREFECT_HOME"] == str(tmp_path / "xdg" / "codecflow" / "prefect")
    assert Path(env["PREFECT_HOME"]).is_dir()  # Prefect creates it without parents
    assert env["PREFECT_SERVER_ANALYTICS_ENABLED"] == "true"  # the user's own
    assert "PREFECT_SERVER_ANALYTICS_ENABLED" not in applied
    assert env["PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"] == "120"
    assert codecflow_home({"CODECFLOW_HOME": str(tmp_path / "h")}) == tmp_path / "h"
    mine = {"PREFECT_HOME": str(tmp_path / "mine"), "HOME": str(tmp_path)}
    apply_prefect_defaults(mine)
    assert mine["PREFECT_HOME"] == str(tmp_path / "mine")
