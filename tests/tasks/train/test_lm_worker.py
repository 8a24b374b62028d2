"""Multi-process LM training with torchrun (gloo on the CPU): DDP keeps ranks equal, and a run
killed with SIGKILL resumes, on another number of ranks, without repeating or skipping windows."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from helpers import REPO
from tracking_files import tensorboard_scalars, wandb_history, wandb_run

from codecflow.schemas.configs import TrainLMSettings
from codecflow.tasks.core.threads import usable_cpus
from codecflow.tasks.data.checkpoints import latest_checkpoint
from codecflow.tasks.train.torchrun import run_torchrun

TINY = {
    "n_layer": 1,
    "n_head": 2,
    "n_embd": 32,
    "block_size": 64,
    "batch_size": 4,
    "warmup_steps": 2,
    "device": "cpu",
}


def _log(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]


def test_two_ranks_train_identical_replicas(
    tiny_dataset: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    settings = TrainLMSettings(**TINY, steps=25, checkpoint_every=10, nproc_per_node=2)
    with caplog.at_level(logging.INFO, logger="codecflow.train-lm"):
        record = run_torchrun(tiny_dataset, tmp_path, settings)
    # Rank 0's progress lines, streamed by the launcher into its log (rank 1 says nothing):
    # the first step and the last, with the tokens of both ranks (2 x 4 windows x 64 a step).
    progress = [r.getMessage() for r in caplog.records if " step " in r.getMessage()]
    assert [line.split(":")[0] for line in progress] == [
        "train-lm step 1/25 (4%)",
        "train-lm step 25/25 (100%)",
    ], progress
    assert record.path == tmp_path / "checkpoint" and (record.path / "model.safetensors").is_file()
    assert record.train_loss_last < record.train_loss_first
    ranks = [json.loads((tmp_path / "ranks" / f"rank-{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0]["sha256"] == ranks[1]["sha256"]  # one model, two processes
    log = _log(tmp_path)
    assert [r["ranks"] for r in log] == [2] * 25
    assert log[0]["windows"] == [0, 8] and log[-1]["windows"] == [192, 200]  # 2 ranks x 4 windows


def test_kill_9_then_resume_on_two_ranks_continues_the_sampler(
    tiny_dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = TrainLMSettings(**TINY, steps=30, checkpoint_every=5)
    out = tmp_path / "run"  # run.yaml beside it: the output folder holds only the run's files
    run_file = tmp_path / "run.yaml"
    run_file.write_text(
        yaml.safe_dump(
            {**settings.model_dump(mode="json"), "dataset": str(tiny_dataset), "out": str(out)}
        )
    )
    process = subprocess.Popen(
        [sys.executable, "-m", "codecflow.tasks.train.lm_worker", "--config", str(run_file)],
        cwd=REPO,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        latest = latest_checkpoint(out)
        if latest is not None and latest.name >= "step-000010":
            break
        assert process.poll() is None, "training ended before it could be killed"
        time.sleep(0.1)
    process.send_signal(signal.SIGKILL)
    process.wait()
    killed_at = int(latest_checkpoint(out).name.split("-")[1])  # type: ignore[union-attr]
    assert 10 <= killed_at < 30 and not (out / "checkpoint").exists()

    # No override: the launcher gives each rank its share of the CPUs (tasks.core.threads).
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.delenv("CODECFLOW_THREADS", raising=False)
    record = run_torchrun(tiny_dataset, out, settings.model_copy(update={"nproc_per_node": 2}))
    metrics = json.loads((record.path / "metrics.json").read_text())
    assert metrics["resumed_from"] == killed_at and metrics["ranks"] == 2
    assert metrics["torch_threads"] == max(1, usable_cpus() // 2)
    log = _log(out)
    assert [r["step"] for r in log] == list(range(1, 31))  # the step counter continues
    assert [r["ranks"] for r in log] == [1] * killed_at + [2] * (30 - killed_at)
    for before, after in zip(log, log[1:], strict=False):
        assert after["windows"][0] == before["windows"][1]  # no window repeated or skipped
    assert log[0]["windows"][0] == 0


def test_gradient_accumulation_consumes_micro_batches_in_order(
    tiny_dataset: Path, tmp_path: Path
) -> None:
    from codecflow.tasks.train.lm import train_lm

    settings = TrainLMSettings(**TINY, steps=3, grad_accum_steps=2)
    record = train_lm(tiny_dataset, tmp_path, settings)
    log = _log(tmp_path)
    assert [r["windows"] for r in log] == [[0, 8], [8, 16], [16, 24]]  # 2 micro-batches x 4
    metrics = json.loads((record.path / "metrics.json").read_text())
    assert metrics["mfu"] is None  # CPU: no known peak FLOPs


# --- run.yaml: the fields the user set, read back as the launcher's settings ------------------


def _run_yaml(path: Path, settings: TrainLMSettings, dataset: Path, out: Path) -> Path:
    config = {**settings.model_dump(mode="json", exclude_unset=True), "dataset": str(dataset)}
    path.write_text(yaml.safe_dump({**config, "out": str(out)}))
    return path


def test_a_preset_reads_back_as_the_same_settings(tmp_path: Path) -> None:
    from codecflow.tasks.train.lm_worker import check_settings, read_run_config

    settings = TrainLMSettings(preset="tiny", steps=3, level_weights=[100, 1], nproc_per_node=2)
    run_file = _run_yaml(tmp_path / "run.yaml", settings, tmp_path / "tokens", tmp_path / "lm")
    expected = tmp_path / "settings.json"
    expected.write_text(json.dumps(settings.model_dump(mode="json")))
    read = read_run_config(run_file).settings()
    assert read == settings and read.model_fields_set == settings.model_fields_set
    check_settings(read, expected, run_file)  # no error


def test_a_rank_refuses_settings_other_than_the_launchers(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from codecflow.tasks.train.lm_worker import main

    # Built without validation, steps=7 is not among the fields set: run.yaml would train 300.
    settings = TrainLMSettings.model_construct({"preset"}, preset="tiny", steps=7)
    run_file = _run_yaml(tmp_path / "run.yaml", settings, tmp_path / "tokens", tmp_path / "lm")
    expected = tmp_path / "settings.json"
    expected.write_text(json.dumps(settings.model_dump(mode="json")))
    argv = ["--config", str(run_file), "--error-dir", str(tmp_path), "--expect-settings"]
    assert main([*argv, str(expected)]) == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith(f"error: rank 0: {run_file} reads back as other settings")
    assert "steps: 300 instead of 7" in line
    assert (tmp_path / "rank-0.txt").read_text().strip() == line.removeprefix("error: rank 0: ")
    assert not (tmp_path / "lm").exists()  # refused before training


def test_an_invalid_run_yaml_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from codecflow.tasks.train.lm_worker import main

    run_file = tmp_path / "run.yaml"
    run_file.write_text(yaml.safe_dump({"preset": "post", "n_layer": 2, "dataset": "x"}))
    assert main(["--config", str(run_file)]) == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith(f"error: rank 0: invalid TrainLMConfig in {run_file}: ")
    assert "preset 'post' sets the model shape; leave out ['n_layer']" in line


def test_a_damaged_shard_on_two_ranks_is_one_line(tiny_dataset: Path, tmp_path: Path) -> None:
    """A shard changed in place (issue 23: the ranks read altered codes, or pyarrow's error
    reached the launcher as `torchrun exited with status 1`): the first failing rank's one line,
    and both ranks end (the call returns)."""
    import re
    import shutil

    from codecflow.tasks.core.errors import CodecflowError
    from codecflow.tasks.data.token_dataset import read_dataset_info

    data = Path(shutil.copytree(tiny_dataset, tmp_path / "tokens"))
    shard = data / next(s.file for s in read_dataset_info(data).shards if s.split == "train")
    damaged = bytearray(shard.read_bytes())
    damaged[len(damaged) // 2] ^= 0xFF
    shard.write_bytes(bytes(damaged))
    settings = TrainLMSettings(**TINY, steps=5, nproc_per_node=2)
    with pytest.raises(CodecflowError) as err:
        run_torchrun(data, tmp_path / "lm", settings)
    assert re.fullmatch(
        rf"train-lm rank [01] failed: token shard {re.escape(str(shard))} does not match its "
        r"commit marker: sha256 [0-9a-f]{16}\.\.\., expected [0-9a-f]{16}\.\.\. \(changed since "
        r"it was written\)",
        str(err.value),
    ), str(err.value)
    assert not (tmp_path / "lm" / "checkpoint").exists()


def test_only_rank_0_logs_to_the_trackers(
    tiny_dataset: Path, tmp_path: Path, tracking_home: Path
) -> None:
    out = tmp_path / "lm"
    log_to = ["tensorboard", "wandb"]
    settings = TrainLMSettings(**TINY, steps=6, checkpoint_every=3, nproc_per_node=2, log_to=log_to)
    run_torchrun(tiny_dataset, out, settings)
    # One writer of each: rank 1 opened none (its own would be a second file, a second run).
    (events,) = (out / "tensorboard").glob("events.out.tfevents.*")
    board = tensorboard_scalars(events.parent)
    history = wandb_history(wandb_run(out))  # exactly one offline run
    log = _log(out)
    assert board["loss"] == {r["step"]: pytest.approx(r["loss"], rel=1e-6) for r in log}
    assert {step: row["loss"] for step, row in history.items()} == {
        r["step"]: r["loss"] for r in log
    }
