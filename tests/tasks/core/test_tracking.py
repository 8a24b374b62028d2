"""Experiment tracking: what a Tracker writes, read back with TensorBoard's and wandb's own
formats; W&B offline unless logged in; a missing package refused in one line."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from tracking_files import (
    tensorboard_audio,
    tensorboard_events,
    tensorboard_scalars,
    wandb_history,
    wandb_records,
    wandb_run,
)

from codecflow.tasks.core.errors import CodecflowError
from codecflow.tasks.core.tracking import Tracker, check_log_to, flat_scalars, wandb_mode

CONFIG = {"learning_rate": 0.003, "layout": "flatten", "level_weights": [1.0, 0.5]}


def test_scalars_and_audio_reach_tensorboard_and_wandb(tmp_path: Path, tracking_home: Path) -> None:
    out = tmp_path / "run"
    wav = (0.5 * np.sin(np.arange(1600) * 2 * np.pi * 440 / 16000)).astype(np.float32)
    with Tracker(out, "a run", CONFIG, ["tensorboard", "wandb"]) as tracker:
        assert tracker.active
        tracker.scalars(1, {"loss": 5.5, "loss_per_level": [5.0, 6.0], "mfu": None})
        tracker.scalars(2, {"loss": 4.25, "lr": 0.001, "flags": "clipping"})
        tracker.audio(2, "continuation_0", wav, 16000)

    scalars = tensorboard_scalars(out / "tensorboard")
    assert scalars == {
        "loss": {1: 5.5, 2: 4.25},
        "loss_per_level/0": {1: 5.0},
        "loss_per_level/1": {1: 6.0},
        "lr": {2: pytest.approx(0.001)},
    }
    clips = tensorboard_audio(out / "tensorboard")["continuation_0"]
    assert [(c.step, c.sample_rate, c.length_frames) for c in clips] == [(2, 16000, 1600)]
    assert clips[0].encoded_audio_string[:4] == b"RIFF"  # a WAV file

    run_file = wandb_run(out)
    history = wandb_history(run_file)
    assert history[1]["loss"] == 5.5 and history[1]["loss_per_level/0"] == 5.0
    assert history[2]["loss"] == 4.25 and history[2]["lr"] == 0.001
    assert "mfu" not in history[1] and "flags" not in history[2]  # None and text left out
    assert history[2]["continuation_0/_type"] == "audio-file"
    clip = run_file.parent / "files" / history[2]["continuation_0/path"]
    assert clip.suffix == ".wav" and clip.stat().st_size == history[2]["continuation_0/size"]
    run = next(r.run for r in wandb_records(run_file) if r.WhichOneof("record_type") == "run")
    assert run.display_name == "a run" and run.project == "codecflow"
    config = {item.key: json.loads(item.value_json) for item in run.config.update}
    assert {key: config[key] for key in CONFIG} == CONFIG


def test_nothing_is_written_without_log_to(tmp_path: Path) -> None:
    with Tracker(tmp_path / "run", "a run", CONFIG, []) as tracker:
        assert not tracker.active
        tracker.scalars(1, {"loss": 1.0})
        tracker.audio(1, "x", np.zeros(16, dtype=np.float32), 16000)
    assert not (tmp_path / "run").exists()


def test_a_resumed_run_hides_the_steps_the_stopped_one_wrote_past_its_checkpoint(
    tmp_path: Path,
) -> None:
    with Tracker(tmp_path, "run", CONFIG, ["tensorboard"]) as tracker:
        for step in range(1, 6):  # killed after step 5; its last checkpoint was at step 3
            tracker.scalars(step, {"loss": float(step)})
    with Tracker(tmp_path, "run", CONFIG, ["tensorboard"], resumed_step=3) as tracker:
        for step in range(4, 7):
            tracker.scalars(step, {"loss": 10.0 * step})
    loss = tensorboard_scalars(tmp_path / "tensorboard")["loss"]
    assert loss == {1: 1.0, 2: 2.0, 3: 3.0, 4: 40.0, 5: 50.0, 6: 60.0}
    # The second file says so itself (a START at the first new step: readers drop the older
    # events from there on), not only by its steps going back, which some readers ignore.
    first, second = sorted((tmp_path / "tensorboard").glob("events.out.tfevents.*"))
    starts = [
        e.step for e in tensorboard_events(second) if e.session_log.status == e.session_log.START
    ]
    assert starts == [4]
    assert not any(e.HasField("session_log") for e in tensorboard_events(first))


def test_wandb_is_offline_unless_logged_in(
    tmp_path: Path, tracking_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("WANDB_MODE")
    assert wandb_mode() == "offline"
    netrc = tracking_home / ".netrc"
    netrc.write_text("machine api.wandb.ai\n  login user\n  password " + "0" * 40 + "\n")
    netrc.chmod(0o600)
    assert wandb_mode() == "online"  # `wandb login` wrote the key there
    monkeypatch.setenv("WANDB_BASE_URL", "https://wandb.example.org")
    assert wandb_mode() == "offline"  # the key is another server's
    monkeypatch.setenv("WANDB_API_KEY", "0" * 40)
    assert wandb_mode() == "online"
    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert wandb_mode() is None  # the user's own choice: wandb reads it


def test_without_wandb_mode_a_run_is_written_offline(
    tmp_path: Path, tracking_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("WANDB_MODE")
    with Tracker(tmp_path, "run", CONFIG, ["wandb"]) as tracker:
        tracker.scalars(1, {"loss": 2.0})
    assert wandb_history(wandb_run(tmp_path))[1]["loss"] == 2.0


@pytest.mark.parametrize("name", ["tensorboard", "wandb"])
def test_a_missing_package_is_one_line_before_anything_is_written(
    name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, name, None)  # as if not installed: its import fails
    message = rf"^log_to: {name} needs the {name} package \(pip install 'codecflow\[tracking\]'\)$"
    with pytest.raises(CodecflowError, match=message):
        check_log_to([name])
    with pytest.raises(CodecflowError, match=message):
        Tracker(tmp_path / "run", "run", CONFIG, [name])
    assert not (tmp_path / "run").exists()
    with pytest.raises(CodecflowError, match="unknown tracker 'mlflow'"):
        check_log_to(["mlflow"])


def test_flat_scalars_name_every_number() -> None:
    values = {
        "loss": 1,
        "per_level": [0.5, None, 2],
        "speech": {"voice": {"prompt_vs_sample": [0.9]}, "skipped": "no words"},
        "ok": True,
        "array": np.array([3.0]),
        "none": None,
    }
    assert flat_scalars(values) == {
        "loss": 1.0,
        "per_level/0": 0.5,
        "per_level/2": 2.0,
        "speech/voice/prompt_vs_sample/0": 0.9,
        "ok": 1.0,
        "array/0": 3.0,
    }
