"""An evaluation's metrics and audio in the trackers of `log_to`, read back from TensorBoard's
event files and the offline W&B run, at the evaluated checkpoint's training step."""

from __future__ import annotations

from pathlib import Path

import pytest
import soundfile as sf
from helpers import tiny_evaluate_settings
from tracking_files import tensorboard_audio, tensorboard_scalars, wandb_history, wandb_run

from codecflow.tasks.data.records import EvaluationSummary
from codecflow.tasks.evaluate.lm import evaluate

_settings = tiny_evaluate_settings


def test_the_reports_metrics_and_audio_reach_the_trackers(
    tiny_checkpoint: Path, tiny_dataset: Path, tmp_path: Path, tracking_home: Path
) -> None:
    out = tmp_path / "report"
    tracked = _settings(log_to=["tensorboard", "wandb"])
    record = evaluate(tiny_checkpoint, tiny_dataset, out, tracked)
    summary = EvaluationSummary.read(record.summary)
    step = summary.checkpoint_step
    assert step == 40

    board = tensorboard_scalars(out / "tensorboard")
    expected = {
        "val_loss": summary.val_loss,
        "val_loss_per_level/0": summary.val_loss_per_level[0],
        "val_bits_per_audio_second": summary.val_bits_per_audio_second,
        "generation_tokens_per_s": summary.generation_tokens_per_s,
        "rtf": summary.rtf,
        "prompt_roundtrip/si_sdr_db": summary.prompt_roundtrip.si_sdr_db,
        "samples/1/rms_dbfs": summary.samples[1]["rms_dbfs"],
        "n_flagged_samples": summary.n_flagged_samples,
    }
    for key, value in expected.items():
        assert board[key] == {step: pytest.approx(value, rel=1e-6)}, key
    wavs = ["continuation_0", "continuation_1", "prompt", "prompt_roundtrip"]
    wavs += ["regen/original", "regen/roundtrip"]  # mu-law has one level: none regenerated
    clips = tensorboard_audio(out / "tensorboard")
    assert sorted(clips) == wavs
    for name, (clip,) in clips.items():
        info = sf.info(str(out / f"{name}.wav"))
        assert (clip.step, clip.sample_rate) == (step, info.samplerate)
        assert clip.length_frames == info.frames

    history = wandb_history(wandb_run(out))
    assert list(history) == [step]
    assert history[step]["val_loss"] == summary.val_loss
    assert history[step]["prompt_roundtrip/mel_l1"] == summary.prompt_roundtrip.mel_l1
    assert {key.removesuffix("/_type") for key in history[step] if key.endswith("/_type")} == set(
        wavs
    )

    # The trackers do not change the question: the same evaluation without them is the same
    # report, copied without the trackers' folders; asked with them, the copy is logged anew.
    copy = evaluate(tiny_checkpoint, tiny_dataset, tmp_path / "copy", _settings())
    assert copy.reused_from == out
    assert not (tmp_path / "copy" / "tensorboard").exists()
    assert not (tmp_path / "copy" / "wandb").exists()
    logged = tmp_path / "logged"
    again = evaluate(tiny_checkpoint, tiny_dataset, logged, _settings(log_to=["tensorboard"]))
    assert again.reused_from in (out, tmp_path / "copy")
    assert tensorboard_scalars(logged / "tensorboard")["val_loss"] == board["val_loss"]
