"""Evaluate an LM checkpoint the way the post does: prompt it with speech and listen.

Plain functions, no Prefect: `tasks.prefect.wrappers` makes them tasks. One evaluation writes a
report
folder (`tasks.evaluate.report` renders its pages):

    prompt.wav, prompt_roundtrip.wav          the prompt, and the prompt through the tokenizer
    continuation_<i>.wav, spectrogram_<i>.png  prompt followed by sample i, and its spectrogram
    true_continuation.wav, spectrogram_true.png  prompt followed by the recording's own next
                                               seconds (with `prompt_seconds`)
    loss.png, loss_per_level.png               the training's loss curves (`tasks.evaluate.curves`)
    regen/...                                  the regeneration (`tasks.evaluate.regenerate`)
    index.html                                 every number, audio player and picture
    summary.json                               written last: the report is complete

Metrics: the per-level validation loss on the held-out split with the training's own windows
(so the numbers equal what training reported), perplexities and bits per second of audio, the
tokenizer's round trip on the prompt (`tasks.evaluate.quality`: SI-SDR, mel L1, PESQ-WB, STOI),
generation speed (tokens/s, compute seconds per audio second), acoustic sanity of every sample
(the post's "crackling", clicks and screeching flagged, `tasks.evaluate.acoustics`), and,
offline, voice similarity and recognised words (`tasks.evaluate.speech_metrics`).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from codecflow.models.gpt import GPT
from codecflow.models.layouts import TokenLayout, make_layout
from codecflow.models.tokenizer import AudioTokenizer
from codecflow.schemas.configs import EvaluateSettings, TrainLMSettings
from codecflow.tasks.core import outputs, storage
from codecflow.tasks.core.errors import CodecflowError
from codecflow.tasks.core.runtime import resolve_device
from codecflow.tasks.core.storage import atomic_dir, fingerprint
from codecflow.tasks.core.tracking import check_log_to
from codecflow.tasks.data.records import (
    SUMMARY_KIND,
    DatasetInfo,
    EvaluationSummary,
    PromptRoundtrip,
)
from codecflow.tasks.data.token_dataset import read_dataset_info
from codecflow.tasks.evaluate import (
    checkpoint_facts,
    continuation,
    curves,
    regenerate,
    report,
    reuse,
    speech_metrics,
    trackers,
)
from codecflow.tasks.evaluate.acoustics import (
    _plot_spectrogram,
    _write_wav,
    acoustic_stats,
    load_prompt,
)
from codecflow.tasks.loaders import load_checkpoint, load_tokenizer

__all__ = [
    "REPORT_COMMITTED",
    "REPORT_KIND",
    "ReportRecord",
    "evaluate",
    "is_report_committed",
    "report_identity",
]

#: The kind of folder an evaluation owns, and what shows one written before ownership markers:
#: a file name only codecflow writes (a user's summary.json must not make a folder ours).
REPORT_KIND = "evaluation report"

REPORT_COMMITTED = ("prompt_roundtrip.wav",)

_LOG = logging.getLogger("codecflow.evaluate")


@dataclass(frozen=True)
class ReportRecord:
    """What an evaluation produced: small, picklable, cacheable."""

    path: Path
    summary: Path
    generated_seconds: float
    generation_tokens_per_s: float
    val_loss: float
    n_flagged_samples: int
    reused_from: Path | None = None  # the folder whose committed report this one copies


def is_report_committed(out: Path) -> bool:
    """True when `out` holds a complete report (its summary.json exists)."""
    return (Path(out) / "summary.json").is_file()


def report_identity(
    checkpoint: Path, dataset: str | Path, settings: EvaluateSettings
) -> dict[str, Any]:
    """What a report was computed from: the weights, the dataset, the prompt files, the settings.

    Stored in summary.json (`identity`); a committed report with the same identity is the answer
    to the same question, so `evaluate` returns it without recomputing (no Prefect cache needed).
    """
    checkpoint = Path(checkpoint)
    sources = {"prompt": settings.prompt, "regenerate_source": settings.regenerate_source}
    return {
        "weights": fingerprint(checkpoint / "model.safetensors"),
        "config": fingerprint(checkpoint / "config.json"),
        "dataset": storage.sha256(storage.join(dataset, "dataset.json")),
        **{k: fingerprint(Path(v)) if v and Path(v).is_file() else v for k, v in sources.items()},
        # The trackers receive the report; they do not change what it says.
        "settings": settings.model_dump(mode="json", exclude={"log_to"}),
    }


def _committed_report(out: Path, identity: Mapping[str, Any]) -> ReportRecord | None:
    """The record of the report committed in `out` for `identity`, or None (absent, other)."""
    if not is_report_committed(out):
        return None
    try:
        summary = EvaluationSummary.read(out / "summary.json")
    except CodecflowError:
        return None  # a report of an older version (or a broken one): evaluated again
    if summary.identity != identity:
        return None
    return _record_from_summary(out, summary)


def _record_from_summary(out: Path, summary: EvaluationSummary) -> ReportRecord:
    """The record of the report in `out` whose summary.json holds `summary`."""
    return ReportRecord(
        path=out,
        summary=out / "summary.json",
        generated_seconds=summary.generated_seconds,
        generation_tokens_per_s=summary.generation_tokens_per_s,
        val_loss=summary.val_loss,
        n_flagged_samples=summary.n_flagged_samples,
        reused_from=Path(summary.reused_from) if summary.reused_from else None,
    )


def evaluate(
    checkpoint: Path, dataset: str | Path, out: Path, settings: EvaluateSettings
) -> ReportRecord:
    """Evaluate the LM checkpoint on `dataset`'s tokens (a folder or a URL such as `s3://...`);
    write the report folder `out`.

    A report committed in `out` (summary.json) for the same weights, dataset, prompts and settings
    is returned as is: its commit marker, not the Prefect cache, says it is done. Evaluations of
    one identity run one at a time on this machine (`tasks.evaluate.reuse`): the second waits for
    the first, then copies its committed report into its own `out` instead of computing it again.

    A report computed or copied here goes to the trackers of `log_to` too; one already
    committed in `out` was logged when it was written.
    """
    checkpoint, dataset, out = Path(checkpoint), storage.location(dataset), Path(out)
    check_log_to(settings.log_to)
    identity = report_identity(checkpoint, dataset, settings)
    done = _committed_report(out, identity)
    if done is not None:
        return done
    key = reuse.identity_key(identity)
    with reuse.one_at_a_time(key, out):
        # The run waited for may have written this very folder.
        record = _committed_report(out, identity) or _reused(key, identity, out)
        if record is None:
            record = _computed(checkpoint, dataset, out, settings, identity)
        reuse.register(key, identity, out)
    trackers.log_report(out, settings)
    return record


def _reused(key: str, identity: Mapping[str, Any], out: Path) -> ReportRecord | None:
    """The report of `identity` committed in another folder, copied into `out` (summary.json
    last, naming where it came from); None when the registry knows no such report."""
    found = reuse.registered_report(key, identity)
    if found is None:
        return None
    source, summary_bytes = found
    summary = EvaluationSummary.from_json(json.loads(summary_bytes), source / "summary.json")
    summary = summary.model_copy(update={"reused_from": str(source)})
    with outputs.owned_output(out, REPORT_KIND, "evaluate", REPORT_COMMITTED):
        with atomic_dir(out) as tmp:
            reuse.copy_report(source, tmp)
            outputs.write_owner_marker(tmp, REPORT_KIND)
            (tmp / "summary.json").write_text(summary.dumps())  # written last
    _LOG.info(
        "evaluate: reused the committed report of the same checkpoint, data, prompts and "
        "settings in %s (copied into %s, not computed again)",
        source,
        out,
    )
    return _record_from_summary(out, summary)


def _computed(
    checkpoint: Path,
    dataset: str | Path,
    out: Path,
    settings: EvaluateSettings,
    identity: dict[str, Any],
) -> ReportRecord:
    """The evaluation itself: read the inputs, then measure and write `out`, which it owns."""
    device = resolve_device(settings.device)
    model, spec = load_checkpoint(checkpoint, device)
    info = read_dataset_info(dataset)
    if info.tokenizer != spec:
        raise CodecflowError(f"checkpoint {checkpoint} was not trained on the tokens of {dataset}")
    tokenizer = load_tokenizer(spec["name"])
    # The prompts are read before `out` is claimed: a bad path creates no folder.
    whole_prompt = load_prompt(Path(settings.prompt), tokenizer)  # [1, 1, T]
    prompt_wav, truth_wav = continuation.cut_prompt(whole_prompt, tokenizer, settings)
    source_path = Path(settings.regenerate_source or settings.prompt)
    source_wav = load_prompt(source_path, tokenizer, "regeneration source")  # [1, 1, T]
    whole = int(settings.regenerate_seconds * tokenizer.frame_rate) * tokenizer.samples_per_frame
    source_wav = source_wav[..., : max(whole, tokenizer.samples_per_frame)]  # [1, 1, T']
    inputs = _Inputs(
        model, spec, info, tokenizer, prompt_wav, truth_wav, source_path, source_wav, device,
        identity,
    )  # fmt: skip
    with outputs.owned_output(out, REPORT_KIND, "evaluate", REPORT_COMMITTED):
        return _evaluate_owned(inputs, checkpoint, dataset, out, settings)


@dataclass(frozen=True)
class _Inputs:
    """What an evaluation reads before it owns its output folder."""

    model: GPT
    spec: dict[str, Any]
    info: DatasetInfo
    tokenizer: AudioTokenizer
    prompt_wav: torch.Tensor  # [1, 1, T]
    truth_wav: torch.Tensor | None  # [1, 1, T_true]: the recording's own continuation, if cut
    source_path: Path
    source_wav: torch.Tensor  # [1, 1, T']
    device: torch.device
    identity: dict[str, Any]  # what a committed report must match to be reused


@dataclass(frozen=True)
class _Measured:
    """What an evaluation measured and generated, before it is written."""

    validation: dict[str, Any]  # val_loss, per level, perplexities, bits per audio second
    prompt_back: np.ndarray  # [T], the prompt through the tokenizer
    prompt_roundtrip: dict[str, float | None]
    samples: list[np.ndarray]  # one [T_new] continuation per sample
    speed: dict[str, Any]
    regen: regenerate.Regenerations
    speech: dict[str, Any]
    train_log: list[dict[str, Any]]  # the training's log lines up to the checkpoint's step
    truth_speech: dict[str, Any] | None  # the true continuation's voice similarity and words


def _measure(
    inputs: _Inputs,
    checkpoint: Path,
    dataset: str | Path,
    layout: TokenLayout,
    train_settings: TrainLMSettings,
    settings: EvaluateSettings,
) -> _Measured:
    """Validation loss, the prompt's round trip and continuations, regenerations, speech."""
    model, tokenizer, device = inputs.model, inputs.tokenizer, inputs.device
    validation = checkpoint_facts.held_out_loss(
        model, dataset, train_settings, device, layout, inputs.spec
    )
    with torch.inference_mode():
        prompt_codes = tokenizer.encode(inputs.prompt_wav)  # [1, K, F_p], for both uses below
    prompt_back, prompt_roundtrip = continuation.roundtrip(
        tokenizer, inputs.prompt_wav, prompt_codes
    )
    samples, speed = continuation.continue_prompt(
        model, tokenizer, layout, prompt_codes, settings, device
    )
    regen = regenerate.regenerations(
        model, tokenizer, layout, inputs.source_path, inputs.source_wav, settings, device
    )
    speech: dict[str, Any] = {"skipped": "turned off (speech_metrics: false)"}
    truth_speech: dict[str, Any] | None = None
    if settings.speech_metrics:
        rate = tokenizer.sample_rate
        prompt_np = inputs.prompt_wav[0, 0].numpy()
        truth = [] if inputs.truth_wav is None else [inputs.truth_wav[0, 0].numpy()]
        speech = speech_metrics.speech_metrics(
            prompt_np, [*samples, *truth], rate, prompt_text=settings.prompt_text
        )
        speech, truth_speech = _split_truth(speech, len(samples)) if truth else (speech, None)
        regen.add_speech_metrics(rate)
    back = prompt_back[0, 0].numpy()
    log = curves.training_log(checkpoint, checkpoint_facts.checkpoint_step(checkpoint))
    return _Measured(
        validation, back, prompt_roundtrip, samples, speed, regen, speech, log, truth_speech
    )


def _split_truth(speech: dict[str, Any], n: int) -> tuple[dict[str, Any], dict[str, Any]]:
    """`speech_metrics` of n samples and then the true continuation: the samples' part (every
    per-sample list cut to n), and the truth's voice similarity and transcript, the reference
    the samples' numbers are read against."""
    parts: dict[str, Any] = {}
    last: dict[str, dict[str, Any]] = {}
    for section in ("voice", "words"):
        kept, last[section] = {}, {}
        for key, value in speech[section].items():
            per_sample = isinstance(value, list) and len(value) == n + 1
            kept[key] = value[:n] if per_sample else value
            if per_sample:
                last[section][key] = value[n]
        parts[section] = kept
    truth = {
        "voice_similarity_to_prompt": last["voice"].get("prompt_vs_sample"),
        "voice_similarity_first_vs_second_half": last["voice"].get("sample_first_vs_second_half"),
        "transcript": last["words"].get("transcripts"),
    }
    return {**speech, **parts}, truth


def _summary(
    inputs: _Inputs,
    checkpoint: Path,
    dataset: str | Path,
    layout: TokenLayout,
    train_settings: TrainLMSettings,
    settings: EvaluateSettings,
    measured: _Measured,
) -> EvaluationSummary:
    tokenizer, block_size = inputs.tokenizer, inputs.model.config.block_size
    num_levels, rate, totals = tokenizer.num_levels, tokenizer.sample_rate, inputs.info.totals
    return EvaluationSummary(
        kind=SUMMARY_KIND,
        tokenizer=inputs.spec["name"],
        num_levels=num_levels,
        codebook_size=tokenizer.codebook_size,
        frame_rate=tokenizer.frame_rate,
        layout=layout.name,
        level_weights=train_settings.level_weights,
        checkpoint=str(checkpoint),
        **checkpoint_facts.training_summary(checkpoint),
        dataset=str(dataset),
        audio_hours=totals.audio_hours,
        n_segments=totals.segments,
        n_tokens=totals.tokens,
        dataset_bytes=totals.bytes,
        **measured.validation,
        context_tokens=block_size,
        # 2 048 tokens are 128 ms of mu-law at 16 kHz, 2 s of the 8-level 125 Hz codec and 20 s
        # of 8-level Mimi at 12.5 Hz (the post): why mu-law babbles.
        context_seconds=block_size / (tokenizer.frame_rate * num_levels),
        prompt=str(settings.prompt),
        prompt_seconds=inputs.prompt_wav.shape[-1] / rate,
        prompt_roundtrip=PromptRoundtrip(**measured.prompt_roundtrip),
        num_samples=settings.num_samples,
        **measured.speed,
        samples=[acoustic_stats(s, rate) for s in measured.samples],
        true_continuation=_true_continuation(inputs.truth_wav, rate, measured.truth_speech),
        speech=measured.speech,
        regeneration=measured.regen.summary(rate),
        loss_curves=curves.curve_names(measured.train_log, tokenizer.num_levels) or None,
        settings=settings.model_dump(mode="json"),
        identity=inputs.identity,
    )


#: The prompt followed by its true continuation, in the report folder.
TRUE_CONTINUATION_WAV = "true_continuation.wav"


def _true_continuation(
    truth: torch.Tensor | None, rate: int, speech: dict[str, Any] | None
) -> dict[str, Any] | None:
    if truth is None:
        return None
    wav = truth[0, 0].numpy()
    stats = acoustic_stats(wav, rate)
    found = {"file": TRUE_CONTINUATION_WAV, "seconds": wav.size / rate, "stats": stats}
    return found if speech is None else {**found, "speech": speech}


def _write_report(
    out: Path, inputs: _Inputs, measured: _Measured, summary: EvaluationSummary
) -> None:
    """The report folder, whole: audio, spectrograms, index.html, and summary.json last."""
    rate = inputs.tokenizer.sample_rate
    prompt_np = inputs.prompt_wav[0, 0].numpy()
    with atomic_dir(out) as tmp:
        _write_wav(tmp / "prompt.wav", prompt_np, rate)
        _write_wav(tmp / "prompt_roundtrip.wav", measured.prompt_back, rate)
        for i, sample in enumerate(measured.samples):
            both = np.concatenate([prompt_np, sample])
            _write_wav(tmp / f"continuation_{i}.wav", both, rate)
            _plot_spectrogram(both, rate, prompt_np.size, tmp / f"spectrogram_{i}.png")
        if inputs.truth_wav is not None:
            both = np.concatenate([prompt_np, inputs.truth_wav[0, 0].numpy()])
            _write_wav(tmp / TRUE_CONTINUATION_WAV, both, rate)
            _plot_spectrogram(both, rate, prompt_np.size, tmp / "spectrogram_true.png")
        step, levels = summary.checkpoint_step, summary.num_levels
        curves.write_loss_curves(measured.train_log, step, measured.validation, tmp, levels)
        measured.regen.write(tmp, rate)
        (tmp / "index.html").write_text(report.evaluation_html(summary, out))
        outputs.write_owner_marker(tmp, REPORT_KIND)  # the new folder replaces the claimed one
        (tmp / "summary.json").write_text(summary.dumps())  # written last


def _evaluate_owned(
    inputs: _Inputs,
    checkpoint: Path,
    dataset: str | Path,
    out: Path,
    settings: EvaluateSettings,
) -> ReportRecord:
    """evaluate once `out` is ours and locked: measure, then write the report folder whole."""
    config = json.loads((checkpoint / "config.json").read_text())
    layout = make_layout(config.get("layout", "flatten"))
    train_settings = checkpoint_facts.train_settings(checkpoint)
    measured = _measure(inputs, checkpoint, dataset, layout, train_settings, settings)
    summary = _summary(inputs, checkpoint, dataset, layout, train_settings, settings, measured)
    _write_report(out, inputs, measured, summary)
    return _record_from_summary(out, summary)
