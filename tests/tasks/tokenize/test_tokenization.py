"""Tokenization into Arrow shards: layout, dtype, size accounting, resume, errors."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.ipc as ipc
import pyarrow.parquet as pq
import pytest
import torch

from codecflow.models.mulaw import MuLawTokenizer
from codecflow.schemas.configs import TokenizeSettings
from codecflow.schemas.tables import MANIFEST_AUDIO_ROOT_KEY, TOKEN_SHARD_SCHEMA
from codecflow.tasks.core.errors import CodecflowError
from codecflow.tasks.core.storage import sha256_file
from codecflow.tasks.data.manifest import read_segment_audio
from codecflow.tasks.data.records import WebDatasetIndex
from codecflow.tasks.data.token_dataset import read_dataset_info
from codecflow.tasks.prefect.data_tasks import (
    finalize_dataset_task,
    plan_tokens_task,
    write_shards_task,
)
from codecflow.tasks.tokenize.finalize import tokenize_manifest
from codecflow.tasks.tokenize.plan import plan_dataset


def _files(folder: Path) -> dict[str, str]:
    return {
        p.relative_to(folder).as_posix(): sha256_file(p)
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def _manifest_rows(manifest: Path) -> tuple[list[dict], Path]:
    table = pq.read_table(manifest)
    root = manifest.parent / table.schema.metadata[MANIFEST_AUDIO_ROOT_KEY].decode()
    return table.to_pylist(), root


def test_shards_hold_uint8_codes_of_every_segment(tiny_manifest: Path, tiny_dataset: Path) -> None:
    rows, root = _manifest_rows(tiny_manifest)
    info = read_dataset_info(tiny_dataset)
    assert info.dtype == "uint8"
    assert info.tokenizer["codebook_size"] == 256
    seen = {}
    for shard in info.shards:
        with pa.memory_map(str(tiny_dataset / shard.file)) as source:
            table = ipc.open_stream(source).read_all()
        assert table.schema.equals(TOKEN_SHARD_SCHEMA)  # the fields (metadata apart)
        assert table.num_rows == shard.rows
        for row in table.to_pylist():
            seen[row["segment_id"]] = row
    assert sorted(seen) == sorted(r["segment_id"] for r in rows)
    # One mu-law token per sample: n_frames equals the segment's sample count, and the codes
    # decode back to the segment's audio within mu-law's quantisation error.
    row = rows[0]
    audio = read_segment_audio(root, row)
    stored = seen[row["segment_id"]]
    assert len(stored["codes"]) == 1  # K = 1 level of F codes
    assert stored["n_frames"] == len(audio) == len(stored["codes"][0])
    assert stored["split"] == row["split"] and stored["speaker"] == row["speaker"]
    codes = torch.tensor(stored["codes"], dtype=torch.int64).view(1, 1, -1)
    decoded = MuLawTokenizer(16_000).decode(codes)[0, 0].numpy()
    assert np.max(np.abs(decoded - audio)) < 0.05


def test_size_report_accounts_for_every_byte(tiny_manifest: Path, tiny_dataset: Path) -> None:
    rows, _ = _manifest_rows(tiny_manifest)
    report = json.loads((tiny_dataset / "size_report.json").read_text())
    total = report["total"]
    shard_bytes = sum(p.stat().st_size for p in (tiny_dataset / "shards").glob("*.arrow"))
    assert total["bytes"] == shard_bytes
    assert total["segments"] == len(rows)
    assert total["audio_hours"] == pytest.approx(sum(r["duration_s"] for r in rows) / 3600)
    assert total["tokens"] == total["frames"]  # mu-law: one level
    assert total["tokens_per_second"] == pytest.approx(16_000, rel=0.01)
    assert report["train"]["segments"] + report["val"]["segments"] == total["segments"]
    # uint8 tokens are about half the size of 16-bit PCM (plus Arrow's offsets and ids).
    assert 1.8 < total["compression_vs_pcm16"] <= 2.0


def test_rerun_skips_and_interrupted_run_resumes_byte_identically(
    tiny_manifest: Path, tmp_path: Path
) -> None:
    settings = TokenizeSettings(shard_hours=4.0 / 3600)  # a shard per ~4 s of audio
    full = tmp_path / "full"
    record = tokenize_manifest(tiny_manifest, full, settings)
    shards = sorted((full / "shards").glob("*.arrow"))
    assert len(shards) >= 3
    before = _files(full)
    assert tokenize_manifest(tiny_manifest, full, settings) == record
    assert _files(full) == before

    # An interrupted run: dataset.json never written, the last shard lost mid-write (only a
    # temporary file left), and another shard written but not yet confirmed by its marker.
    broken = tmp_path / "broken"
    shutil.copytree(full, broken)
    (broken / "dataset.json").unlink()
    (broken / "size_report.json").unlink()
    last = sorted((broken / "shards").glob("*.arrow"))[-1]
    last.rename(last.with_name(f".{last.name}.abc.tmp"))
    (broken / "shards" / f"{last.stem}.commit.json").unlink()
    (broken / "shards" / f"{shards[0].stem}.commit.json").unlink()
    assert tokenize_manifest(tiny_manifest, broken, settings) == record.__class__(
        **{**record.__dict__, "path": broken}
    )
    resumed = {k: v for k, v in _files(broken).items() if not k.endswith(".tmp")}
    assert resumed == before


def test_the_plan_cuts_ordered_shards_per_split(tiny_manifest: Path, tmp_path: Path) -> None:
    """Shards of at most `shard_hours` of audio, per split, in segment-id order, named
    <split>-<index>: through plan_dataset and the plan.parquet it writes."""
    table = pq.read_table(tiny_manifest)
    n = 9
    rows = pa.Table.from_pylist([table.slice(0, 1).to_pylist()[0]] * n, schema=table.schema)
    rows = rows.set_column(0, "segment_id", pa.array([f"s{i}" for i in reversed(range(n))]))
    splits = ["val" if i % 3 == 0 else "train" for i in reversed(range(n))]
    rows = rows.set_column(rows.schema.get_field_index("split"), "split", pa.array(splits))
    durations = pa.array([1000.0] * n)
    rows = rows.set_column(rows.schema.get_field_index("duration_s"), "duration_s", durations)
    manifest = tmp_path / "manifest" / "segments.parquet"
    manifest.parent.mkdir()
    pq.write_table(rows, manifest)
    settings = TokenizeSettings(shard_hours=2000 / 3600)
    plan = plan_dataset(str(manifest), str(tmp_path / "out"), settings)
    names = ["train-00000", "train-00001", "train-00002", "val-00000", "val-00001"]
    assert [s.name for s in plan.shards] == names
    assert [s.n_rows for s in plan.shards] == [2, 2, 2, 2, 1]
    planned = pq.read_table(tmp_path / "out" / "plan.parquet").select(["segment_id", "shard"])
    assert planned.to_pylist()[:2] == [
        {"segment_id": "s1", "shard": "train-00000"},
        {"segment_id": "s2", "shard": "train-00000"},
    ]
    assert planned["shard"].to_pylist()[-3:] == ["val-00000", "val-00000", "val-00001"]


def test_the_reader_sees_every_train_token(tiny_dataset: Path) -> None:
    from codecflow.tasks.data.token_dataset import TokenReader

    info = read_dataset_info(tiny_dataset)
    with TokenReader(tiny_dataset, "train") as reader:
        assert reader.n_tokens == sum(s.tokens for s in info.shards if s.split == "train")
        assert reader.dtype == np.uint8


def test_bad_inputs_name_the_file(tiny_manifest: Path, tmp_path: Path) -> None:
    with pytest.raises(CodecflowError, match="segment manifest not found: .*nope.parquet"):
        tokenize_manifest(tmp_path / "nope.parquet", tmp_path / "out", TokenizeSettings())
    not_parquet = tmp_path / "bad.parquet"
    not_parquet.write_text("hello")
    with pytest.raises(CodecflowError, match="bad.parquet is not a Parquet file"):
        tokenize_manifest(not_parquet, tmp_path / "out", TokenizeSettings())
    assert not (tmp_path / "out").exists()
    out = tmp_path / "taken"
    tokenize_manifest(tiny_manifest, out, TokenizeSettings())
    with pytest.raises(CodecflowError, match="already holds another token dataset"):
        tokenize_manifest(tiny_manifest, out, TokenizeSettings(shard_hours=0.5))


def test_tasks_wrap_the_plain_functions(tiny_manifest: Path, tmp_path: Path) -> None:
    plan = plan_tokens_task.fn(str(tiny_manifest), str(tmp_path / "ds"), TokenizeSettings())
    markers = [m for group in plan.groups for m in write_shards_task.fn(plan, group)]
    record = finalize_dataset_task.fn(plan, markers)
    assert record == tokenize_manifest(tiny_manifest, tmp_path / "ds", TokenizeSettings())
    assert record.n_tokens > 0 and record.n_bytes > record.n_tokens


def test_mimi_tokens_are_uint16(tiny_manifest: Path, tmp_path: Path) -> None:
    """Mimi (real architecture, random weights: no hub here) through the same shard writer."""
    from unittest import mock

    from moshi.models.loaders import get_mimi

    with mock.patch(
        "codecflow.tasks.loaders.load_mimi",
        lambda k, **_: get_mimi(None, device="cpu", num_codebooks=k),
    ):
        record = tokenize_manifest(
            tiny_manifest, tmp_path / "mimi", TokenizeSettings(tokenizer="mimi_2_rvq_nosemantic")
        )
    info = read_dataset_info(record.path)
    assert info.dtype == "uint16" and info.num_levels == 2  # levels 1..2
    assert info.tokenizer["frame_rate"] == 12.5 and info.tokenizer["sample_rate"] == 24_000
    shard = record.path / info.shards[0].file
    with pa.memory_map(str(shard)) as source:
        table = ipc.open_stream(source).read_all()
    assert table.schema.field("codes").type == pa.list_(pa.list_(pa.uint16()))
    first = table.column("codes")[0].as_py()  # [K][F]
    assert len(first) == 2 and len(first[0]) == len(first[1]) == table.column("n_frames")[0].as_py()
    assert table.schema.metadata[b"codecflow.num_levels"] == b"2"
    assert table.schema.metadata[b"codecflow.frame_rate"] == b"12.5"
    # 12.5 frames per second of audio x 2 levels, whole frames: ceil(duration x 12.5) per segment
    assert info.totals.tokens_per_second == pytest.approx(2 * 12.5, rel=0.1)


# --------------------------------------------------------------------------------------------
# Crash, concurrency, rejects, formats, storage
# --------------------------------------------------------------------------------------------

CRASH_SETTINGS = TokenizeSettings(shard_hours=4.0 / 3600, formats=["arrow", "webdataset"])


def _tokenize_in_subprocess(manifest: Path, out: str, kill_at: str | None) -> int:
    import os
    import subprocess
    import sys

    from helpers import REPO

    code = (
        "import sys; from codecflow.schemas.configs import TokenizeSettings; "
        "from codecflow.tasks.tokenize.finalize import tokenize_manifest; "
        "tokenize_manifest(sys.argv[1], sys.argv[2], TokenizeSettings.model_validate_json(sys.argv[3]))"
    )
    env = {k: v for k, v in os.environ.items() if k != "CODECFLOW_KILL_AT"}
    if kill_at:
        env["CODECFLOW_KILL_AT"] = kill_at
    return subprocess.run(
        [sys.executable, "-c", code, str(manifest), out, CRASH_SETTINGS.model_dump_json()],
        cwd=REPO,
        env=env,
        capture_output=True,
        timeout=300,
    ).returncode


@pytest.fixture(scope="module")
def reference_dataset(tiny_manifest: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("reference") / "ds"
    tokenize_manifest(tiny_manifest, out, CRASH_SETTINGS)
    return out


@pytest.mark.parametrize(
    "kill_at",
    [
        "mid-write:1",
        "before-commit:1",
        "after-commit:2",
        "mid-write:6",
        "before-commit:4",
        "before-dataset-commit:1",
    ],
    ids=[
        "first-write",
        "before-first-commit",
        "between-shards",
        "mid-write-later",
        "before-later-commit",
        "card-before-dataset-commit",
    ],
)
def test_kill_9_then_resume_is_byte_identical(
    kill_at: str, tiny_manifest: Path, reference_dataset: Path, tmp_path: Path
) -> None:
    import signal

    out = tmp_path / "ds"
    assert _tokenize_in_subprocess(tiny_manifest, str(out), kill_at) == -signal.SIGKILL
    assert not (out / "dataset.json").exists()
    # The card is written whole before the commit, never after it.
    assert (out / "README.md").exists() == kill_at.startswith("before-dataset-commit")
    assert _tokenize_in_subprocess(tiny_manifest, str(out), None) == 0
    assert _files(out) == _files(reference_dataset)  # no temporary left, every byte the same


def test_a_second_run_is_refused_while_one_holds_the_dataset(
    tiny_manifest: Path, tmp_path: Path
) -> None:
    from codecflow.tasks.core import outputs

    out = tmp_path / "ds"
    with outputs.exclusive_lock(str(out), "another tokenize"):
        with pytest.raises(CodecflowError, match="is being written by another run"):
            tokenize_manifest(tiny_manifest, out, TokenizeSettings())
    assert not out.exists() or not any(out.rglob("*.arrow"))
    tokenize_manifest(tiny_manifest, out, TokenizeSettings())  # free again: it runs


def test_a_segment_that_fails_to_decode_is_rejected_and_the_rest_proceeds(
    tiny_manifest: Path, tmp_path: Path
) -> None:
    table = pq.read_table(tiny_manifest)
    rows = table.to_pylist()
    rows[0] = {**rows[0], "source_path": rows[0]["source_path"] + ".missing"}
    manifest = tiny_manifest.parent / "with-bad-row.parquet"
    pq.write_table(pa.Table.from_pylist(rows, schema=table.schema), manifest)
    record = tokenize_manifest(manifest, tmp_path / "ds", TokenizeSettings())
    assert record.n_rejects == 1 and record.n_segments == len(rows) - 1
    rejects = pq.read_table(tmp_path / "ds" / "rejects.parquet").to_pylist()
    assert rejects[0]["path"] == rows[0]["segment_id"]
    assert rejects[0]["reason"].startswith("unreadable audio: ")


def _plain_webdataset_split(dataset: Path, split: str) -> tuple[dict, list[dict]]:
    """A split read as someone without codecflow would: json for the index beside the tars,
    webdataset for the samples (raw bytes, no decoder), numpy for the `.npy`, and the codes
    shaped by the facts alone. (The index, every sample.)"""
    import io

    import webdataset as wds

    index = json.loads((dataset / "shards" / "webdataset.json").read_text())
    urls = [str(dataset / "shards" / tar["url"]) for tar in index["splits"][split]]
    samples = []
    for raw in wds.WebDataset(urls, shardshuffle=False):
        meta = json.loads(raw["json"])
        flat = np.load(io.BytesIO(raw["codes.npy"]), allow_pickle=False).reshape(-1)
        # [K, F]: the axes sized by the keys codes_shape names, in the dtype the facts name.
        shape = [meta[axis] for axis in index["codes_shape"]]
        samples.append({**meta, "codes": flat.astype(index["dtype"], copy=False).reshape(shape)})
    return index, samples


def test_webdataset_shards_read_with_plain_webdataset(reference_dataset: Path) -> None:
    """Every sample of every tar, read without codecflow, holds its Arrow row's codes as [K, F]
    from the facts alone; the facts are the Arrow metadata's and dataset.json's; the index
    lists every tar with its sample count, size and sha256."""
    info = read_dataset_info(reference_dataset)
    facts = ("tokenizer", "num_levels", "codebook_size", "sample_rate", "frame_rate", "dtype")
    for split in ("train", "val"):
        index, samples = _plain_webdataset_split(reference_dataset, split)
        shards = [s for s in info.shards if s.split == split]
        arrow_rows = []
        for shard in shards:
            with pa.memory_map(str(reference_dataset / shard.file)) as source:
                table = ipc.open_stream(source).read_all()
            arrow_rows += table.to_pylist()
            metadata = {k.decode(): v.decode() for k, v in table.schema.metadata.items()}
        assert [s["segment_id"] for s in samples] == [r["segment_id"] for r in arrow_rows]
        assert [(t["url"], t["nsamples"], t["bytes"]) for t in index["splits"][split]] == [
            (Path(s.webdataset_file).name, s.rows, s.webdataset_bytes) for s in shards
        ]
        for tar in index["splits"][split]:
            assert sha256_file(reference_dataset / "shards" / tar["url"]) == tar["sha256"]
        for sample, row in zip(samples, arrow_rows, strict=True):
            assert (
                sample["codes"].shape == (1, row["n_frames"]) and sample["codes"].dtype == np.uint8
            )
            assert sample["codes"].tolist() == row["codes"]  # [K][F] both
            assert int(sample["codes"].max()) < sample["codebook_size"]
            assert {k: sample[k] for k in facts} == {k: index[k] for k in facts}
    names = ("tokenizer", "dtype")  # as they are in the Arrow metadata, numbers as JSON text
    assert {k: index[k] for k in facts} == {
        k: metadata[f"codecflow.{k}"] if k in names else json.loads(metadata[f"codecflow.{k}"])
        for k in facts
    }
    assert index["tokenizer_spec"] == info.tokenizer and index["dtype"] == info.dtype
    assert index["dataset_fingerprint"] == info.fingerprint
    assert index["format_version"] == info.format_version == samples[0]["format_version"]
    assert index["codes_shape"] == samples[0]["codes_shape"] == ["num_levels", "n_frames"]
    assert index["kind"] == "codecflow-webdataset"
    typed = WebDatasetIndex.read(reference_dataset / "shards" / "webdataset.json")
    assert json.loads(json.dumps(typed.to_json())) == index  # the record codecflow writes


def test_the_cards_webdataset_snippet_runs_in_the_dataset_folder(
    reference_dataset: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The card's plain-webdataset snippet runs as written, and is formats.md's example."""
    import re

    from helpers import REPO

    text = (reference_dataset / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, re.S)
    assert len(blocks) == 4 and "import webdataset" in blocks[3]
    doc = (REPO / "docs" / "reference" / "formats.md").read_text()
    tag = "<!-- example: run (tests/tasks/tokenize/test_tokenization.py, webdataset-example) -->"
    assert doc.split(tag, 1)[1].split("```python\n", 1)[1].split("```", 1)[0] == blocks[3]
    monkeypatch.chdir(reference_dataset)
    scope: dict = {}
    exec(blocks[3], scope)
    assert scope["codes"].shape == (scope["meta"]["num_levels"], scope["meta"]["n_frames"])
    first = _plain_webdataset_split(reference_dataset, "train")[1][0]
    assert scope["meta"]["segment_id"] == first["segment_id"]
    assert scope["codes"].tolist() == first["codes"].tolist()


def test_arrow_shards_open_with_plain_pyarrow(reference_dataset: Path) -> None:
    """pyarrow alone (and the JSON of dataset.json) knows the shape and the tokenizer."""
    info = json.loads((reference_dataset / "dataset.json").read_text())
    paths = sorted((reference_dataset / "shards").glob("*.arrow"))
    assert len(paths) == len(info["shards"]) >= 2
    for path in paths:
        table = pa.ipc.open_stream(str(path)).read_all()
        assert table.schema.field("codes").type == pa.list_(pa.list_(pa.uint8()))
        for i in range(table.num_rows):
            codes = table.column("codes")[i].as_py()  # K lists of F ints
            assert len(codes) == 1 and len(codes[0]) == table.column("n_frames")[i].as_py()
            assert all(0 <= c < 256 for c in codes[0][:1000])
        meta = {k.decode(): v.decode() for k, v in table.schema.metadata.items()}
        assert meta["codecflow.dataset_fingerprint"] == info["fingerprint"]
        assert json.loads(meta["codecflow.tokenizer_spec"]) == info["tokenizer"]
        assert (meta["codecflow.tokenizer"], meta["codecflow.num_levels"]) == ("mu-law-256", "1")
        assert (meta["codecflow.codebook_size"], meta["codecflow.dtype"]) == ("256", "uint8")
        assert (meta["codecflow.sample_rate"], meta["codecflow.frame_rate"]) == ("16000", "16000.0")
        assert meta["codecflow.format_version"] == str(info["format_version"]) == "4"
        with pytest.raises(pa.ArrowInvalid):
            pa.ipc.open_file(str(path))  # a stream, not an IPC file (format version 2)


def test_s3_output_then_resume(
    tiny_manifest: Path, s3_bucket: str, reference_dataset: Path
) -> None:
    import s3fs

    out = f"{s3_bucket}/tokens/ds"
    assert _tokenize_in_subprocess(tiny_manifest, out, "mid-write:3") != 0  # killed mid-upload
    fs = s3fs.S3FileSystem(skip_instance_cache=True)
    assert not fs.exists(f"{out[5:]}/dataset.json")
    record = tokenize_manifest(tiny_manifest, out, CRASH_SETTINGS)
    assert record.path == out
    remote = {
        p[len(out) - 5 + 1 :]: hashlib.sha256(fs.cat(p)).hexdigest() for p in fs.find(out[5:])
    }
    assert remote == _files(reference_dataset)


def test_group_shards_bounds_the_task_count() -> None:
    from codecflow.tasks.tokenize.plan import group_shards

    names = [f"train-{i:05d}" for i in range(60_000)]
    groups = group_shards(names, 1000)
    assert len(groups) == 1000 and [n for g in groups for n in g] == names
    assert group_shards(names[:10], 1000) == [(n,) for n in names[:10]]


def test_planned_tasks_before_a_manifest_exists() -> None:
    from codecflow.tasks.tokenize.plan import planned_tasks

    # The post's 10 000 h, 1 % val, 1 h shards: 9 900 + 100 shards (not 9 901: 10 000 x 0.99
    # is not exact in floats), 10 per task, so the 1 000 tasks `max_tasks` allows.
    tasks = planned_tasks({"train": 10_000 * 0.99, "val": 10_000 * 0.01}, 1.0, 1000)
    assert (tasks.shards, tasks.groups, tasks.shards_per_group) == (10_000, 1000, 10)
    # 0.25 h shards of 1.1 h and 0.1 h: ceil(4.4) + ceil(0.4) = 6 shards, 3 tasks of 2.
    tasks = planned_tasks({"train": 1.1, "val": 0.1}, 0.25, 3)
    assert (tasks.shards, tasks.groups, tasks.shards_per_group) == (6, 3, 2)
    assert planned_tasks({"train": 0.0, "val": 0.0}, 1.0, 10).groups == 0


def _speechlike(seconds: float, rate: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * rate)) / rate
    return (
        0.3
        * np.sin(2 * np.pi * rng.uniform(100, 300) * t)
        * (1 + rng.standard_normal(t.size) * 0.1)
    ).astype(np.float32)


def test_batched_codes_equal_codes_encoded_alone_for_each_tokenizer(tmp_path: Path) -> None:
    """Padding never changes a segment's codes: batches of different lengths vs one by one."""
    from random_mimi import random_codebook_mimi

    from codecflow.models.codec import build_rvq_codec
    from codecflow.models.codec_tokenizer import CodecTokenizer
    from codecflow.models.mimi import MimiTokenizer
    from codecflow.models.mulaw import MuLawTokenizer
    from codecflow.tasks.tokenize.shards import encode_segments

    mimi = random_codebook_mimi(4)  # seeds torch with 0, as before the codec below is built
    tokenizers = {
        "mu-law-256": MuLawTokenizer(16_000),
        "mimi_4_rvq": MimiTokenizer(mimi, 4),
        "codec": CodecTokenizer(
            build_rvq_codec(num_levels=2, channels=8, latent_dim=8, codebook_size=16).eval(), 2
        ),
    }
    for name, tokenizer in tokenizers.items():
        rate = tokenizer.sample_rate
        audios = [
            _speechlike(seconds, rate, i) for i, seconds in enumerate((0.3, 1.1, 0.7, 2.0, 0.05))
        ]
        batched = encode_segments(audios, tokenizer, batch_seconds=60.0)
        for audio, codes in zip(audios, batched, strict=True):
            with torch.inference_mode():
                alone = tokenizer.encode(torch.from_numpy(audio).view(1, 1, -1))[
                    0
                ].numpy()  # [K, F]
            assert codes.shape == alone.shape, name
            np.testing.assert_array_equal(codes, alone, err_msg=name)
        assert len({c.tobytes() for c in batched}) > 1, name  # codes vary: the comparison bites


# --------------------------------------------------------------------------------------------
# Output ownership and rejects
# --------------------------------------------------------------------------------------------


def test_a_users_folder_is_refused_and_left_as_it_was(tiny_manifest: Path, tmp_path: Path) -> None:
    out = tmp_path / "theirs"
    out.mkdir()
    (out / "plan.parquet").write_bytes(b"my own plan, not Parquet")
    (out / "size_report.json").write_text('{"mine": 1}\n')
    pq.write_table(pa.table({"x": [1]}), out / "rejects.parquet")
    (out / "shards").mkdir()
    (out / "shards" / ".draft.tmp").write_text("mine")
    before = _files(out)
    with pytest.raises(CodecflowError, match=f"^{out} is not empty and is not a codecflow token"):
        tokenize_manifest(tiny_manifest, out, TokenizeSettings())
    assert _files(out) == before
    assert not (tmp_path / "theirs.lock").exists()
    a_file = tmp_path / "a-file"
    a_file.write_text("x")
    with pytest.raises(CodecflowError, match=f"^{a_file} is a file, not a folder$"):
        tokenize_manifest(tiny_manifest, a_file, TokenizeSettings())


def _manifest_with_missing_audio(tiny_manifest: Path, n_missing: int | None) -> Path:
    table = pq.read_table(tiny_manifest)
    rows = table.to_pylist()
    for i in range(len(rows) if n_missing is None else n_missing):
        rows[i] = {**rows[i], "source_path": rows[i]["source_path"] + ".gone"}
    manifest = tiny_manifest.parent / f"missing-{n_missing}.parquet"
    pq.write_table(pa.Table.from_pylist(rows, schema=table.schema), manifest)
    return manifest


def test_a_dataset_where_every_segment_is_rejected_is_not_committed(
    tiny_manifest: Path, tmp_path: Path
) -> None:
    manifest = _manifest_with_missing_audio(tiny_manifest, None)
    n = pq.read_metadata(manifest).num_rows
    out = tmp_path / "ds"
    with pytest.raises(CodecflowError) as refused:
        tokenize_manifest(manifest, out, TokenizeSettings())
    rejects = out / "rejects.parquet"
    assert str(refused.value) == (
        f"every segment of {manifest} was rejected ({n} of {n}; the reasons are in {rejects}): "
        f"nothing committed to {out}"
    )
    assert not (out / "dataset.json").exists()
    assert not list((out / "shards").glob("*.commit.json"))  # a re-run encodes them again
    assert pq.read_table(rejects).num_rows == n


def test_rejects_above_the_set_fraction_are_warned_about(
    tiny_manifest: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture, capsys
) -> None:
    manifest = _manifest_with_missing_audio(tiny_manifest, 1)
    n = pq.read_metadata(manifest).num_rows
    with caplog.at_level("WARNING", logger="codecflow.tokenize"):
        quiet = tokenize_manifest(
            manifest, tmp_path / "a", TokenizeSettings(warn_reject_fraction=1)
        )
    assert quiet.n_rejects == 1 and not caplog.records
    with caplog.at_level("WARNING", logger="codecflow.tokenize"):
        record = tokenize_manifest(manifest, tmp_path / "b", TokenizeSettings())  # 5 %
    assert 1 / n > 0.05 and record.n_rejects == 1
    rejects = tmp_path / "b" / "rejects.parquet"
    assert [r.getMessage() for r in caplog.records] == [
        f"1 of {n} segments ({100 / n:.1f}%) were rejected, more than "
        f"warn_reject_fraction=0.05: see {rejects}"
    ]
    assert (
        f"rejected: 1 segments that could not be decoded (see {rejects})" in capsys.readouterr().out
    )


def _tokenize_in_a_child(manifest: Path, out: Path, on_a_terminal: bool) -> str:
    """Tokenize in a child process whose stderr is a terminal (a pty) or a pipe; its stderr."""
    import fcntl
    import os
    import pty
    import struct
    import subprocess
    import sys
    import termios

    from helpers import REPO

    code = (
        "import sys; from codecflow.schemas.configs import TokenizeSettings; "
        "from codecflow.tasks.tokenize.finalize import tokenize_manifest; "
        "tokenize_manifest(sys.argv[1], sys.argv[2], TokenizeSettings())"
    )
    command = [sys.executable, "-c", code, str(manifest), str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    if not on_a_terminal:
        done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
        return done.stderr
    leader, follower = pty.openpty()
    # A terminal of 100 columns: a pty starts at 0, where tqdm draws nothing.
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 30, 100, 0, 0))
    process = subprocess.Popen(
        command, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=follower
    )
    os.close(follower)
    seen = b""
    while True:
        try:
            chunk = os.read(leader, 4096)
        except OSError:  # EIO: the child closed the terminal
            break
        if not chunk:
            break
        seen += chunk
    os.close(leader)
    assert process.wait(timeout=120) == 0, seen.decode(errors="replace")
    return seen.decode(errors="replace")


def test_tokenize_draws_a_bar_on_a_terminal_only(tiny_manifest: Path, tmp_path: Path) -> None:
    shown = _tokenize_in_a_child(tiny_manifest, tmp_path / "tty", on_a_terminal=True)
    # tqdm's bar: the group's first shard, audio seconds done of the total, rate.
    assert "tokenize train-00000:" in shown and "s audio" in shown and "100%" in shown, shown
    piped = _tokenize_in_a_child(tiny_manifest, tmp_path / "pipe", on_a_terminal=False)
    assert "tokenize train-00000" not in piped and "s audio" not in piped, piped
