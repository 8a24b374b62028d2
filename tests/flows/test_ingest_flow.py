"""Your own audio through `codecflow` as a user runs it (`layout: audio`): a folder, a tar.gz
over a real HTTP server, an s3:// prefix on moto's server, then the whole pipeline on a folder
of mixed formats; bad input is one line before anything starts."""

from __future__ import annotations

import hashlib
import io
import tarfile
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import s3fs
from helpers import REPO, run_codecflow
from http_server import serve
from s3_server import upload_folder
from speech_fixture import MIXED_EXPECTED, librispeech_tree, mixed_folder

import codecflow


def _outputs(stdout: str) -> dict[str, str]:
    return dict(line.split(": ", 1) for line in stdout.splitlines() if ": " in line)


def _rows(manifest: str) -> list[dict]:
    return pq.read_table(manifest).drop(["snr"]).to_pylist()


def test_a_folder_through_the_flow_equals_the_plain_function(
    prefect_api_url: str, tmp_path: Path
) -> None:
    folder = mixed_folder(tmp_path)
    result = run_codecflow(
        prefect_api_url, "acquire", "--set", f"source={folder}", "--set", "target_len_sec=5",
        "--set", f"root={tmp_path / 'flow'}",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    manifest = _outputs(result.stdout)["manifest"]
    rows = _rows(manifest)
    assert {r["source_path"] for r in rows} == set(MIXED_EXPECTED)
    assert "segments with text; VAD silero, speakers by parent" in result.stdout
    plain = codecflow.ingest(str(folder), str(tmp_path / "plain"), target_len_sec=5.0)
    assert _rows(plain) == rows  # the flow fans folders out; the same manifest


def test_vad_fanned_out_over_a_dask_cluster_gives_the_same_manifest(
    prefect_api_url: str, tmp_path: Path
) -> None:
    """Two real Dask worker processes probe (decode + Silero) the folders."""
    folder = mixed_folder(tmp_path)
    result = run_codecflow(
        prefect_api_url, "acquire", "--set", f"source={folder}", "--set", "target_len_sec=5",
        "--set", "workers=2", "--set", f"root={tmp_path / 'dask'}",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    plain = codecflow.ingest(str(folder), str(tmp_path / "plain"), target_len_sec=5.0)
    assert _rows(_outputs(result.stdout)["manifest"]) == _rows(plain)


def test_a_tar_gz_over_http_with_its_md5(prefect_api_url: str, tmp_path: Path) -> None:
    tree = librispeech_tree(tmp_path)
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        tar.add(tree, arcname="dev-clean")
    data = buffer.getvalue()
    with serve({"/ls/dev-clean.tar.gz": data}) as server:
        result = run_codecflow(
            prefect_api_url, "acquire", "--set", f"source={server.base_url}/ls/dev-clean.tar.gz",
            "--set", f"md5={hashlib.md5(data).hexdigest()}", "--set", "layout=audio",
            "--set", "speaker_from=grandparent", "--set", f"root={tmp_path / 'run'}",
        )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    rows = _rows(_outputs(result.stdout)["manifest"])
    assert {r["speaker"] for r in rows} == {"198", "3436", "5703"}
    assert all(r["source_path"].startswith("dev-clean/") for r in rows)
    texts = pq.read_table(tmp_path / "run" / "manifest" / "texts.parquet").to_pylist()
    assert len(texts) == 3 and all(t["text"].startswith("TEST WORDS OF") for t in texts)


def test_an_s3_prefix_read_in_place(prefect_api_url: str, s3_bucket: str, tmp_path: Path) -> None:
    upload_folder(mixed_folder(tmp_path), f"{s3_bucket}/corpus")
    result = run_codecflow(
        prefect_api_url, "acquire", "--set", f"source={s3_bucket}/corpus",
        "--set", "target_len_sec=5", "--set", f"root={tmp_path / 'run'}",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    rows = _rows(_outputs(result.stdout)["manifest"])
    assert {r["source_path"] for r in rows} == set(MIXED_EXPECTED)
    # Read in place: the audio root is the bucket prefix, nothing was copied under the root.
    meta = pq.read_schema(tmp_path / "run" / "manifest" / "segments.parquet").metadata
    assert meta[b"codecflow.audio_root"].decode() == f"{s3_bucket}/corpus"
    assert not (tmp_path / "run" / "audio").exists()
    assert s3fs.S3FileSystem(skip_instance_cache=True).exists(f"{s3_bucket[5:]}/corpus/bob")


def test_the_whole_pipeline_on_a_folder_of_mixed_audio(
    prefect_api_url: str, tmp_path: Path
) -> None:
    folder = mixed_folder(tmp_path)
    result = run_codecflow(
        prefect_api_url, "pipeline", "--config", str(REPO / "configs" / "demo.yaml"),
        "--set", f"acquire.source={folder}", "--set", "acquire.md5=null",
        "--set", "acquire.target_len_sec=5", "--set", "acquire.val_fraction=0.3",
        "--set", "train_lm.steps=20", "--set", "evaluate.seconds=0.25",
        "--set", "evaluate.num_samples=1", "--set", f"out={tmp_path / 'run'}",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    out = _outputs(result.stdout)
    assert Path(out["report"]).is_dir() and Path(out["dataset"]).is_dir()
    ds = codecflow.open_dataset(out["dataset"])
    assert sum(ds.splits.values()) == len(_rows(out["manifest"]))


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        (["--set", "md5=" + "0" * 32], "md5 checks an archive"),
        (["--set", "speaker_from=regex"], "speaker_from 'regex' needs speaker_regex"),
        (["--set", "speaker_from=table"], "needs a metadata table"),
        (["--set", "metadata=nowhere.csv"], "file not found"),
    ],
)
def test_bad_input_is_one_line_before_anything_starts(
    settings: list[str], message: str, tmp_path: Path
) -> None:
    folder = mixed_folder(tmp_path)
    result = run_codecflow(
        None, "acquire", "--set", f"source={folder}", "--set", f"root={tmp_path / 'r'}", *settings
    )
    assert result.returncode == 2, result.stderr[-2000:]
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and message in last, last
    assert not (tmp_path / "r").exists()
