"""Build `data/librilight-tiny/`: a three-file corpus laid out exactly like Libri-Light.

Run from the repository root:

    uv run python scripts/build_tiny_corpus.py

Inputs are the LibriSpeech clips in `/work/shared/data/speech/` (22.05 kHz Ogg Vorbis, CC BY 4.0,
each with a `.txt` attribution). For each clip the script

1. decodes it with soundfile, resamples it to 16 kHz mono with `torchaudio.functional.resample`
   and quantises it to 16-bit PCM (Libri-Light's format);
2. runs a small energy VAD (see `energy_vad`) and a crude SNR estimate (see `estimate_snr`), the
   two numbers Libri-Light stores per file (Libri-Light's own come from wav2letter's VAD, which we
   do not have here);
3. writes `small/<speaker>/<book_dir>/<file>.flac`, `<file>.json` (Libri-Light's metadata keys:
   `speaker`, `book_meta`, `snr`, `voice_activity`) and the attribution `<file>.txt`.

The `small/` tree is built in a temporary folder and packed into `librilight-tiny.tar` (members
`small/...`, like Libri-Light's `small.tar`) with deterministic bytes: sorted names, mtime 0,
uid/gid 0, empty owner names, modes 0644/0755. Its md5 goes to `librilight-tiny.tar.md5`. Running
the script twice gives the same md5 with the same soundfile/libsndfile and torch versions (the FLAC
encoder and the resampler are part of the bytes).

The evaluation prompt `prompt_librilight_uk_4s.wav` is NOT part of the corpus (a model must never
train on its evaluation prompt); it is copied to `data/prompts/` with its own README.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import sys
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
import torchaudio.functional as AF

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # so `tasks` imports when the package is not installed

from codecflow.tasks.core.storage import atomic_file, atomic_write_bytes  # noqa: E402

SPEECH_DIR = Path("/work/shared/data/speech")
PROMPT_NAME = "prompt_librilight_uk_4s.wav"
SAMPLE_RATE = 16_000  # Libri-Light's sample rate
SUBSET = "small"  # Libri-Light's smallest subset folder name
TAR_NAME = "librilight-tiny.tar"

# --- VAD parameters (documented in the corpus README) ---
FRAME_S = 0.030  # 30 ms frames, no overlap
LOW_PERCENTILE = 10.0  # frame-energy percentile taken as the noise floor
HIGH_PERCENTILE = 90.0  # frame-energy percentile taken as the speech level
THRESHOLD_FRACTION = 0.4  # threshold = floor + 0.4 * (speech level - floor), in dB
MIN_SPEECH_S = 0.3  # drop speech runs shorter than this (after merging)
MIN_GAP_S = 0.3  # merge speech runs separated by less than this
ENERGY_FLOOR = 1e-10  # avoids log(0) on digital silence


@dataclass(frozen=True)
class Clip:
    """One LibriSpeech clip and the Libri-Light metadata its attribution lets us fill."""

    stem: str  # LibriSpeech "<speaker>-<chapter>-<utterance>"
    book_dir: str  # Libri-Light's per-book folder name
    title: str
    chapter: str
    reader: str
    authors: tuple[tuple[str, str], ...]  # (first_name, last_name), only when the .txt names them


# LibriSpeech ids are kept: speaker = first number, book_meta.id = second (the chapter id).
CLIPS: tuple[Clip, ...] = (
    Clip(
        stem="198-209-0000",
        book_dir="sense_and_sensibility_209",
        title="Sense and Sensibility",
        chapter="Chapter 18",
        reader="Heather Barnett",
        authors=(("Jane", "Austen"),),
    ),
    Clip(
        stem="3436-172162-0000",
        book_dir="age_of_chivalry_172162",
        title="The Age of Chivalry",
        chapter="Chapter 18: Perceval",
        reader="Anders Lankford",
        authors=(),  # the attribution does not name the author
    ),
    Clip(
        stem="5703-47212-0000",
        book_dir="ashiel_mystery_47212",
        title="Ashiel Mystery - A Detective Story",
        chapter="chapter 2",
        reader="Garth Comira",
        authors=(),  # the attribution does not name the author
    ),
)


def load_16k_pcm16(path: Path) -> np.ndarray:
    """Decode, downmix, resample to 16 kHz and quantise to int16 (what the FLAC will hold)."""
    audio, sr = sf.read(path, dtype="float32", always_2d=True)
    mono = torch.from_numpy(audio.mean(axis=1))
    resampled = AF.resample(mono, orig_freq=sr, new_freq=SAMPLE_RATE).numpy()
    # Explicit rounding and clipping, so the bytes do not depend on libsndfile's float->int path.
    return np.clip(np.round(resampled.astype(np.float64) * 32768.0), -32768, 32767).astype(np.int16)


def frame_energies_db(samples: np.ndarray) -> np.ndarray:
    """Mean power of each non-overlapping 30 ms frame, in dB (the last partial frame is dropped)."""
    frame = int(round(FRAME_S * SAMPLE_RATE))
    n = len(samples) // frame
    frames = samples[: n * frame].reshape(n, frame).astype(np.float64)
    return 10.0 * np.log10(np.mean(frames**2, axis=1) + ENERGY_FLOOR)


def energy_vad(samples: np.ndarray) -> list[list[float]]:
    """Voice activity as [[start_s, end_s], ...], rounded to 2 decimals.

    A frame is speech when its energy (dB) is above floor + 0.4 * (level - floor), where floor and
    level are the 10th and 90th percentiles of the file's frame energies: a threshold relative to
    the file itself, so loudness does not matter. Runs of speech frames separated by less than
    0.3 s are merged, then runs shorter than 0.3 s are dropped.
    """
    energies = frame_energies_db(samples)
    if len(energies) == 0:
        return []
    floor, level = np.percentile(energies, [LOW_PERCENTILE, HIGH_PERCENTILE])
    speech = energies > floor + THRESHOLD_FRACTION * (level - floor)
    runs: list[list[int]] = []  # [first_frame, end_frame) of each run of speech frames
    for i, is_speech in enumerate(speech):
        if not is_speech:
            continue
        if runs and runs[-1][1] == i:
            runs[-1][1] = i + 1
        else:
            runs.append([i, i + 1])
    merged: list[list[int]] = []
    for run in runs:
        if merged and (run[0] - merged[-1][1]) * FRAME_S < MIN_GAP_S:
            merged[-1][1] = run[1]
        else:
            merged.append(list(run))
    return [
        [round(a * FRAME_S, 2), round(b * FRAME_S, 2)]
        for a, b in merged
        if (b - a) * FRAME_S >= MIN_SPEECH_S
    ]


def estimate_snr(samples: np.ndarray, voice_activity: list[list[float]]) -> float:
    """Crude SNR in dB: mean power of the VAD's speech frames over that of the other frames.

    Libri-Light's SNR is also computed "on the basis of Voice Activity Detection"; ours is the
    simplest version of that idea. When every frame is speech, the quietest 10% stand in for noise.
    """
    energies = frame_energies_db(samples)
    power = 10.0 ** (energies / 10.0)
    times = np.arange(len(energies)) * FRAME_S + FRAME_S / 2
    is_speech = np.zeros(len(energies), dtype=bool)
    for start, end in voice_activity:
        is_speech |= (times >= start) & (times < end)
    noise = power[~is_speech]
    if len(noise) == 0:
        noise = np.sort(power)[: max(1, len(power) // 10)]
    signal = power[is_speech] if is_speech.any() else power
    return round(float(10.0 * np.log10(signal.mean() / noise.mean())), 3)


def metadata(clip: Clip, samples: np.ndarray, attribution: str) -> dict:
    """Libri-Light's per-file JSON: `speaker`, `book_meta`, `snr`, `voice_activity`."""
    speaker, chapter_id, _ = clip.stem.split("-")
    voice_activity = energy_vad(samples)
    return {
        "speaker": speaker,
        "book_meta": {
            "id": chapter_id,
            "title": clip.title,
            "description": f"{clip.chapter}, read by {clip.reader}",
            "authors": [
                {"id": None, "first_name": first, "last_name": last, "dob": None, "dod": None}
                for first, last in clip.authors
            ],
            "language": "English",
            "url_librivox": None,  # not given by the attribution
            "url_text_source": None,
            "url_other": "https://www.openslr.org/12/",
            "genre": [],
            "Dramatic Readings": False,
            "meta_genre": "Literature",
            "totaltimesecs": round(len(samples) / SAMPLE_RATE, 2),
            # codecflow additions, not in Libri-Light: where the clip comes from and its licence.
            "reader": clip.reader,
            "librispeech_id": clip.stem,
            "license": "CC BY 4.0",
            "attribution": attribution.strip(),
        },
        "snr": estimate_snr(samples, voice_activity),
        "voice_activity": voice_activity,
    }


def build_tree(speech_dir: Path, out_root: Path) -> list[dict]:
    """Write `small/<speaker>/<book_dir>/<file>.{flac,json,txt}` under `out_root`; return stats."""
    stats = []
    for clip in CLIPS:
        src = speech_dir / f"{clip.stem}.ogg"
        attribution = (speech_dir / f"{clip.stem}.txt").read_text()
        samples = load_16k_pcm16(src)
        meta = metadata(clip, samples, attribution)
        folder = out_root / SUBSET / meta["speaker"] / clip.book_dir
        folder.mkdir(parents=True, exist_ok=True)
        sf.write(
            folder / f"{clip.stem}.flac", samples, SAMPLE_RATE, subtype="PCM_16", format="FLAC"
        )
        (folder / f"{clip.stem}.json").write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
        (folder / f"{clip.stem}.txt").write_text(attribution)
        stats.append(
            {
                "file": f"{SUBSET}/{meta['speaker']}/{clip.book_dir}/{clip.stem}.flac",
                "duration_s": round(len(samples) / SAMPLE_RATE, 3),
                "vad_chunks": len(meta["voice_activity"]),
                "speech_s": round(sum(b - a for a, b in meta["voice_activity"]), 2),
                "snr": meta["snr"],
            }
        )
    return stats


def _tarinfo(name: str, *, is_dir: bool, size: int = 0) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = tarfile.DIRTYPE if is_dir else tarfile.REGTYPE
    info.mode = 0o755 if is_dir else 0o644
    info.size = size
    info.mtime = 0
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


def pack_tar(root: Path, tar_path: Path) -> None:
    """Pack `root/small` into `tar_path` with deterministic bytes (see the module docstring)."""
    entries = [root / SUBSET, *(root / SUBSET).rglob("*")]
    with atomic_file(tar_path) as tmp:
        with tarfile.open(tmp, "w", format=tarfile.PAX_FORMAT) as tar:
            for path in sorted(entries, key=lambda p: p.relative_to(root).as_posix()):
                name = path.relative_to(root).as_posix()
                if path.is_dir():
                    tar.addfile(_tarinfo(name, is_dir=True))
                else:
                    data = path.read_bytes()
                    tar.addfile(_tarinfo(name, is_dir=False, size=len(data)), io.BytesIO(data))


def write_public(path: Path, data: bytes) -> None:
    """Write atomically, then make the file world-readable (mkstemp creates it 0600)."""
    atomic_write_bytes(path, data)
    path.chmod(0o644)


def md5_file(path: Path) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


CORPUS_README = """\
# librilight-tiny

A three-file corpus with exactly the layout and metadata of
[Libri-Light](https://github.com/facebookresearch/libri-light)'s `small.tar`, so that codecflow's
acquisition pipeline (download -> safe extraction -> VAD segmentation -> speaker split) can run
end to end in seconds, offline, in tests and CI.

## Contents

`librilight-tiny.tar` (md5 in `librilight-tiny.tar.md5`) holds:

    small/<speaker>/<book_dir>/<file>.flac   16 kHz mono, 16-bit PCM FLAC
    small/<speaker>/<book_dir>/<file>.json   Libri-Light metadata: speaker, book_meta, snr,
                                             voice_activity
    small/<speaker>/<book_dir>/<file>.txt    the clip's attribution (keep it with the audio)

{table}

## How it was made

`uv run python scripts/build_tiny_corpus.py` (deterministic: running it twice gives the same
tar md5 with the same soundfile/libsndfile and torch versions).

- Source: three LibriSpeech (OpenSLR SLR12) utterances distributed as 22.05 kHz Ogg Vorbis.
  LibriSpeech ids are kept: `speaker` is the first number, `book_meta.id` the second (the
  LibriSpeech chapter id; real Libri-Light uses LibriVox book ids there).
- Audio: decoded with soundfile, resampled to 16 kHz with `torchaudio.functional.resample`,
  rounded to 16-bit PCM, written as FLAC with soundfile.
- `voice_activity`: a simple energy VAD, not wav2letter's (which Libri-Light used). 30 ms
  non-overlapping frames; a frame is speech when its energy in dB is above
  `p10 + 0.4 * (p90 - p10)` (p10/p90: the 10th/90th percentiles of the file's frame energies);
  runs separated by less than 0.3 s are merged, runs shorter than 0.3 s dropped; times rounded
  to 2 decimals.
- `snr`: mean power of the VAD's speech frames over that of the non-speech frames, in dB: crude,
  for filtering experiments only.
- `book_meta`: only what the attributions give (title, chapter, reader, author when named);
  `url_librivox` is null. Keys marked as codecflow additions (`reader`, `librispeech_id`,
  `license`, `attribution`) are not in Libri-Light.
- The tar is deterministic: sorted names, mtime 0, uid/gid 0, empty owner names, modes
  0644/0755, PAX format.

The evaluation prompt (`data/prompts/prompt_librilight_uk_4s.wav`) is deliberately NOT part of
this corpus.

## Licence and attributions

The audio is from LibriSpeech (Vassil Panayotov, Guoguo Chen, Daniel Povey, Sanjeev Khudanpur,
"LibriSpeech: an ASR corpus based on public domain audio books", ICASSP 2015),
https://www.openslr.org/12/, licensed CC BY 4.0
(https://creativecommons.org/licenses/by/4.0/). The recordings are LibriVox readings. Changes:
resampled to 16 kHz, re-encoded as FLAC, metadata added.

{attributions}
"""

PROMPTS_README = """\
# Evaluation prompts

## `prompt_librilight_uk_4s.wav`

- What: two lines of Michael Field's poem "July", read for LibriVox, taken from Libri-Light;
  16 kHz mono, 16-bit PCM WAV, 4 s.
- Why: it is the prompt used in Kyutai's blog post "Neural audio codecs: how to get audio into
  LLMs"; codecflow uses it only to evaluate spoken continuations, so it is deliberately kept out
  of the training corpus (`data/librilight-tiny/`).
- Licence: public domain (LibriVox recordings are in the public domain; Libri-Light).
- Copied byte for byte from the shared speech clips by `scripts/build_tiny_corpus.py`.

## `heldout_3436-172162-0000_6s.flac`

- What: the first 6 s of `3436-172162-0000` ("The Age of Chivalry", chapter 18: Perceval, read
  by Anders Lankford for LibriVox), as the embedded corpus holds it (16 kHz mono, 16-bit FLAC,
  cut with soundfile, no other change).
- Why: a prompt that has its true continuation. With `prompt_seconds: 4` the first 4 s prompt the
  LM and the report plays the next `seconds` of the recording (up to 2 s) beside the generated
  continuations. Speaker 3436 is the demo's validation speaker (`configs/demo.yaml`:
  `val_fraction: 0.2`, seed 0), so the LM never trains on this audio.
- Licence: CC BY 4.0 (https://creativecommons.org/licenses/by/4.0/), from LibriSpeech SLR12
  (https://www.openslr.org/12/; Panayotov et al., ICASSP 2015); the recording is a LibriVox
  reading. Attribution: `heldout_3436-172162-0000_6s.txt`, keep it with the audio. Changes: cut
  to 6 s (the corpus's copy is resampled to 16 kHz and re-encoded as FLAC).
"""


#: The prompt with a true continuation: the first 6 s of the demo's validation speaker's clip.
HELDOUT_CLIP, HELDOUT_SECONDS = "3436-172162-0000", 6


def write_heldout_prompt(tree: Path, speech_dir: Path, prompts_dir: Path) -> None:
    """`data/prompts/heldout_<clip>_6s.flac` (+ .txt): the corpus's 16 kHz copy of the clip, cut."""
    (flac,) = tree.glob(f"small/*/*/{HELDOUT_CLIP}.flac")
    audio, rate = sf.read(str(flac), dtype="int16")
    name = f"heldout_{HELDOUT_CLIP}_{HELDOUT_SECONDS}s"
    with tempfile.TemporaryDirectory() as tmp:
        sf.write(f"{tmp}/{name}.flac", audio[: HELDOUT_SECONDS * rate], rate, subtype="PCM_16")
        write_public(prompts_dir / f"{name}.flac", Path(f"{tmp}/{name}.flac").read_bytes())
    change = f"Changes: the first {HELDOUT_SECONDS} s of {HELDOUT_CLIP} (resampled to 16 kHz, FLAC)"
    text = (
        speech_dir / f"{HELDOUT_CLIP}.txt"
    ).read_text().rstrip() + f"\n{change}, by codecflow.\n"
    write_public(prompts_dir / f"{name}.txt", text.encode())


def write_readmes(out_dir: Path, prompts_dir: Path, speech_dir: Path, stats: list[dict]) -> None:
    rows = ["| file | duration (s) | VAD chunks | speech (s) | snr (dB) |", "|---|---|---|---|---|"]
    rows += [
        f"| `{s['file']}` | {s['duration_s']} | {s['vad_chunks']} | {s['speech_s']} | {s['snr']} |"
        for s in stats
    ]
    attributions = "\n".join(
        f"- `{clip.stem}`: "
        + "; ".join((speech_dir / f"{clip.stem}.txt").read_text().strip().splitlines())
        for clip in CLIPS
    )
    text = CORPUS_README.format(table="\n".join(rows), attributions=attributions)
    write_public(out_dir / "README.md", text.rstrip().encode() + b"\n")
    write_public(prompts_dir / "README.md", PROMPTS_README.encode())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--speech-dir", type=Path, default=SPEECH_DIR)
    parser.add_argument("--out", type=Path, default=REPO / "data" / "librilight-tiny")
    parser.add_argument("--prompts", type=Path, default=REPO / "data" / "prompts")
    args = parser.parse_args(argv)

    # One thread: the resampler's float sums must not depend on the machine's core count.
    torch.set_num_threads(1)
    missing = [
        p.name
        for p in [args.speech_dir / PROMPT_NAME]
        + [args.speech_dir / f"{c.stem}.{ext}" for c in CLIPS for ext in ("ogg", "txt")]
        if not p.is_file()
    ]
    if missing:
        print(f"error: missing in {args.speech_dir}: {', '.join(missing)}", file=sys.stderr)
        return 1

    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="librilight-tiny-") as tmp:
        stats = build_tree(args.speech_dir, Path(tmp))
        pack_tar(Path(tmp), args.out / TAR_NAME)
        write_heldout_prompt(Path(tmp), args.speech_dir, args.prompts)
    md5 = md5_file(args.out / TAR_NAME)
    (args.out / TAR_NAME).chmod(0o644)
    write_public(args.out / f"{TAR_NAME}.md5", f"{md5}  {TAR_NAME}\n".encode())

    write_public(args.prompts / PROMPT_NAME, (args.speech_dir / PROMPT_NAME).read_bytes())
    write_readmes(args.out, args.prompts, args.speech_dir, stats)

    for s in stats:
        print(json.dumps(s))
    size = (args.out / TAR_NAME).stat().st_size
    print(f"{args.out / TAR_NAME}: {size} bytes, md5 {md5}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
