"""An evaluation's metrics and audio sent to the experiment trackers of `log_to`
(`tasks.core.tracking`), at the training step of the checkpoint it evaluated.

Read back from the committed report folder (summary.json and its WAV files), so that a report
copied from another folder (`tasks.evaluate.reuse`) is logged as one computed here; the
trackers write into the report folder (`OUT/tensorboard`, `OUT/wandb`), which a copy leaves out.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import soundfile as sf

from codecflow.schemas.configs import EvaluateSettings
from codecflow.tasks.core.tracking import Tracker
from codecflow.tasks.data.records import EvaluationSummary

__all__ = ["TRACKER_FOLDERS", "log_report", "report_scalars"]

#: What the trackers write into a report folder: not part of the report (never copied).
TRACKER_FOLDERS = ("tensorboard", "wandb")


def report_scalars(summary: EvaluationSummary) -> dict[str, Any]:
    """The numbers of a report, as the trackers receive them (lists become `name/i`; text, such
    as transcripts and flags, is left out)."""
    return {
        "val_loss": summary.val_loss,
        "val_loss_per_level": summary.val_loss_per_level,
        "val_perplexity_per_level": summary.val_perplexity_per_level,
        "val_bits_per_audio_second": summary.val_bits_per_audio_second,
        "prompt_roundtrip": summary.prompt_roundtrip.to_json(),
        "generation_tokens_per_s": summary.generation_tokens_per_s,
        "rtf": summary.rtf,
        "n_flagged_samples": summary.n_flagged_samples,
        "samples": summary.samples,  # each continuation's acoustic numbers
        "speech": summary.speech,  # voice similarities, word error rates
        "true_continuation": summary.true_continuation,
    }


def log_report(out: Path, settings: EvaluateSettings) -> None:
    """Send the committed report in `out` to the trackers of `settings.log_to` (none: nothing)."""
    if not settings.log_to:
        return
    out = Path(out)
    summary = EvaluationSummary.read(out / "summary.json")
    step = summary.checkpoint_step
    config = {
        **settings.model_dump(mode="json"),
        "checkpoint": summary.checkpoint,
        "dataset": summary.dataset,
        "tokenizer": summary.tokenizer,
        "out": str(out),
    }
    with Tracker(out, f"evaluate {out.name}", config, settings.log_to) as tracker:
        tracker.scalars(step, report_scalars(summary))
        for path in sorted(out.glob("*.wav")) + sorted(out.glob("regen/*.wav")):
            wav, rate = sf.read(str(path), dtype="float32", always_2d=True)  # [T, C]
            name = path.relative_to(out).with_suffix("").as_posix()  # "regen/keep1_0"
            tracker.audio(step, name, wav.mean(axis=1), rate)
