"""LM training on the tiny dataset: the loss falls, checkpoints load, reruns skip, bad input."""

from __future__ import annotations

import json
import logging
import re
import sys
from pathlib import Path

import pytest
import torch
from tracking_files import tensorboard_scalars, wandb_history, wandb_records, wandb_run

from codecflow.schemas.configs import TrainLMSettings
from codecflow.tasks.core.errors import CodecflowError
from codecflow.tasks.core.runtime import learning_rate_at
from codecflow.tasks.loaders import load_checkpoint
from codecflow.tasks.prefect.wrappers import train_lm_task
from codecflow.tasks.train.lm import build_optimizer, train_lm


def test_training_lowers_the_loss_and_checkpoints(tiny_checkpoint: Path) -> None:
    files = {p.name for p in tiny_checkpoint.iterdir()}
    assert {
        "model.safetensors",
        "config.json",
        "metrics.json",
        "train_log.jsonl",
        "loss.png",
    } <= files
    metrics = json.loads((tiny_checkpoint / "metrics.json").read_text())
    log = [
        json.loads(line) for line in (tiny_checkpoint / "train_log.jsonl").read_text().splitlines()
    ]
    assert len(log) == metrics["steps"] == 40
    assert metrics["train_loss_first"] == pytest.approx(5.545, abs=0.3)  # ~ln(256) at init
    assert metrics["train_loss_last"] < metrics["train_loss_first"] - 0.5


def test_checkpoint_loads_with_tied_weights(tiny_checkpoint: Path, tiny_dataset: Path) -> None:
    model, spec = load_checkpoint(tiny_checkpoint, torch.device("cpu"))
    assert spec["name"] == "mu-law-256" and spec["codebook_size"] == 256
    assert model.lm_head.weight is model.wte.weight
    logits = model(torch.zeros(1, 8, dtype=torch.long)).logits
    assert logits.shape == (1, 8, 256)
    assert torch.isfinite(logits).all()


def test_rerun_returns_the_committed_checkpoint(
    tiny_dataset: Path, tiny_checkpoint: Path, tiny_lm_settings: TrainLMSettings
) -> None:
    weights = tiny_checkpoint / "model.safetensors"
    mtime = weights.stat().st_mtime_ns
    record = train_lm(tiny_dataset, tiny_checkpoint.parent, tiny_lm_settings)
    assert record.path == tiny_checkpoint and weights.stat().st_mtime_ns == mtime
    changed = tiny_lm_settings.model_copy(update={"steps": 41})
    with pytest.raises(CodecflowError, match="holds a checkpoint of another dataset or settings"):
        train_lm(tiny_dataset, tiny_checkpoint.parent, changed)


def test_bad_settings_fail_before_training(tiny_dataset: Path, tmp_path: Path) -> None:
    with pytest.raises(CodecflowError, match="n_embd=30 is not a multiple of n_head=4"):
        train_lm(tiny_dataset, tmp_path, TrainLMSettings(n_embd=30, n_head=4, device="cpu"))
    with pytest.raises(CodecflowError, match="fewer than one window of block_size=10000000"):
        train_lm(tiny_dataset, tmp_path, TrainLMSettings(block_size=10_000_000, device="cpu"))
    with pytest.raises(CodecflowError, match="no complete token dataset at .*missing"):
        train_lm(tmp_path / "missing", tmp_path, TrainLMSettings(device="cpu"))
    assert not any(tmp_path.iterdir())  # bad input: out is neither created nor claimed


def test_learning_rate_warms_up_then_decays() -> None:
    s = TrainLMSettings(steps=100, warmup_steps=10, learning_rate=1.0, min_lr_ratio=0.1)
    assert learning_rate_at(0, s) == pytest.approx(1 / 11)  # nanoGPT: (it + 1) / (warmup + 1)
    assert learning_rate_at(9, s) == pytest.approx(10 / 11)
    assert learning_rate_at(10, s) == pytest.approx(1.0)
    assert learning_rate_at(55, s) == pytest.approx(0.55)
    assert learning_rate_at(100, s) == pytest.approx(0.1)


def test_lr_decay_steps_ends_the_cosine_early_as_nanogpt() -> None:
    # nanoGPT's lr_decay_iters (train.py): an lr_decay_steps short of the steps ends the cosine
    # early (the post's train.py sets it to max_iters from 7ae6e2e on; older configs did not).
    s = TrainLMSettings(
        steps=100, warmup_steps=10, learning_rate=1.0, min_lr_ratio=0.1, lr_decay_steps=40
    )
    assert learning_rate_at(25, s) == pytest.approx(0.55)  # halfway between 10 and 40
    assert learning_rate_at(40, s) == pytest.approx(0.1)
    assert learning_rate_at(70, s) == pytest.approx(0.1)  # stays at the floor


def test_optimizer_takes_beta2_from_the_settings() -> None:
    from codecflow.models.gpt import GPT, GPTConfig

    model = GPT(GPTConfig(vocab_size=8, block_size=8, n_layer=1, n_head=1, n_embd=8))
    assert build_optimizer(model, TrainLMSettings(beta2=0.99)).defaults["betas"] == (0.9, 0.99)
    assert build_optimizer(model, TrainLMSettings()).defaults["betas"] == (0.9, 0.95)


def test_task_wraps_the_plain_function(
    tiny_dataset: Path, tiny_checkpoint: Path, tiny_lm_settings: TrainLMSettings
) -> None:
    record = train_lm_task.fn(tiny_dataset, tiny_checkpoint.parent, tiny_lm_settings)
    assert record.path == tiny_checkpoint and record.steps == 40


def test_presets_set_the_shape(tiny_dataset: Path, tmp_path: Path) -> None:
    from pydantic import ValidationError

    with pytest.raises(
        ValidationError, match="preset 'tiny' sets the model shape; leave out \\['n_layer'\\]"
    ):
        TrainLMSettings(preset="tiny", n_layer=3)
    # The Prefect UI and a deployment run's parameters hold every field: the default shape
    # beside a preset says nothing and counts as unset.
    full = TrainLMSettings(preset="tiny").model_dump(mode="json")
    assert full["n_layer"] == 4  # the field's default, sent with the preset
    again = TrainLMSettings.model_validate(full)
    assert again.preset == "tiny" and not {"n_layer", "block_size"} & again.model_fields_set
    record = train_lm(
        tiny_dataset, tmp_path, TrainLMSettings(preset="tiny", steps=2, batch_size=2, device="cpu")
    )
    config = json.loads((record.path / "config.json").read_text())
    assert config["gpt"]["n_layer"] == 2 and config["gpt"]["block_size"] == 128
    assert config["layout"] == "flatten"
    # The settings recorded for evaluation validate again (only the fields set: a preset and an
    # explicit shape exclude each other).
    assert TrainLMSettings.model_validate(config["settings"]).preset == "tiny"


# --------------------------------------------------------------------------------------------
# Resume identity, ownership, locks
# --------------------------------------------------------------------------------------------


def _killed_run(dataset: Path, out: Path, settings: TrainLMSettings) -> None:
    """A run that wrote a resumable checkpoint at step 2 and died before its final one."""
    import shutil

    train_lm(dataset, out, settings)
    assert (out / "checkpoints" / "step-000002" / "COMPLETE").is_file()
    shutil.rmtree(out / "checkpoint")  # what a kill before the final checkpoint leaves


def test_a_resume_with_another_dataset_or_settings_is_refused(
    tiny_manifest: Path, tiny_dataset: Path, tmp_path: Path
) -> None:
    from codecflow.schemas.configs import TokenizeSettings
    from codecflow.tasks.data.token_dataset import read_dataset_info
    from codecflow.tasks.tokenize.finalize import tokenize_manifest

    settings = TrainLMSettings(
        n_layer=1, n_head=2, n_embd=16, block_size=32, batch_size=2, steps=4, warmup_steps=1,
        checkpoint_every=2, eval_batches=1, device="cpu",
    )  # fmt: skip
    out = tmp_path / "run"
    _killed_run(tiny_dataset, out, settings)
    faster = settings.model_copy(update={"learning_rate": 1e-3})
    with pytest.raises(CodecflowError) as refused:
        train_lm(tiny_dataset, out, faster)
    assert str(refused.value) == (
        f"{out} holds an unfinished LM run (step-000002) of another dataset or settings: "
        f"learning_rate {settings.learning_rate} in the checkpoint, 0.001 asked for; "
        "resume with the same ones or choose another out"
    )
    other = tokenize_manifest(tiny_manifest, tmp_path / "other", TokenizeSettings(shard_hours=0.5))
    old, new = (read_dataset_info(d).fingerprint[:12] for d in (tiny_dataset, other.path))
    with pytest.raises(
        CodecflowError,
        match=f"dataset fingerprint {old} in the checkpoint, fingerprint {new} asked for;",
    ):
        train_lm(Path(other.path), out, settings)
    assert not (out / "checkpoint").exists()
    # A checkpoint written before identities were recorded: its config.json's settings count.
    (out / "checkpoints" / "step-000002" / "identity.json").unlink()
    with pytest.raises(CodecflowError, match="learning_rate .* in the checkpoint, 0.001 asked"):
        train_lm(tiny_dataset, out, faster)
    # The same settings (and another checkpoint_every: not part of what the run is) resume.
    record = train_lm(tiny_dataset, out, settings.model_copy(update={"checkpoint_every": 3}))
    metrics = json.loads((record.path / "metrics.json").read_text())
    assert metrics["resumed_from"] == 2
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [1, 2, 3, 4]


def test_a_run_into_a_locked_out_is_refused_and_the_lock_file_goes_at_the_end(
    tiny_dataset: Path, tmp_path: Path
) -> None:
    from helpers import lock_held_by_another_process

    settings = TrainLMSettings(
        n_layer=1, n_head=2, n_embd=16, block_size=32, batch_size=2, steps=2, warmup_steps=1,
        eval_batches=1, device="cpu",
    )  # fmt: skip
    out = tmp_path / "run"
    lock = tmp_path / "run.lock"
    with lock_held_by_another_process(out, "train-lm") as pid:
        with pytest.raises(CodecflowError, match=f"^{out} is being written by another run "):
            train_lm(tiny_dataset, out, settings)
        assert json.loads(lock.read_text())["pid"] == pid  # the holder's file, untouched
        assert not (out / "train_log.jsonl").exists()
    train_lm(tiny_dataset, out, settings)
    assert not lock.exists()
    with pytest.raises(CodecflowError, match="holds a checkpoint of another dataset or settings"):
        train_lm(tiny_dataset, out, settings.model_copy(update={"learning_rate": 1e-3}))
    assert not lock.exists()  # refused while holding the lock: released and removed all the same


def test_a_users_folder_is_not_trained_into(tiny_dataset: Path, tmp_path: Path) -> None:
    out = tmp_path / "mine"
    out.mkdir()
    (out / "train_log.jsonl").write_text("my notes\n")
    with pytest.raises(CodecflowError, match=f"^{out} is not empty and is not a codecflow LM run$"):
        train_lm(tiny_dataset, out, TrainLMSettings(steps=1, device="cpu"))
    assert [p.name for p in out.iterdir()] == ["train_log.jsonl"]
    assert (out / "train_log.jsonl").read_text() == "my notes\n"


#: A train-lm progress line: step, loss, tokens/s (all ranks), ETA.
_PROGRESS = re.compile(
    r"^train-lm step (\d+)/(\d+) \((\d+)%\): loss (\d+\.\d{4}), ([\d,.]+) tokens/s, ETA (\d+:\d\d)$"
)


def _progress_lines(caplog: pytest.LogCaptureFixture) -> list[re.Match[str]]:
    lines = [r.getMessage() for r in caplog.records if r.name == "codecflow.train-lm"]
    matches = [_PROGRESS.match(line) for line in lines]
    assert all(matches), lines
    return [m for m in matches if m]


def test_training_logs_progress_at_a_cadence(
    tiny_dataset: Path,
    tiny_lm_settings: TrainLMSettings,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    settings = tiny_lm_settings.model_copy(update={"steps": 12})
    with caplog.at_level(logging.INFO, logger="codecflow.train-lm"):
        train_lm(tiny_dataset, tmp_path / "short", settings)
    # A run of a second or two: its first and last step, no more (the default is 30 s).
    first, last = _progress_lines(caplog)
    assert first.group(1, 2, 3) == ("1", "12", "8") and last.group(1, 3, 6) == ("12", "100", "0:00")
    assert float(first.group(4)) == pytest.approx(5.545, abs=0.3)  # ~ln(256) at init
    assert float(last.group(5).replace(",", "")) > 0
    caplog.clear()
    monkeypatch.setenv("CODECFLOW_PROGRESS_SECONDS", "0")  # a line every step
    with caplog.at_level(logging.INFO, logger="codecflow.train-lm"):
        train_lm(tiny_dataset, tmp_path / "every", settings)
    assert [int(m.group(1)) for m in _progress_lines(caplog)] == list(range(1, 13))


def test_log_to_sends_the_logs_scalars_to_tensorboard_and_wandb(
    tiny_dataset: Path, tiny_lm_settings: TrainLMSettings, tmp_path: Path, tracking_home: Path
) -> None:
    settings = tiny_lm_settings.model_copy(update={"steps": 12, "checkpoint_every": 5})
    tracked = settings.model_copy(update={"log_to": ["tensorboard", "wandb"]})
    out = tmp_path / "lm"
    record = train_lm(tiny_dataset, out, tracked)
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    metrics = json.loads((record.path / "metrics.json").read_text())
    assert [row["step"] for row in log] == list(range(1, 13))

    # TensorBoard keeps float32: the log's float64 values to 7 digits.
    board = tensorboard_scalars(out / "tensorboard")
    for key in ("loss", "lr", "grad_norm", "loss_per_level/0"):
        assert board[key] == {row["step"]: pytest.approx(_at(row, key), rel=1e-6) for row in log}, (
            key
        )
    validated = {row["step"]: row["val_loss"] for row in log if "val_loss" in row}
    assert sorted(validated) == [5, 10]  # at the checkpoints, and the final one at step 12
    assert board["val_loss"] == pytest.approx({**validated, 12: metrics["val_loss"]}, rel=1e-6)
    assert sorted(board["tokens_per_s"]) == list(range(1, 13))
    assert all(value > 0 for value in board["tokens_per_s"].values())
    assert board["run/tokens_per_s"] == {12: pytest.approx(metrics["tokens_per_s"], rel=1e-6)}
    assert "mfu" not in board and metrics["mfu"] is None  # no peak FLOP/s known on a CPU

    # W&B: the offline run under OUT/wandb, the values as the log has them (JSON, float64).
    run_file = wandb_run(out)
    history = wandb_history(run_file)
    for row in log:
        step = history[row["step"]]
        assert (step["loss"], step["lr"], step["grad_norm"]) == (
            row["loss"], row["lr"], row["grad_norm"]
        )  # fmt: skip
        assert step["loss_per_level/0"] == row["loss_per_level"][0]
        assert step.get("val_loss") == row.get(
            "val_loss", metrics["val_loss"] if row["step"] == 12 else None
        )
    run = next(r.run for r in wandb_records(run_file) if r.WhichOneof("record_type") == "run")
    config = {item.key: json.loads(item.value_json) for item in run.config.update}
    assert config["settings"]["steps"] == 12 and config["settings"]["log_to"] == [
        "tensorboard",
        "wandb",
    ]
    assert run.display_name == "train-lm lm"

    # The trackers are not part of what the run is: the same run without them is this one.
    assert train_lm(tiny_dataset, out, settings) == record


def _at(row: dict[str, object], key: str) -> object:
    """A log line's value under a tracker's name ("loss_per_level/0": the list's first)."""
    name, _, index = key.partition("/")
    value = row[name]
    return value[int(index)] if index else value  # type: ignore[index]


def test_a_tracker_without_its_package_fails_before_the_run(
    tiny_dataset: Path,
    tiny_lm_settings: TrainLMSettings,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "wandb", None)  # as if not installed
    settings = tiny_lm_settings.model_copy(update={"log_to": ["wandb"]})
    with pytest.raises(CodecflowError, match=r"^log_to: wandb needs the wandb package"):
        train_lm(tiny_dataset, tmp_path / "lm", settings)
    assert not (tmp_path / "lm").exists()  # refused before out is claimed
