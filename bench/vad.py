"""Silero VAD on the embedded corpus against Libri-Light's own voice activity, and the speed of
VAD and of a whole `layout: audio` ingest, per core.

    .venv/bin/python bench/vad.py              # seconds; --json out.json

- IoU: for each file of data/librilight-tiny, the overlap of Silero's speech intervals
  (`tasks.acquire.vad`, Silero's defaults) with the `voice_activity` of the file's Libri-Light
  JSON: total intersection / total union of the two interval sets, in seconds; and over all
  files together.
- Speed: one torch thread (one core): Silero alone on each file's audio, and
  `codecflow.ingest` of the extracted corpus as a plain folder (decode, VAD with an empty
  cache, speakers, manifest), both as x real time (audio seconds / wall seconds), best of 3.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import soundfile as sf
import torch

from codecflow.tasks.acquire.extract import extract_tar_safely
from codecflow.tasks.acquire.vad import VadSettings, voice_activity

REPO = Path(__file__).resolve().parent.parent
TINY_TAR = REPO / "data" / "librilight-tiny" / "librilight-tiny.tar"


def _length(intervals: list[tuple[float, float]]) -> float:
    return sum(e - s for s, e in intervals)


def _intersection(a: list[tuple[float, float]], b: list[tuple[float, float]]) -> float:
    total = 0.0
    for s1, e1 in a:
        for s2, e2 in b:
            total += max(0.0, min(e1, e2) - max(s1, s2))
    return total


def iou_rows(folder: Path) -> list[dict[str, Any]]:
    rows = []
    settings = VadSettings("silero")
    for flac in sorted(folder.rglob("*.flac")):
        meta = json.loads(flac.with_suffix(".json").read_text())
        theirs = [tuple(map(float, p)) for p in meta["voice_activity"]]
        audio, rate = sf.read(flac, dtype="float32")
        ours = [tuple(p) for p in voice_activity(audio, rate, settings)]
        inter = _intersection(ours, theirs)  # type: ignore[arg-type]
        union = _length(ours) + _length(theirs) - inter  # type: ignore[arg-type]
        rows.append(
            {"file": flac.name, "seconds": len(audio) / rate, "intersection": inter,
             "union": union, "iou": inter / union if union else 1.0}
        )  # fmt: skip
    return rows


def best_seconds(fn: Any, repeats: int = 3) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    torch.set_num_threads(1)
    import codecflow

    with tempfile.TemporaryDirectory(prefix="codecflow-vad-bench-") as tmp:
        folder = Path(tmp) / "corpus"
        extract_tar_safely(TINY_TAR, folder)
        rows = iou_rows(folder)
        audio_s = sum(r["seconds"] for r in rows)
        files = sorted(folder.rglob("*.flac"))
        decoded = [sf.read(f, dtype="float32") for f in files]
        settings = VadSettings("silero")
        vad_s = best_seconds(lambda: [voice_activity(a, r, settings) for a, r in decoded])
        runs = iter(range(100))

        def ingest() -> None:
            root = Path(tmp) / f"run{next(runs)}"  # a new root: an empty VAD cache each time
            codecflow.ingest(str(folder), str(root), speaker_from="grandparent", val_fraction=0.3)

        ingest_s = best_seconds(ingest)
    total_inter = sum(r["intersection"] for r in rows)
    total_union = sum(r["union"] for r in rows)
    result = {
        "files": rows,
        "iou_all": total_inter / total_union,
        "audio_seconds": audio_s,
        "vad_x_real_time_one_core": audio_s / vad_s,
        "ingest_x_real_time_one_core": audio_s / ingest_s,
        "torch_threads": torch.get_num_threads(),
    }
    for r in rows:
        print(f"{r['file']:<28} {r['seconds']:6.2f} s  IoU {r['iou']:.3f}")
    print(f"all files: IoU {result['iou_all']:.3f} over {audio_s:.1f} s of audio")
    print(f"Silero VAD: {result['vad_x_real_time_one_core']:.0f}x real time on one core")
    print(
        f"ingest (decode + VAD + manifest): {result['ingest_x_real_time_one_core']:.0f}x real time"
    )
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    sys.exit(main())
