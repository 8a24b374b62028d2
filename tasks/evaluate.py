"""Prompt the LM with speech, sample a continuation, decode it and write an HTML report.

Plain functions, no Prefect: `tasks.wrappers` makes them tasks. The report folder holds
`prompt.wav`, `continuation_<i>.wav` (prompt followed by the sampled audio), `spectrogram.png`,
`index.html` and, written last, `summary.json`.
"""

from __future__ import annotations

import html
import json
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf
import torch
import torchaudio

from models.layouts import make_layout
from models.sampling import generate
from models.tokenizer import AudioTokenizer
from schemas.configs import EvaluateSettings
from tasks.errors import CodecflowError
from tasks.io import atomic_dir
from tasks.plots import figure
from tasks.tokenization import read_dataset_info
from tasks.tokenizers import load_tokenizer
from tasks.train_lm import load_checkpoint, resolve_device

__all__ = [
    "ReportRecord",
    "acoustic_stats",
    "evaluate",
    "is_report_committed",
    "load_prompt",
]

#: Keys of summary.json that downstream tools rely on.
SUMMARY_KEYS = (
    "audio_hours",
    "n_segments",
    "n_tokens",
    "dataset_bytes",
    "train_loss_first",
    "train_loss_last",
    "generated_seconds",
    "generation_tokens_per_s",
)


@dataclass(frozen=True)
class ReportRecord:
    """What an evaluation produced: small, picklable, cacheable."""

    path: Path
    summary: Path
    generated_seconds: float
    generation_tokens_per_s: float


def is_report_committed(out: Path) -> bool:
    """True when `out` holds a complete report (its summary.json exists)."""
    return (Path(out) / "summary.json").is_file()


def load_prompt(path: Path, tokenizer: AudioTokenizer) -> torch.Tensor:
    """Read any audio file as float32 `[1, 1, T]` at the tokenizer's rate, mono, whole frames."""
    path = Path(path)
    if not path.is_file():
        raise CodecflowError(f"prompt audio not found: {path}")
    try:
        audio, rate = sf.read(str(path), dtype="float32", always_2d=True)  # [T, C]
    except sf.LibsndfileError as exc:
        raise CodecflowError(f"cannot read prompt audio {path}: {exc}") from exc
    wav = torch.from_numpy(audio.mean(axis=1)).view(1, 1, -1)  # [1, 1, T]
    if rate != tokenizer.sample_rate:
        wav = torchaudio.functional.resample(wav, rate, tokenizer.sample_rate)  # [1, 1, T']
    whole = wav.shape[-1] // tokenizer.samples_per_frame * tokenizer.samples_per_frame
    if whole == 0:
        raise CodecflowError(f"prompt audio {path} is shorter than one frame")
    return wav[..., :whole]  # [1, 1, F * samples_per_frame]


def acoustic_stats(wav: np.ndarray, sample_rate: int) -> dict[str, float]:
    """RMS level (dBFS), clipping and silence fractions, spectral flatness of a mono signal."""
    eps = 1e-10
    rms = float(np.sqrt(np.mean(wav**2) + eps))
    frame = max(1, sample_rate // 50)  # 20 ms frames
    n = len(wav) // frame
    frames = wav[: n * frame].reshape(n, frame) if n else wav.reshape(1, -1)
    frame_db = 10 * np.log10(np.mean(frames**2, axis=1) + eps)
    spectrum = np.abs(np.fft.rfft(frames, axis=1)) ** 2 + eps
    flatness = np.exp(np.mean(np.log(spectrum), axis=1)) / np.mean(spectrum, axis=1)
    return {
        "rms_dbfs": 20 * np.log10(rms),
        "clipping_fraction": float(np.mean(np.abs(wav) >= 0.999)),
        "silence_fraction": float(np.mean(frame_db < -50.0)),
        "spectral_flatness": float(np.mean(flatness)),
    }


def evaluate(
    checkpoint: Path, dataset: Path, out: Path, settings: EvaluateSettings
) -> ReportRecord:
    """Continue the prompt with the LM and write the report folder `out`."""
    checkpoint, dataset, out = Path(checkpoint), Path(dataset), Path(out)
    device = resolve_device(settings.device)
    model, spec = load_checkpoint(checkpoint, device)
    info = read_dataset_info(dataset)
    if info["tokenizer"] != spec:
        raise CodecflowError(f"checkpoint {checkpoint} was not trained on the tokens of {dataset}")
    tokenizer = load_tokenizer(spec["name"])
    levels = tokenizer.num_levels
    prompt_wav = load_prompt(Path(settings.prompt), tokenizer)  # [1, 1, T]
    layout = make_layout(
        json.loads((checkpoint / "config.json").read_text()).get("layout", "flatten")
    )
    codebook_size = tokenizer.codebook_size
    with torch.inference_mode():
        prompt_codes = tokenizer.encode(prompt_wav)  # [1, K, F_p]
    prompt_frames = prompt_codes.shape[-1]
    # The prompt's sequence up to its last whole step: the delay pattern's trailing PAD steps
    # would put PADs mid-stream, which training never shows the model.
    prompt_tokens = layout.to_sequence(prompt_codes, codebook_size)[
        :, : prompt_frames * levels
    ]  # [1, P]
    prompt_batch = prompt_tokens.repeat(settings.num_samples, 1).to(device)  # [B, P]

    new_frames = max(1, round(settings.generate_seconds * tokenizer.frame_rate))
    generator = torch.Generator(device=device).manual_seed(settings.seed)
    started = time.perf_counter()
    result = generate(
        model,
        prompt_batch,
        new_frames * levels,
        temperature=settings.temperature,
        top_k=settings.top_k,
        top_p=settings.top_p,
        frame_size=levels,
        generator=generator,
    )
    if device.type == "cuda":
        torch.cuda.synchronize()
    elapsed = time.perf_counter() - started
    new_tokens = result.tokens.cpu()  # [B, new_frames * K]
    full = torch.cat([prompt_batch.cpu(), new_tokens], dim=1)  # [B, P + new_frames * K]
    all_codes = layout.from_sequence(full, levels, codebook_size)  # [B, K, F]
    # Sampling may put a PAD or another level's range where a code belongs: clamp to the codebook.
    codes = all_codes[:, :, prompt_frames:].clamp(0, codebook_size - 1)  # [B, K, F_new]
    new_frames = codes.shape[-1]
    with torch.inference_mode():
        generated = tokenizer.decode(codes)  # [B, 1, F_new * samples_per_frame]

    n_generated = new_tokens.numel()
    generated_seconds = new_frames / tokenizer.frame_rate
    rate = tokenizer.sample_rate
    prompt_np = prompt_wav[0, 0].numpy()
    samples = [generated[i, 0].numpy() for i in range(settings.num_samples)]
    dataset_totals = info["totals"]
    train_metrics = json.loads((checkpoint / "metrics.json").read_text())
    summary: dict[str, Any] = {
        "tokenizer": spec["name"],
        "audio_hours": dataset_totals["audio_hours"],
        "n_segments": dataset_totals["segments"],
        "n_tokens": dataset_totals["tokens"],
        "dataset_bytes": dataset_totals["bytes"],
        "train_steps": train_metrics["steps"],
        "train_loss_first": train_metrics["train_loss_first"],
        "train_loss_last": train_metrics["train_loss_last"],
        "val_loss": train_metrics["val_loss"],
        "n_parameters": train_metrics["n_parameters"],
        "context_tokens": model.config.block_size,
        # 2 048 tokens are 128 ms of mu-law at 16 kHz (the post): the reason it babbles.
        "context_seconds": model.config.block_size / (tokenizer.frame_rate * levels),
        "prompt": str(settings.prompt),
        "prompt_seconds": prompt_np.size / rate,
        "num_samples": settings.num_samples,
        "generated_seconds": generated_seconds,
        "generated_tokens": n_generated,
        "generation_tokens_per_s": n_generated / elapsed,
        "real_time_factor": (generated_seconds * settings.num_samples) / elapsed,
        "n_prefills": result.n_prefills,
        "samples": [acoustic_stats(s, rate) for s in samples],
    }
    with atomic_dir(out) as tmp:
        sf.write(str(tmp / "prompt.wav"), prompt_np, rate, subtype="PCM_16")
        for i, sample in enumerate(samples):
            both = np.concatenate([prompt_np, sample])
            sf.write(str(tmp / f"continuation_{i}.wav"), both, rate, subtype="PCM_16")
        _plot_spectrogram(np.concatenate([prompt_np, samples[0]]), rate, prompt_np.size, tmp)
        (tmp / "index.html").write_text(_html(summary, settings.num_samples))
        (tmp / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")  # written last
    return ReportRecord(
        path=out,
        summary=out / "summary.json",
        generated_seconds=generated_seconds,
        generation_tokens_per_s=summary["generation_tokens_per_s"],
    )


def _plot_spectrogram(wav: np.ndarray, rate: int, prompt_samples: int, folder: Path) -> None:
    spec = torchaudio.transforms.Spectrogram(n_fft=512, hop_length=128)(torch.from_numpy(wav))
    db = 10 * torch.log10(spec + 1e-10)  # [n_fft / 2 + 1, frames]
    with figure(folder / "spectrogram.png", size=(10, 3.5)) as ax:
        extent = (0.0, wav.size / rate, 0.0, rate / 2000)
        ax.imshow(db.numpy(), origin="lower", aspect="auto", extent=extent, cmap="magma")
        ax.axvline(prompt_samples / rate, color="cyan", linestyle="--", label="end of prompt")
        ax.set_xlabel("time (s)")
        ax.set_ylabel("frequency (kHz)")
        ax.legend(loc="upper left")


def _html(summary: Mapping[str, Any], num_samples: int) -> str:
    rows = "\n".join(
        f"<tr><th>{html.escape(k)}</th><td>{html.escape(_fmt(v))}</td></tr>"
        for k, v in summary.items()
        if k != "samples"
    )
    players = "\n".join(
        f'<p>continuation {i}: <audio controls src="continuation_{i}.wav"></audio></p>'
        for i in range(num_samples)
    )
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>codecflow evaluation</title>
<style>body{{font-family:sans-serif;max-width:60em;margin:2em auto}}
th{{text-align:left;padding-right:2em}}</style></head>
<body>
<h1>codecflow evaluation: {html.escape(str(summary["tokenizer"]))} LM</h1>
<p>prompt: <audio controls src="prompt.wav"></audio></p>
{players}
<img src="spectrogram.png" alt="spectrogram of the prompt and continuation 0" width="100%">
<h2>Metrics</h2>
<table>{rows}</table>
<h2>Acoustic sanity per sample</h2>
<pre>{html.escape(json.dumps(summary["samples"], indent=2))}</pre>
</body></html>
"""


def _fmt(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)
