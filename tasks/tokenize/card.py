"""The dataset card: `README.md` in a token dataset's folder, in the form of Hugging Face's
dataset cards (https://huggingface.co/docs/hub/datasets-cards): YAML front matter that the Hub
and `huggingface_hub.DatasetCard` read (license, task categories, tags, size category, and
`configs` with one `data_files` pattern per split, which `datasets.load_dataset(<folder>)`
follows), then Markdown: provenance (source manifest, acquisition), tokenizer, codes layout,
sizes and splits, and how to load it (pyarrow, `codecflow.open_dataset`, `datasets`, and plain
`webdataset` when the dataset has WebDataset twins).

Written by `finalize_dataset` before `dataset.json` (the commit), atomically, from what the
dataset's plan and commit markers say: the same inputs give the same bytes (no date, no output
path, so the Dask and default runners write identical cards). Its page, `index.html` (the card
as HTML with the shards listed: `card_page`), is written right after it. Neither is part of the
dataset's fingerprint.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

import pyarrow.compute as pc
import yaml

from codecflow.schemas.resources import docs_url
from codecflow.tasks.core import storage
from codecflow.tasks.core.markup import md_code, md_text
from codecflow.tasks.data.manifest import Acquisition, archive_of, read_acquisition
from codecflow.tasks.data.records import DatasetInfo
from codecflow.tasks.data.token_shards import CODES_LAYOUT, METADATA_PREFIX, WEBDATASET_INDEX
from codecflow.tasks.tokenize.card_page import write_card_page
from codecflow.tasks.tokenize.plan import DatasetPlan

__all__ = [
    "CARD_NAME",
    "LIBRILIGHT_LICENSE",
    "LICENSES_BY_MD5",
    "dataset_card",
    "write_dataset_card",
]

#: The card's file name in the dataset folder (the Hub shows a repository's README.md).
CARD_NAME = "README.md"

#: Libri-Light's audio: LibriVox recordings, in the public domain (Libri-Light's README, "the
#: audio files are from LibriVox ... public domain"; https://librivox.org/pages/public-domain/).
#: The Hub has no identifier for it: `other`, named and linked.
LIBRILIGHT_LICENSE: dict[str, str] = {
    "license": "other",
    "license_name": "public-domain",
    "license_link": "https://librivox.org/pages/public-domain/",
}

#: Archives whose audio is not Libri-Light's own, by md5 (their `.extracted.json`): the
#: embedded corpus holds three LibriSpeech clips under CC BY 4.0 (data/librilight-tiny/
#: README.md; its md5 is data/librilight-tiny/librilight-tiny.tar.md5, tested).
LICENSES_BY_MD5: dict[str, dict[str, str]] = {
    "fcc160e9be6467e3b2efa3221f91f726": {"license": "cc-by-4.0"},
}

#: The Hub's size categories (rows: segments), upper bounds exclusive.
_SIZE_CATEGORIES = (
    (1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M"),
    (10_000_000, "1M<n<10M"), (100_000_000, "10M<n<100M"),
)  # fmt: skip


def _licenses(acquisition: Acquisition) -> dict[str, Any]:
    """The front matter's license fields: each archive's (by md5), Libri-Light's otherwise."""
    found: list[dict[str, str]] = []
    for marker in acquisition.archives.values() or [None]:
        md5 = marker.get("md5") if isinstance(marker, dict) else None
        entry = LICENSES_BY_MD5.get(str(md5), LIBRILIGHT_LICENSE)
        if entry not in found:
            found.append(entry)
    if len(found) == 1:
        return dict(found[0])
    fields: dict[str, Any] = {"license": [e["license"] for e in found]}
    for entry in found:
        fields.update({k: v for k, v in entry.items() if k != "license"})
    return fields


def _front_matter(info: DatasetInfo, acquisition: Acquisition) -> dict[str, Any]:
    splits = list(dict.fromkeys(s.split for s in info.shards))
    size = next((name for bound, name in _SIZE_CATEGORIES if info.totals.segments < bound), "")
    return {
        "pretty_name": f"{info.tokenizer['name']} tokens (codecflow)",
        **_licenses(acquisition),
        "language": ["en"],
        "task_categories": ["audio-to-audio"],
        "tags": ["audio", "speech", "audio-tokens", "neural-audio-codec", "libri-light"],
        "size_categories": [size or "n>100M"],
        "configs": [
            {
                "config_name": "default",
                "data_files": [
                    {"split": split, "path": f"shards/{split}-*.arrow"} for split in splits
                ],
            }
        ],
    }


def _counts(plan: DatasetPlan) -> tuple[dict[str, tuple[int, int]], dict[str, int], list[str]]:
    """From plan.parquet: (speakers, books) per split, segments per subset, the archives."""
    columns = ["split", "speaker", "book_id", "subset", "source_path"]
    table = storage.read_parquet(storage.join(plan.out, "plan.parquet"), columns)
    per_split = {}
    for split in pc.unique(table["split"]).to_pylist():
        rows = table.filter(pc.equal(table["split"], split))
        per_split[split] = (
            int(pc.count_distinct(rows["speaker"]).as_py()),
            int(pc.count_distinct(rows["book_id"]).as_py()),
        )
    subsets = {
        str(v["values"]): int(v["counts"]) for v in pc.value_counts(table["subset"]).to_pylist()
    }
    sources = pc.unique(table["source_path"]).to_pylist()
    archives = sorted({a for a in (archive_of(str(s)) for s in sources) if a is not None})
    return per_split, dict(sorted(subsets.items())), archives


def _transcripts(plan: DatasetPlan) -> list[str]:
    """The card's word count: segments, hours and words with a transcript, per split."""
    if not plan.has_text:
        return []
    columns = ["split", "duration_s", "text"]
    table = storage.read_parquet(storage.join(plan.out, "plan.parquet"), columns)
    lines = [
        "## Transcripts",
        "",
        "Each shard row has a `text` column: the segment's transcript, or null. From the "
        "source's sidecar files, LibriSpeech's `.trans.txt` or a metadata table "
        "(`manifest/texts.parquet`).",
        "",
        "| split | segments with text | hours with text | words |",
        "|---|---:|---:|---:|",
    ]
    for split in sorted(pc.unique(table["split"]).to_pylist()):
        rows = table.filter(pc.and_(pc.equal(table["split"], split), pc.is_valid(table["text"])))
        words = sum(len(str(t).split()) for t in rows["text"].to_pylist())
        hours = float(pc.sum(rows["duration_s"]).as_py() or 0.0) / 3600
        lines.append(f"| {md_text(split)} | {rows.num_rows:,} | {hours:.3f} | {words:,} |")
    return [*lines, ""]


def _provenance(
    plan: DatasetPlan, info: DatasetInfo, acquisition: Acquisition, subsets: Mapping[str, int]
) -> list[str]:
    lines = [
        "## Provenance",
        "",
        f"- Source manifest: {md_code(info.manifest)} (sha256 `{plan.manifest_sha256}`), the "
        "segment manifest of codecflow's acquire stage: Libri-Light's layout and metadata, cut "
        "into segments by voice activity (Libri-Light's `cut_by_vad.py` semantics), speakers split "
        "so that none is in two splits.",
    ]
    for name, marker in acquisition.archives.items():
        if isinstance(marker, dict):
            source = marker.get("source") or marker.get("archive")
            lines.append(
                f"- Archive {md_code(name)}: from {md_code(source)}, md5 "
                f"{md_code(marker.get('md5'))}, {md_text(marker.get('n_files'))} files extracted."
            )
        else:
            lines.append(f"- Archive {md_code(name)}: no extraction record (extracted by hand).")
    if subsets:
        lines.append(
            "- Libri-Light subsets: "
            + ", ".join(f"{md_code(s)} ({n} segments)" for s, n in subsets.items())
            + "."
        )
    summary = acquisition.summary
    if summary:
        lines.append(
            f"- Acquisition: {summary.get('files_accepted')} of {summary.get('files_seen')} "
            f"files accepted ({summary.get('files_rejected')} rejected), segments of at most "
            f"{summary.get('target_len_sec')} s, split seed {summary.get('seed')} (the "
            "manifest's `summary.json`)."
        )
    lines.append(
        f"- Tokenized by codecflow's tokenize stage; {info.n_rejects} segments could not be "
        f"encoded (`rejects.parquet`). Fingerprint `{info.fingerprint}` (`dataset.json`)."
    )
    return lines


def _table_cell(value: Any) -> str:
    return str(value).replace("|", "\\|")


def _tokenizer(info: DatasetInfo) -> list[str]:
    spec = info.tokenizer
    rows = [
        ("name", md_code(spec["name"])),
        ("levels (K)", spec["num_levels"]),
        ("codebook size", spec["codebook_size"]),
        ("sample rate", f"{spec['sample_rate']} Hz"),
        ("frame rate", f"{spec['frame_rate']} frames/s"),
        ("samples per frame", spec.get("samples_per_frame", "")),
        ("token dtype", f"`{info.dtype}`"),
    ]
    if "checkpoint_sha256" in spec:
        rows.append(("checkpoint sha256", f"`{spec['checkpoint_sha256']}`"))
    load = "codecflow.load_tokenizer(" + json.dumps(spec["name"]) + ")"
    return [
        "## Tokenizer",
        "",
        "| | |",
        "|---|---|",
        # A pipe would end the cell, even inside a code span (GFM): escaped.
        *(f"| {key} | {_table_cell(value)} |" for key, value in rows),
        "",
        f"{md_code(load)} builds it (`encode_audio`, `decode`).",
    ]


def _layout(info: DatasetInfo) -> list[str]:
    return [
        "## Layout",
        "",
        f"`shards/<split>-NNNNN.arrow`: uncompressed Arrow IPC **streams** (format version "
        f"{info.format_version}), one row per segment, in segment-id order. Columns: "
        "`segment_id`, `speaker`, `book_id`, `split` (strings), `n_frames` (int64, F) and "
        f"`codes`, `list<list<{info.dtype}>>`: {CODES_LAYOUT}.",
        "",
        f"Each shard's schema metadata holds the tokenizer's facts (`{METADATA_PREFIX}tokenizer`, "
        f"`num_levels`, `codebook_size`, `sample_rate`, `frame_rate`, `dtype`, `format_version`, "
        "`dataset_fingerprint`, `tokenizer_spec`). `dataset.json` lists every shard with its "
        "rows, bytes and sha256; `size_report.json` has the size accounting"
        + (
            ". `shards/<split>-NNNNN.tar`: WebDataset twins of the same rows, `<key>.codes.npy` "
            "(the `[K, F]` codes) and `<key>.json` (the segment's fields and the same facts, "
            "with `codes_shape`: the keys that size the axes, `[num_levels, n_frames]`); "
            f"`{WEBDATASET_INDEX}` holds the facts once and each split's tars."
            if "webdataset" in info.formats
            else "."
        ),
    ]


def _sizes(
    info: DatasetInfo, report: Mapping[str, Any], per_split: Mapping[str, tuple[int, int]]
) -> list[str]:
    lines = [
        "## Sizes and splits",
        "",
        "| split | shards | segments | speakers | books | hours | frames | tokens | bytes |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for split in dict.fromkeys(s.split for s in info.shards):
        shards = [s for s in info.shards if s.split == split]
        figures = report.get(split, {})
        speakers, books = per_split.get(split, (0, 0))
        lines.append(
            f"| {split} | {len(shards)} | {sum(s.rows for s in shards):,} | {speakers} | {books} "
            f"| {float(figures.get('audio_hours', 0.0)):.3f} | {sum(s.frames for s in shards):,} "
            f"| {sum(s.tokens for s in shards):,} | {sum(s.bytes for s in shards):,} |"
        )
    total = info.totals
    lines.append(
        f"| total | {len(info.shards)} | {total.segments:,} | | | {float(total.audio_hours):.3f} "
        f"| {total.frames:,} | {total.tokens:,} | {total.bytes:,} |"
    )
    lines += ["", "Speakers never appear in two splits."]
    return lines


def _loading(info: DatasetInfo) -> list[str]:
    first = next(s for s in info.shards)
    split = first.split
    # Always the published page, never a path into a locally built site: the card travels with
    # the dataset (to a bucket, to the Hub), and a dataset's bytes must not depend on whether
    # the docs were built on the machine that wrote it (local and S3 datasets are identical).
    guide = docs_url("guides/datasets")
    return [
        "## Loading",
        "",
        f"The formats and every way to read them: [Token datasets and formats]({guide}).",
        "",
        "From this folder. Plain pyarrow, without codecflow (the shards are IPC streams):",
        "",
        "```python",
        "import pyarrow as pa",
        "",
        f'with pa.memory_map("{first.file}") as source:',
        "    table = pa.ipc.open_stream(source).read_all()  # no copy: views of the map",
        f'print(table.schema.metadata[b"{METADATA_PREFIX}num_levels"])  # K',
        'codes = table.column("codes")[0].as_py()  # K lists of F ints: codes[k][f]',
        "```",
        "",
        "codecflow (`pip install` the repository, or `uv run` in it): torch datasets of "
        "segments and of LM windows, the reader underneath maps the shards without a copy:",
        "",
        "```python",
        "import codecflow",
        "",
        'ds = codecflow.open_dataset(".")',
        f'segments = ds.segments("{split}")  # item: {{"codes": int64 [K, F], "segment_id", ...}}',
        f'windows = ds.windows("{split}", block_size=256)  # (inputs, targets), int64 [L] each',
        "```",
        "",
        "Hugging Face `datasets`: `Dataset.from_file` maps a shard in place (no copy, no "
        "cache); `load_dataset` follows this card's `configs` but first copies the shards into "
        "its cache (`~/.cache/huggingface/datasets`):",
        "",
        "```python",
        "import glob",
        "import os",
        "",
        "import datasets",
        "",
        "train = datasets.concatenate_datasets(",
        f'    [datasets.Dataset.from_file(f) for f in sorted(glob.glob("shards/{split}-*.arrow"))]',
        ")",
        'codes = train.with_format("numpy")[0]["codes"]  # [K, F]',
        "# an absolute path: datasets names the dataset after the folder",
        f'copied = datasets.load_dataset(os.path.abspath("."), split="{split}")',
        "```",
        *(_webdataset_loading(split) if "webdataset" in info.formats else []),
    ]


def _webdataset_loading(split: str) -> list[str]:
    return [
        "",
        f"Plain `webdataset`, without codecflow: `{WEBDATASET_INDEX}` lists each split's tars "
        "beside it and says what the codes are:",
        "",
        "```python",
        "import json",
        "",
        "import webdataset as wds",
        "",
        f'with open("{WEBDATASET_INDEX}") as f:',
        "    index = json.load(f)",
        f'urls = ["shards/" + tar["url"] for tar in index["splits"]["{split}"]]',
        "sample = next(iter(wds.WebDataset(urls, shardshuffle=False).decode()))",
        "meta = sample[\"json\"]  # the segment's fields and the tokenizer's facts",
        'codes = sample["codes.npy"]  # [K, F]: meta["num_levels"], meta["n_frames"]',
        "```",
    ]


def dataset_card(plan: DatasetPlan, info: DatasetInfo, report: Mapping[str, Any]) -> str:
    """The card's text for the dataset of `plan` whose dataset.json will hold `info`, with the
    size report `report` (`tasks.tokenize.sizes.size_report`)."""
    per_split, subsets, archives = _counts(plan)
    acquisition = read_acquisition(plan.manifest, plan.audio_root, archives)
    front = yaml.safe_dump(_front_matter(info, acquisition), sort_keys=False)
    sections: Sequence[list[str]] = (
        _provenance(plan, info, acquisition, subsets),
        _tokenizer(info),
        _layout(info),
        _sizes(info, report, per_split),
        *([_transcripts(plan)] if plan.has_text else []),
        _loading(info),
    )
    title = (
        f"# {md_text(info.tokenizer['name'])} tokens of {info.totals.segments:,} speech segments "
        f"({float(info.totals.audio_hours):.3f} h)"
    )
    intro = (
        "Audio-codec tokens of Libri-Light-style speech for training audio language models, "
        "written by codecflow's tokenize stage."
    )
    body = "\n\n".join("\n".join(section) for section in sections)
    return f"---\n{front}---\n\n{title}\n\n{intro}\n\n{body}\n"


def write_dataset_card(plan: DatasetPlan, info: DatasetInfo, report: Mapping[str, Any]) -> str:
    """Write the card into the dataset folder, then its page (`card_page.PAGE_NAME`, the card
    as HTML with the shards listed), each atomically (one PUT on an object store); the card's
    URL."""
    url = storage.join(plan.out, CARD_NAME)
    card = dataset_card(plan, info, report)
    with storage.open_atomic_write(url) as f:
        f.write(card.encode())
    write_card_page(plan.out, card, info)
    return url
