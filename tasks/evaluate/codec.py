"""Evaluate a trained codec on the validation split at each number of levels.

For 1, 2, 4, 8, 16 levels (up to the codec's maximum, and the maximum itself): multi-scale
spectral loss, SI-SDR, log-mel L1, PESQ-WB, STOI (`tasks.evaluate.quality`; a metric no segment
allowed is None) and the bitrate. Writes `levels.json` (the table),
`loss_vs_levels.png`, reconstruction WAVs of a few segments, and `index.html` last.
"""

from __future__ import annotations

import html
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf
import torch

from codecflow.models.codec import RVQCodec
from codecflow.schemas.configs import EvalCodecSettings
from codecflow.tasks.core import outputs, storage
from codecflow.tasks.core.errors import CodecflowError
from codecflow.tasks.core.markup import esc
from codecflow.tasks.core.plots import figure
from codecflow.tasks.core.runtime import resolve_device
from codecflow.tasks.core.storage import atomic_dir, fingerprint
from codecflow.tasks.data.manifest import CODEC_RATE, load_split_audio
from codecflow.tasks.evaluate.html import (
    MISSING_REASONS,
    STYLE,
    audio,
    image,
    measured,
    stamp,
    wide,
)
from codecflow.tasks.evaluate.quality import quality
from codecflow.tasks.loaders import load_codec

__all__ = [
    "CODEC_REPORT_COMMITTED",
    "CODEC_REPORT_KIND",
    "CodecReportRecord",
    "codec_report_identity",
    "default_levels",
    "eval_codec",
    "is_codec_report_committed",
]

#: The kind of folder a codec evaluation owns, and what shows one written before the markers:
#: a file name only codecflow writes (a user's index.html must not make a folder ours).
CODEC_REPORT_KIND = "codec evaluation"

CODEC_REPORT_COMMITTED = ("loss_vs_levels.png",)


#: levels.json's metrics per row, in this order (spectral_loss first: what the plot shows).
_METRICS = ("spectral_loss", "si_sdr_db", "mel_l1", "pesq_wb", "stoi")


@dataclass(frozen=True)
class CodecReportRecord:
    """What a codec evaluation produced: small, picklable, cacheable."""

    path: Path
    table: Path
    levels: tuple[int, ...]
    spectral_loss: tuple[float, ...]


def default_levels(max_levels: int) -> list[int]:
    """The post's 1, 2, 4, 8, 16 up to the codec's maximum, and the maximum itself."""
    return sorted({k for k in (1, 2, 4, 8, 16) if k <= max_levels} | {max_levels})


def is_codec_report_committed(out: Path) -> bool:
    """True when `out` holds a complete codec report (index.html, written last)."""
    return (Path(out) / "index.html").is_file()


def codec_report_identity(
    checkpoint: Path, manifest: str, settings: EvalCodecSettings
) -> dict[str, Any]:
    """What a codec report was computed from (stored in its identity.json)."""
    return {
        "weights": fingerprint(Path(checkpoint) / "model.safetensors"),
        "manifest": storage.sha256(manifest),
        "settings": settings.model_dump(mode="json"),
        # The columns measured: a report of fewer (before PESQ and STOI) is measured again.
        "metrics": list(_METRICS),
    }


def _committed_codec_report(out: Path, identity: Mapping[str, Any]) -> CodecReportRecord | None:
    """The record of the report committed in `out` for `identity`, or None (absent, other)."""
    marker = out / "identity.json"
    if not is_codec_report_committed(out) or not marker.is_file():
        return None
    if json.loads(marker.read_text()) != identity:
        return None
    rows = json.loads((out / "levels.json").read_text())
    return CodecReportRecord(
        path=out,
        table=out / "levels.json",
        levels=tuple(r["levels"] for r in rows),
        spectral_loss=tuple(r["spectral_loss"] for r in rows),
    )


@torch.inference_mode()
def eval_codec(
    checkpoint: Path, manifest: str, out: Path, settings: EvalCodecSettings
) -> CodecReportRecord:
    """Reconstruct validation segments at each number of levels and tabulate the losses.

    A report committed in `out` (index.html) for the same weights, manifest and settings is
    returned as is: its commit marker, not the Prefect cache, says it is done.
    """
    out = Path(out)
    identity = codec_report_identity(checkpoint, manifest, settings)
    done = _committed_codec_report(out, identity)
    if done is not None:
        return done
    device = resolve_device(settings.device)
    codec = load_codec(checkpoint, device)
    max_levels = codec.quantizer.num_levels
    levels = sorted(set(settings.levels)) if settings.levels else default_levels(max_levels)
    if levels[0] < 1 or levels[-1] > max_levels:
        raise CodecflowError(f"codec {checkpoint} has levels 1..{max_levels}; asked for {levels}")
    segments = load_split_audio(manifest, "val", settings.max_segments, settings.max_seconds)
    with outputs.owned_output(out, CODEC_REPORT_KIND, "eval-codec", CODEC_REPORT_COMMITTED):
        return _eval_codec_owned(codec, levels, segments, out, settings, device, identity)


def _eval_codec_owned(
    codec: RVQCodec,
    levels: list[int],
    segments: list[tuple[str, np.ndarray]],
    out: Path,
    settings: EvalCodecSettings,
    device: torch.device,
    identity: Mapping[str, Any],
) -> CodecReportRecord:
    """eval_codec once `out` is ours and locked: measure, then write the report folder whole."""
    codebook_bits = math.log2(codec.quantizer.codebook_size)
    frame_rate = codec.frame_rate  # 125 Hz for the post's 7 blocks (128x)

    rows: list[dict[str, Any]] = []
    reconstructions: dict[int, list[np.ndarray]] = {k: [] for k in levels}
    for k in levels:
        scores: dict[str, list[float]] = {m: [] for m in _METRICS}
        for index, (_, clip) in enumerate(segments):
            wav = torch.from_numpy(clip).view(1, 1, -1).to(device)  # [1, 1, T]
            codes = codec.encode(wav, k)  # [1, k, F]
            rebuilt = codec.decode(codes)[..., : wav.shape[-1]]  # [1, 1, T]
            rebuilt_np = rebuilt[0, 0].float().cpu().numpy()
            for metric, value in quality(clip, rebuilt_np, CODEC_RATE).items():
                if value is not None:
                    scores[metric].append(value)
            if index < settings.n_wavs:
                reconstructions[k].append(rebuilt_np)
        means = {m: float(np.mean(v)) if v else None for m, v in scores.items()}
        rows.append(
            {
                "levels": k,
                **means,
                # levels x log2(codebook) bits per frame, frame_rate frames per second.
                "bitrate_bps": k * codebook_bits * frame_rate,
                "segments": len(segments),
            }
        )

    with atomic_dir(out) as tmp:
        (tmp / "levels.json").write_text(json.dumps(rows, indent=2) + "\n")
        _plot(rows, tmp / "loss_vs_levels.png")
        for index, (segment_id, clip) in enumerate(segments[: settings.n_wavs]):
            sf.write(str(tmp / f"{segment_id}_original.wav"), clip, CODEC_RATE, subtype="PCM_16")
            for k in levels:
                clipped = np.clip(reconstructions[k][index], -1.0, 1.0)
                sf.write(str(tmp / f"{segment_id}_levels{k}.wav"), clipped, CODEC_RATE, "PCM_16")
        outputs.write_owner_marker(tmp, CODEC_REPORT_KIND)  # replaces the claimed folder
        (tmp / "identity.json").write_text(json.dumps(identity, indent=2) + "\n")
        (tmp / "index.html").write_text(_html(rows, segments[: settings.n_wavs], levels))  # last
    return CodecReportRecord(
        path=out,
        table=out / "levels.json",
        levels=tuple(levels),
        spectral_loss=tuple(r["spectral_loss"] for r in rows),
    )


def _plot(rows: Sequence[Mapping[str, Any]], path: Path) -> None:
    with figure(path, size=(5, 3.5)) as ax:
        ax.plot([r["levels"] for r in rows], [r["spectral_loss"] for r in rows], marker="o")
        ax.set_xscale("log", base=2)
        ax.set_xlabel("RVQ levels")
        ax.set_ylabel("multi-scale spectral loss")


def _html(
    rows: Sequence[Mapping[str, Any]], segments: Sequence[tuple[str, np.ndarray]], levels: list[int]
) -> str:
    header = "".join(f"<th>{html.escape(k)}</th>" for k in rows[0])
    body = "".join(
        "<tr>"
        + "".join(
            f"<td>{v:.4g}</td>"
            if isinstance(v, float)
            else f"<td>{measured(None, MISSING_REASONS.get(k))}</td>"
            if v is None
            else f"<td>{html.escape(str(v))}</td>"
            for k, v in r.items()
        )
        + "</tr>"
        for r in rows
    )
    # The segment id comes from a tar member's name: escaped as text, percent-encoded in a URL.
    players = "".join(
        f"<h3>{esc(sid)}</h3><p>original {audio(f'{sid}_original.wav')}</p>"
        + "".join(f"<p>{k} levels {audio(f'{sid}_levels{k}.wav')}</p>" for k in levels)
        for sid, _ in segments
    )
    return (
        "<!doctype html><html lang='en'><head><meta charset='utf-8'><title>codec evaluation"
        f"</title><style>{STYLE}</style></head><body>"
        "<h1>Codec reconstruction by number of levels</h1>"
        f"{wide(f'<table><tr>{header}</tr>{body}</table>')}"
        f"{image('loss_vs_levels.png', 'loss vs levels')}{players}{stamp()}</body></html>\n"
    )
