"""Compare tokenizers on the same held-out segments: the post's story in one page.

For every tokenizer given (mu-law, `codec:<checkpoint>@<levels>`, `mimi_<K>_rvq`), each
validation segment goes through `encode` and `decode` (timed), back to 16 kHz, and is scored
against the original (`tasks.evaluate.quality`: SI-SDR, PESQ-WB, STOI, mel L1, multi-scale
spectral loss). The report folder:

    comparison.json         the table (`tasks.data.records.CodecComparison`), written last
    bitrate_quality.png     PESQ-WB and STOI against bitrate, one point per tokenizer
    audio/original.wav      the first segment; audio/<row>_<name>.wav through each tokenizer
    index.html              the table, the plot and one audio player per row

A report committed in `out` for the same manifest, settings and codec weights is returned as is.
"""

from __future__ import annotations

import logging
import math
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torchaudio

from codecflow.models.tokenizer import AudioTokenizer
from codecflow.schemas.configs import CompareCodecsSettings
from codecflow.schemas.tokenizers import parse_tokenizer_name
from codecflow.tasks.core import outputs, storage
from codecflow.tasks.core.errors import CodecflowError
from codecflow.tasks.core.plots import figure
from codecflow.tasks.core.progress import StepProgress
from codecflow.tasks.core.runtime import resolve_device
from codecflow.tasks.core.storage import atomic_dir, fingerprint
from codecflow.tasks.data.manifest import CODEC_RATE, load_split_audio
from codecflow.tasks.data.records import COMPARISON_KIND, CodecComparison, CodecComparisonRow
from codecflow.tasks.evaluate.acoustics import _write_wav
from codecflow.tasks.evaluate.html import comparison_html
from codecflow.tasks.evaluate.quality import quality
from codecflow.tasks.loaders import codec_preset, load_tokenizer

__all__ = [
    "COMPARISON_COMMITTED",
    "COMPARISON_KIND_OF_FOLDER",
    "ComparisonRecord",
    "compare_codecs",
    "comparison_identity",
    "is_comparison_committed",
]

_LOG = logging.getLogger("codecflow.compare-codecs")

#: The kind of folder a comparison owns, and the file only a comparison writes.
COMPARISON_KIND_OF_FOLDER = "codec comparison"

COMPARISON_COMMITTED = ("bitrate_quality.png",)

_PLOT = "bitrate_quality.png"

_METRICS = ("si_sdr_db", "pesq_wb", "stoi", "mel_l1", "spectral_loss")


@dataclass(frozen=True)
class ComparisonRecord:
    """What a comparison produced: small, picklable, cacheable."""

    path: Path
    table: Path  # comparison.json
    tokenizers: tuple[str, ...]


def is_comparison_committed(out: Path) -> bool:
    """True when `out` holds a complete comparison (comparison.json, written last)."""
    return (Path(out) / "comparison.json").is_file()


def _weights(name: str) -> str | None:
    """The fingerprint of a trained codec's weights (a retrained codec is another row)."""
    parsed = parse_tokenizer_name(name)
    if parsed.kind != "codec" or parsed.checkpoint is None:
        return None
    if codec_preset(parsed.checkpoint) is not None:
        return "untrained preset"
    return fingerprint(Path(parsed.checkpoint) / "model.safetensors")


def comparison_identity(manifest: str, settings: CompareCodecsSettings) -> dict[str, Any]:
    """What a comparison was computed from: the manifest, the settings and the codec weights."""
    return {
        "manifest": storage.sha256(manifest),
        "settings": settings.model_dump(mode="json"),
        "weights": {name: _weights(name) for name in settings.tokenizers},
    }


def _record(out: Path, table: CodecComparison) -> ComparisonRecord:
    names = tuple(r.tokenizer for r in table.rows)
    return ComparisonRecord(path=out, table=out / "comparison.json", tokenizers=names)


def _committed(out: Path, identity: Mapping[str, Any]) -> ComparisonRecord | None:
    if not is_comparison_committed(out):
        return None
    try:
        table = CodecComparison.read(out / "comparison.json")
    except CodecflowError:
        return None  # another version's (or a broken) table: compared again
    return _record(out, table) if table.identity == identity else None


def compare_codecs(manifest: str, out: Path, settings: CompareCodecsSettings) -> ComparisonRecord:
    """Every tokenizer of `settings` on the first validation segments of `manifest`; the report
    folder `out` (comparison.json last). A committed one of the same identity is returned."""
    out = Path(out)
    identity = comparison_identity(manifest, settings)
    done = _committed(out, identity)
    if done is not None:
        return done
    device = resolve_device(settings.device)
    segments = load_split_audio(manifest, "val", settings.max_segments, settings.max_seconds)
    tokenizers = [load_tokenizer(name, device) for name in settings.tokenizers]  # fail early
    with outputs.owned_output(
        out, COMPARISON_KIND_OF_FOLDER, "compare-codecs", COMPARISON_COMMITTED
    ):
        rows, first = [], []
        audio_s = sum(clip.size for _, clip in segments) / CODEC_RATE
        _LOG.info(
            "compare-codecs: %d tokenizers, each on %d segments (%.1f s of audio)",
            len(tokenizers),
            len(segments),
            audio_s,
        )
        # The same cadence as training's lines (tasks/core/progress.py: the first, every 30 s,
        # the last), a step being one segment through encode, decode and the metrics.
        meter = StepProgress(
            _LOG, "compare-codecs", len(tokenizers) * len(segments), "segments", step_name="segment"
        )
        for index, (name, tokenizer) in enumerate(
            zip(settings.tokenizers, tokenizers, strict=True)
        ):
            row, audio = _measure(index, name, tokenizer, segments, device, meter)
            rows.append(row)
            first.append((audio, tokenizer.sample_rate))
        table = CodecComparison(
            kind=COMPARISON_KIND,
            manifest=str(manifest),
            segments=[segment_id for segment_id, _ in segments],
            audio_seconds=audio_s,
            original="audio/original.wav",
            rows=rows,
            identity=identity,
        )
        _write(out, table, segments[0][1], first)
    return _record(out, table)


def _to_rate(wav: np.ndarray, rate: int, target: int) -> torch.Tensor:
    tensor = torch.from_numpy(np.ascontiguousarray(wav, dtype=np.float32))
    return tensor if rate == target else torchaudio.functional.resample(tensor, rate, target)


def _timed(fn: Callable[[], torch.Tensor], device: torch.device) -> tuple[torch.Tensor, float]:
    started = time.perf_counter()
    with torch.inference_mode():
        result = fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return result, time.perf_counter() - started


def _measure(
    index: int,
    name: str,
    tokenizer: AudioTokenizer,
    segments: Sequence[tuple[str, np.ndarray]],
    device: torch.device,
    meter: StepProgress,
) -> tuple[CodecComparisonRow, np.ndarray]:
    """One tokenizer's row, and the first segment through it (at the tokenizer's rate)."""
    rate, spf = tokenizer.sample_rate, tokenizer.samples_per_frame
    # One untimed round trip first: the first call pays for allocations and lazy set-up.
    with torch.inference_mode():
        tokenizer.decode(tokenizer.encode(torch.zeros(1, 1, spf * 2, device=device)))
    scores: dict[str, list[float]] = {m: [] for m in _METRICS}
    encode_s = decode_s = 0.0
    first = np.zeros(0, dtype=np.float32)
    for i, (_, clip) in enumerate(segments):
        wav = _to_rate(clip, CODEC_RATE, rate)
        wav = wav[: max(spf, wav.numel() // spf * spf)].view(1, 1, -1).to(device)  # whole frames
        codes, seconds = _timed(partial(tokenizer.encode, wav), device)  # [1, K, F]
        encode_s += seconds
        back, seconds = _timed(partial(tokenizer.decode, codes), device)  # [1, 1, F * spf]
        decode_s += seconds
        back_np = back[0, 0, : wav.shape[-1]].float().cpu().numpy()
        first = back_np if i == 0 else first
        for metric, value in quality(
            clip, _to_rate(back_np, rate, CODEC_RATE).numpy(), CODEC_RATE
        ).items():
            if value is not None and math.isfinite(value):
                scores[metric].append(value)
        meter.update(index * len(segments) + i + 1)
    audio_s = sum(clip.size for _, clip in segments) / CODEC_RATE
    means = {m: float(np.mean(v)) if v else None for m, v in scores.items()}
    parsed = parse_tokenizer_name(name)
    trained = not (parsed.kind == "codec" and _weights(name) == "untrained preset")
    row = CodecComparisonRow(
        tokenizer=name,
        num_levels=tokenizer.num_levels,
        codebook_size=tokenizer.codebook_size,
        sample_rate=rate,
        frame_rate=tokenizer.frame_rate,
        bitrate_kbps=tokenizer.num_levels
        * math.log2(tokenizer.codebook_size)
        * tokenizer.frame_rate
        / 1000,
        tokens_per_second=tokenizer.frame_rate * tokenizer.num_levels,
        **means,  # type: ignore[arg-type]
        encode_x_realtime=audio_s / encode_s,
        decode_x_realtime=audio_s / decode_s,
        trained=trained,
        audio=f"audio/{index:02d}_{_slug(name)}.wav",
    )
    return row, first


def _slug(name: str) -> str:
    return "-".join(p for p in re.split(r"[^A-Za-z0-9]+", name.split("/")[-1]) if p) or "tokenizer"


def _write(
    out: Path,
    table: CodecComparison,
    original: np.ndarray,
    first: Sequence[tuple[np.ndarray, int]],
) -> None:
    """The report folder, whole: audio, the plot, index.html, comparison.json last."""
    with atomic_dir(out) as tmp:
        (tmp / "audio").mkdir()
        _write_wav(tmp / table.original, original, CODEC_RATE)
        for row, (audio, rate) in zip(table.rows, first, strict=True):
            _write_wav(tmp / row.audio, audio, rate)
        _plot(table.rows, tmp / _PLOT)
        (tmp / "index.html").write_text(comparison_html(table, _PLOT))
        outputs.write_owner_marker(tmp, COMPARISON_KIND_OF_FOLDER)
        (tmp / "comparison.json").write_text(table.dumps())  # last: the commit marker


def _plot(rows: Sequence[CodecComparisonRow], path: Path) -> None:
    """PESQ-WB (filled circles, left axis) and STOI (open squares, right axis) against bitrate,
    one colour per tokenizer named in the legend: names written beside the points overlapped
    where two tokenizers share a bitrate (mu-law-256 and mu-law-256-post), and the STOI points
    had none."""
    from matplotlib.lines import Line2D

    with figure(path, size=(9, 4.5)) as ax:
        right = ax.twinx()
        handles = []
        for i, row in enumerate(rows):
            color = f"C{i % 10}"
            if row.pesq_wb is not None:
                ax.plot([row.bitrate_kbps], [row.pesq_wb], "o", color=color, markersize=7)
            if row.stoi is not None:
                right.plot([row.bitrate_kbps], [row.stoi], "s", color=color, fillstyle="none",
                           markersize=8, markeredgewidth=1.5)  # fmt: skip
            name = row.tokenizer.split("/")[-1] + ("" if row.trained else " (untrained)")
            handles.append(Line2D([], [], color=color, marker="o", linestyle="", label=name))
        handles += [
            Line2D([], [], color="0.3", marker="o", linestyle="", label="PESQ-WB (left)"),
            Line2D([], [], color="0.3", marker="s", fillstyle="none", linestyle="",
                   label="STOI (right)"),
        ]  # fmt: skip
        ax.set_xscale("log")
        ax.set_xlabel("bitrate (kbit/s)")
        ax.set_ylabel("PESQ-WB (MOS-LQO), filled circles")
        ax.set_ylim(1.0, 4.7)
        right.set_ylabel("STOI, open squares")
        right.set_ylim(0.0, 1.05)
        ax.legend(handles=handles, fontsize="small", loc="upper left",
                  bbox_to_anchor=(1.12, 1.0), borderaxespad=0)  # fmt: skip
