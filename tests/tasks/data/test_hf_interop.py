"""Hugging Face `datasets` on a token dataset: `Dataset.from_file` maps each shard (an Arrow IPC
stream) in place, with no copy and no cache file, and reads the codes TokenReader reads;
`load_dataset(<folder>)` follows the dataset card's `configs` to the splits but copies the
shards into its cache (measured here, as the datasets guide says); the card's `datasets` snippet runs."""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from codecflow.tasks.data.token_dataset import TokenReader, read_dataset_info


def _cache_bytes() -> int:
    root = Path(os.environ["HF_DATASETS_CACHE"])
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file())


def test_from_file_maps_each_shard_in_place_with_the_readers_codes(tiny_dataset: Path) -> None:
    import datasets

    info = read_dataset_info(tiny_dataset)
    for split in ("train", "val"):
        with TokenReader(tiny_dataset, split) as reader:
            i = 0
            for shard in (s for s in info.shards if s.split == split):
                path = str(tiny_dataset / shard.file)
                allocated, cached = pa.total_allocated_bytes(), _cache_bytes()
                ds = datasets.Dataset.from_file(path)
                assert pa.total_allocated_bytes() == allocated and _cache_bytes() == cached
                assert [f["filename"] for f in ds.cache_files] == [path]  # the shard itself
                assert ds.features["codes"] == datasets.List(datasets.List(datasets.Value("uint8")))
                assert ds.num_rows == shard.rows
                rows = ds.with_format("numpy")
                for row in range(ds.num_rows):
                    codes = rows[row]["codes"]  # [K, F]
                    np.testing.assert_array_equal(codes, reader[i].codes)
                    assert ds[row]["segment_id"] == reader[i].segment_id
                    i += 1
            assert i == len(reader)


def test_load_dataset_follows_the_card_and_copies_into_its_cache(
    tiny_dataset: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import datasets

    info = read_dataset_info(tiny_dataset)
    before = _cache_bytes()
    loaded = datasets.load_dataset(str(tiny_dataset))
    assert set(loaded) == {"train", "val"}
    for split, ds in loaded.items():
        assert ds.num_rows == sum(s.rows for s in info.shards if s.split == split)
        (cache,) = {Path(f["filename"]).parent for f in ds.cache_files}
        assert Path(os.environ["HF_DATASETS_CACHE"]) in cache.parents  # not the shards
        # Rewritten: the copy's schema has datasets' metadata, not the tokenizer's facts.
        copy = pa.ipc.open_stream(ds.cache_files[0]["filename"]).schema.metadata
        assert b"huggingface" in copy and b"codecflow.num_levels" not in copy
    # A copy: every token (one byte each here) was written again into the cache.
    assert _cache_bytes() - before >= info.totals.tokens
    # The card's snippet, as written, from the dataset folder.
    text = (tiny_dataset / "README.md").read_text()
    snippet = re.findall(r"```python\n(.*?)```", text, re.S)[2]
    monkeypatch.chdir(tiny_dataset)
    scope: dict = {}
    exec(snippet, scope)
    with TokenReader(tiny_dataset, "train") as reader:
        np.testing.assert_array_equal(scope["codes"], reader[0].codes)
        assert scope["train"].num_rows == scope["copied"].num_rows == len(reader)


@pytest.mark.parametrize("marker", ["arrow-example", "datasets-example"])
def test_the_readmes_arrow_and_datasets_examples_run(marker: str, tiny_dataset: Path) -> None:
    from helpers import REPO

    text = (REPO / "docs" / "guides" / "datasets.md").read_text()
    tag = f"<!-- example: run (tests/tasks/data/test_hf_interop.py, {marker}) -->"
    source = text.split(tag, 1)[1].split("```python\n", 1)[1].split("```", 1)[0]
    demo = "runs/demo/tokens/mu-law-256"
    assert source.count(demo) == 1
    scope: dict = {}
    exec(compile(source.replace(demo, str(tiny_dataset)), "datasets.md", "exec"), scope)
    with TokenReader(tiny_dataset, "train") as reader:
        if marker == "arrow-example":
            assert scope["k"] == reader.num_levels == len(scope["codes"])
            assert scope["codes"] == reader[0].codes.tolist()
        else:
            np.testing.assert_array_equal(scope["codes"], reader[0].codes)
            assert scope["train"].num_rows == len(reader)
