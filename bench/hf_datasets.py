"""Opening a token dataset with Hugging Face `datasets` beside codecflow's reader and plain pyarrow:
time, Arrow memory allocated and bytes written to datasets' cache, on the same dataset.

    uv run python bench/hf_datasets.py                 # 60 min of speech, mu-law, 1 h shards
    uv run python bench/hf_datasets.py --minutes 10 --json x.json

The dataset: `--minutes` one-minute 16 kHz FLACs of the repository's real speech (made as
bench/tokenize_throughput.py makes them), tokenized by `tokenize_manifest` with default settings
(mu-law-256: 57.6 MB of codes per audio hour; one train shard, one val shard). Each side opens
the train split and reads every segment's codes as `[K, F]` numpy:

- `TokenReader`: codecflow's reader (memory maps, views);
- `pyarrow open_stream`: `pa.ipc.open_stream(pa.memory_map(shard)).read_all()`;
- `datasets from_file`: `datasets.Dataset.from_file(shard)` per train shard, concatenated;
  codes read with `with_format("numpy")`;
- `datasets load_dataset`: `datasets.load_dataset(<folder>, split="train")` (the card's
  `configs`), into a fresh cache; codes read as above.

"allocated" is `pa.total_allocated_bytes()` after opening minus before (Arrow memory: a view of
a memory map allocates none); "cache written" the bytes that appeared in the run's temporary
folder, which holds datasets' cache (`HF_DATASETS_CACHE`, and `cache_dir` of load_dataset).
Times are the best of `--repeats` (a fresh cache for each load_dataset round).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow as pa

sys.path.insert(0, str(Path(__file__).parent))  # bench/: the corpus of tokenize_throughput.py

from tokenize_throughput import _manifest, _speech_corpus  # noqa: E402


def _folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def _measure(open_side: Callable[[], Any], read_side: Callable[[Any], int], cache: Path) -> dict:
    """One round: open (timed, Arrow allocation and cache growth counted), then read all codes."""
    allocated, cached = pa.total_allocated_bytes(), _folder_bytes(cache)
    started = time.perf_counter()
    handle = open_side()
    opened = time.perf_counter() - started
    grown = pa.total_allocated_bytes() - allocated
    written = _folder_bytes(cache) - cached
    started = time.perf_counter()
    values = read_side(handle)
    return {
        "open_s": opened,
        "read_s": time.perf_counter() - started,
        "allocated": grown,
        "cache_written": written,
        "codes_read": values,
    }


def _sides(dataset: Path, cache: Path) -> dict[str, tuple[Callable[[], Any], Callable[[Any], int]]]:
    import datasets

    from codecflow.tasks.data.token_dataset import TokenReader, read_dataset_info

    shards = [
        str(dataset / s.file) for s in read_dataset_info(dataset).shards if s.split == "train"
    ]

    def reader_codes(reader: TokenReader) -> int:
        return sum(reader.segment_codes(i).size for i in range(len(reader)))

    def arrow_open() -> pa.Table:
        return pa.concat_tables(pa.ipc.open_stream(pa.memory_map(s)).read_all() for s in shards)

    def arrow_codes(table: pa.Table) -> int:
        return sum(
            chunk.values.values.to_numpy(zero_copy_only=True).size
            for chunk in table.column("codes").chunks
        )

    def hf_codes(ds: Any) -> int:
        rows = ds.with_format("numpy")
        return sum(rows[i]["codes"].size for i in range(len(rows)))

    def from_file() -> Any:
        return datasets.concatenate_datasets([datasets.Dataset.from_file(s) for s in shards])

    def load() -> Any:
        return datasets.load_dataset(str(dataset), split="train", cache_dir=str(cache))

    return {
        "TokenReader": (lambda: TokenReader(dataset, "train"), reader_codes),
        "pyarrow open_stream": (arrow_open, arrow_codes),
        "datasets from_file": (from_file, hf_codes),
        "datasets load_dataset": (load, hf_codes),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--minutes", type=int, default=60)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="codecflow-bench-hf-") as tmp_name:
        tmp = Path(tmp_name)
        os.environ["HF_DATASETS_CACHE"] = str(tmp / "hf-cache")  # before datasets is imported
        os.environ["HF_DATASETS_OFFLINE"] = "1"
        from codecflow.schemas.configs import TokenizeSettings
        from codecflow.tasks.tokenize.finalize import tokenize_manifest

        audio = _speech_corpus(tmp / "audio", args.minutes)
        manifest, _ = _manifest(audio, tmp / "segments.parquet")
        dataset = tokenize_manifest(manifest, tmp / "tokens", TokenizeSettings()).path
        results: dict[str, dict] = {}
        for round_ in range(args.repeats):
            # A fresh cache folder each round: every load_dataset is a first load.
            for name, (open_side, read_side) in _sides(
                Path(dataset), tmp / f"load-{round_}"
            ).items():
                got = _measure(open_side, read_side, tmp)  # bytes written anywhere in tmp
                best = results.setdefault(name, got)
                for key in ("open_s", "read_s"):
                    best[key] = min(best[key], got[key])
        _print(results, Path(dataset))
        if args.json:
            args.json.write_text(json.dumps(results, indent=2))


def _print(results: dict[str, dict], dataset: Path) -> None:
    from codecflow.tasks.data.token_dataset import read_dataset_info

    train = [s for s in read_dataset_info(dataset).shards if s.split == "train"]
    print(
        f"train split: {len(train)} shard(s), {sum(s.rows for s in train)} segments, "
        f"{sum(s.bytes for s in train):,} bytes, {sum(s.tokens for s in train):,} tokens"
    )
    print(f"{'side':24} {'open s':>8} {'read s':>8} {'allocated':>12} {'cache written':>14}")
    for name, r in results.items():
        print(
            f"{name:24} {r['open_s']:8.3f} {r['read_s']:8.3f} {r['allocated']:12,} "
            f"{r['cache_written']:14,}"
        )


if __name__ == "__main__":
    main()
