"""The Python API as a researcher uses it: the Python API guide's example itself (the block after
its `<!-- example: run (tests/test_python_api.py ...) -->` marker), and `DataLoader(num_workers=2)` over the segments and the
windows of a local dataset (forked workers, Linux's default) and of one on moto's S3 server
(workers started afresh: each unpickles the datasets and maps the shards itself, fetched again
through the shard cache)."""

from __future__ import annotations

import multiprocessing
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from helpers import REPO
from s3_server import upload_folder
from torch.utils.data import DataLoader

import codecflow
from codecflow.tasks.core.storage import CACHE_ENV
from codecflow.tasks.data.shard_cache import entry_path

MARKER = "<!-- example: run (tests/test_python_api.py, on the tiny dataset) -->"
GUIDE = REPO / "docs" / "guides" / "python-api.md"
DEMO_DATASET = "runs/demo/tokens/mu-law-256"


def guide_example() -> str:
    """The Python block of the guide that follows the marker."""
    text = GUIDE.read_text()
    return text.split(MARKER, 1)[1].split("```python\n", 1)[1].split("```", 1)[0]


def _run_example(dataset: str, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    monkeypatch.chdir(REPO)  # the example reads the prompt by its path in the repository
    source = guide_example()
    assert source.count(DEMO_DATASET) == 1
    namespace: dict[str, Any] = {"__name__": "guide_example"}
    exec(compile(source.replace(DEMO_DATASET, dataset), str(GUIDE), "exec"), namespace)
    return namespace


def _check_example(ns: dict[str, Any]) -> None:
    ds, segments = ns["ds"], ns["segments"]
    assert isinstance(ds, codecflow.TokenDataset) and ds.tokenizer_name == "mu-law-256"
    assert ns["inputs"].shape == ns["targets"].shape == (8, 256)
    assert ns["inputs"].dtype == ns["targets"].dtype == torch.int64
    assert torch.equal(ns["inputs"][:, 1:], ns["targets"][:, :-1])
    first, second = segments[0]["n_frames"], segments[1]["n_frames"]
    assert ns["batch"]["codes"].shape == (2, 1, max(first, second))
    wav = ns["wav"]
    assert wav.dtype == torch.float32 and wav.shape == (1, 1, first)  # mu-law: 1 sample/frame
    # mu-law decodes each code to its level, which encodes back to the same code
    assert torch.equal(ns["tokenizer"].encode(wav), segments[0]["codes"][None])
    assert ns["codes"].dtype == torch.int64 and ns["codes"].shape == (1, 1, 4 * 16_000)


def test_guide_example_runs_on_a_local_dataset(
    tiny_dataset: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _check_example(_run_example(str(tiny_dataset), monkeypatch))


def _segments_through(loader: DataLoader[Any]) -> list[dict[str, Any]]:
    """Every segment of the loader's batches, one dict each, in the loader's order."""
    items = []
    for batch in loader:
        for b in range(len(batch["index"])):
            f = int(batch["n_frames"][b])
            items.append({"index": int(batch["index"][b]), "codes": batch["codes"][b, :, :f]})
            items[-1].update({k: batch[k][b] for k in ("segment_id", "speaker", "split")})
    return items


def _check_loaders(
    segments: codecflow.SegmentDataset, windows: codecflow.WindowDataset, context: Any
) -> None:
    """Both datasets through DataLoader(num_workers=2) give what they give in this process."""
    loader = DataLoader(
        segments,
        batch_size=2,
        num_workers=2,
        collate_fn=codecflow.collate_segments,
        multiprocessing_context=context,
    )
    got = _segments_through(loader)
    assert [item["index"] for item in got] == list(range(len(segments)))
    for item in got:
        expected = segments[item["index"]]
        assert torch.equal(item["codes"], expected["codes"])  # [K, F]
        assert all(item[k] == expected[k] for k in ("segment_id", "speaker", "split"))
    subset = torch.utils.data.Subset(windows, range(24))
    loader = DataLoader(subset, batch_size=4, num_workers=2, multiprocessing_context=context)
    batches = list(loader)
    inputs = torch.cat([x for x, _ in batches])  # [24, L]
    targets = torch.cat([y for _, y in batches])  # [24, L]
    assert inputs.shape == (24, windows.block_size) and inputs.dtype == torch.int64
    assert torch.equal(inputs, torch.stack([windows[i][0] for i in range(24)]))
    assert torch.equal(targets, torch.stack([windows[i][1] for i in range(24)]))


def test_loader_workers_read_a_local_dataset(tiny_dataset: Path) -> None:
    ds = codecflow.open_dataset(tiny_dataset)
    with ds.segments("val") as segments, ds.windows("train", 64, "delay", "random") as windows:
        _check_loaders(segments, windows, context=None)  # forked: Linux's default


def test_loader_workers_started_afresh_fetch_s3_shards_through_the_cache(
    tiny_dataset: Path, s3_bucket: str
) -> None:
    """Forkserver workers (started afresh like spawn's; the server imports torch once, so that
    the test is fast) get the datasets pickled, map the split themselves, and fetch the shards
    this process fetched and then removed from the cache: its own maps stay valid, the workers
    cannot see them."""
    url = f"{s3_bucket}/tokens/mu-law-256"
    upload_folder(tiny_dataset, url)
    ds = codecflow.open_dataset(url)
    assert ds.info == codecflow.open_dataset(tiny_dataset).info
    entries = [entry_path(url, shard) for shard in ds.info.shards]
    with ds.segments("val") as segments, ds.windows("train", 64, "delay", "random") as windows:
        assert all(entry.is_file() for entry in entries)  # fetched by this process
        for entry in entries:
            entry.unlink()
        context = multiprocessing.get_context("forkserver")
        context.set_forkserver_preload(["torch", "codecflow.tasks.data.torch_datasets"])
        _check_loaders(segments, windows, context)
    for shard, entry in zip(ds.info.shards, entries, strict=True):
        assert entry.is_file(), f"{shard.name} was not fetched again by the workers"
        assert entry.read_bytes() == (tiny_dataset / shard.file).read_bytes()
    assert not [p for p in entries[0].parent.iterdir() if p.name.endswith(".tmp")]


def test_guide_example_runs_on_an_s3_dataset(
    tiny_dataset: Path, s3_bucket: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = f"{s3_bucket}/tokens/mu-law-256"
    upload_folder(tiny_dataset, url)
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))
    ns = _run_example(url, monkeypatch)
    _check_example(ns)
    local = codecflow.open_dataset(tiny_dataset).segments("train")
    assert np.array_equal(ns["segments"][3]["codes"].numpy(), local[3]["codes"].numpy())
