"""The acquire flow under a real Prefect server, against a real HTTP server on 127.0.0.1 serving
a generated Libri-Light-format tar (bad members included), a moto S3 server, and Dask."""

from __future__ import annotations

import hashlib
import io
import json
import posixpath
import tarfile
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from helpers import FlowRunWindow
from http_server import serve
from librilight_fixture import BAD_FILES, GOOD_FILES, REFUSED_MEMBERS, make_librilight_tar

from codecflow.flows.acquire import run_acquire
from codecflow.schemas.configs import AcquireConfig
from codecflow.tasks.acquire.marker import ExtractionIdentityError
from codecflow.tasks.core.errors import ChecksumMismatchError


@pytest.fixture(scope="module")
def generated_tar(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    path = tmp_path_factory.mktemp("tar") / "small.tar"
    make_librilight_tar(path)
    return path.read_bytes()


def _config(url: str, md5: str | None, root: Path | str, **overrides: object) -> AcquireConfig:
    return AcquireConfig(
        source=url, md5=md5, root=str(root), target_len_sec=2.0, val_fraction=0.3, **overrides
    )


def test_download_resumes_extracts_safely_and_rejects_bad_files(
    prefect_api_url: str, generated_tar: bytes, tmp_path: Path
) -> None:
    md5 = hashlib.md5(generated_tar).hexdigest()
    with serve({"/data/small.tar": generated_tar}) as server:
        server.drop_after = len(generated_tar) // 3  # the first connection dies a third of the way
        url = f"{server.base_url}/data/small.tar"
        record = run_acquire(_config(url, md5, tmp_path / "root"))
        ranges = [r for _, r in server.requests if r]
        assert ranges and ranges[0].startswith("bytes=")  # the retry continued the .part file
        assert (tmp_path / "root" / "download" / "small.tar").read_bytes() == generated_tar

        rows = pq.read_table(record.path).to_pylist()
        rejects = {r["path"]: r["reason"] for r in pq.read_table(record.rejects_path).to_pylist()}
        expected = {f"librilight/small/{p}": kind for p, kind in BAD_FILES.items()}
        expected.update({f"librilight/small/{p}": kind for p, kind in REFUSED_MEMBERS.items()})
        assert set(rejects) == set(expected)
        assert all(rejects[p].startswith(kind) for p, kind in expected.items())
        sources = {r["source_path"] for r in rows}
        assert len(sources) == len(GOOD_FILES) + 1  # every good file, and the flagged stereo one
        # Unsafe members were refused: nothing was written outside the extraction folder.
        assert (
            not (tmp_path / "root" / "escape.flac").exists() and not Path("/abs/evil.flac").exists()
        )
        assert not (
            tmp_path / "root" / "librilight" / "small" / "small" / "400" / "broken" / "link.flac"
        ).exists()

        # A second run downloads nothing and re-probes nothing.
        n_requests = len(server.requests)
        window = FlowRunWindow()
        again = run_acquire(_config(url, md5, tmp_path / "root"))
        assert len(server.requests) == n_requests
        assert again == record
        probes = [
            state
            for name, state in window.wait_for({"probe-book"}, at_least=8)
            if name == "probe-book"
        ]
        assert len(probes) == 8 and set(probes) == {"Cached"}  # 8 book folders, none re-read


def test_md5_mismatch_keeps_the_download_and_extracts_nothing(
    prefect_api_url: str, generated_tar: bytes, tmp_path: Path
) -> None:
    with serve({"/small.tar": generated_tar}) as server:
        with pytest.raises(ChecksumMismatchError, match=f"expected {'0' * 32}, actual "):
            run_acquire(_config(f"{server.base_url}/small.tar", "0" * 32, tmp_path))
    assert (tmp_path / "download" / "small.tar.md5-mismatch").read_bytes() == generated_tar
    assert not (tmp_path / "librilight").exists() or not any((tmp_path / "librilight").iterdir())
    assert not (tmp_path / "manifest").exists()


def test_dask_runner_writes_the_same_manifest(
    prefect_api_url: str, generated_tar: bytes, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PREFECT_API_URL", prefect_api_url)  # the Dask workers report here too
    monkeypatch.setenv("DASK_TEMPORARY_DIRECTORY", str(tmp_path / "dask"))
    tar = tmp_path / "small.tar"
    tar.write_bytes(generated_tar)
    md5 = hashlib.md5(generated_tar).hexdigest()
    default = run_acquire(_config(str(tar), md5, tmp_path / "default"))
    dask = run_acquire(_config(str(tar), md5, tmp_path / "dask-root", workers=2))
    assert pq.read_table(default.path).equals(pq.read_table(dask.path))
    assert pq.read_table(default.rejects_path).equals(pq.read_table(dask.rejects_path))


def test_s3_root_and_streaming_extraction(
    prefect_api_url: str, generated_tar: bytes, s3_bucket: str, tmp_path: Path
) -> None:
    import s3fs

    from codecflow.schemas.configs import TokenizeSettings
    from codecflow.tasks.tokenize.finalize import tokenize_manifest

    md5 = hashlib.md5(generated_tar).hexdigest()
    root = f"{s3_bucket}/librilight-run"
    with serve({"/small.tar": generated_tar}) as server:
        record = run_acquire(_config(f"{server.base_url}/small.tar", md5, root, keep_archive=False))
    assert record.path == f"{root}/manifest/segments.parquet"
    fs = s3fs.S3FileSystem(skip_instance_cache=True)
    assert fs.exists(f"{root[5:]}/librilight/small/.extracted.json")
    assert not fs.exists(f"{root[5:]}/download")  # streamed: no tar stored anywhere
    assert not (tmp_path / "download").exists()
    # Prefect's task results (the cache records) live beside the data, where any worker sees them.
    assert fs.ls(f"{root[5:]}/.prefect-results")
    with fs.open(record.path[5:], "rb") as f:
        rows = pq.read_table(f).to_pylist()
    assert len({r["source_path"] for r in rows}) == len(GOOD_FILES) + 1
    # The tokenizer reads the audio straight from S3 (and resamples the flagged 44.1 kHz file).
    dataset = tokenize_manifest(record.path, tmp_path / "tokens", TokenizeSettings())
    assert dataset.n_segments == len(rows)


# --------------------------------------------------------------------------------------------
# Refused members are visible; odd names do not stop a run
# --------------------------------------------------------------------------------------------


def _odd_tar(path: Path) -> dict[str, str]:
    """A Libri-Light-format tar with members the extraction refuses; their expected reasons.

    GNU format with surrogateescape: the non-UTF-8 name is stored as the raw byte \\xe9, as a
    tar made on a Latin-1 system holds it.
    """
    members = make_librilight_tar(path, bad=False)
    odd = {
        "small/600/odd\nname/x_00.flac": "control character in name",
        "small/600/caf\udce9/x_00.flac": "name is not valid UTF-8",
        "small/100/emerald/link_00.flac": "symlink (not extracted)",
        "small/100/emerald/hard_00.flac": "hard link (not extracted)",
    }
    good = next(name for name in members if name.endswith(".flac"))
    with tarfile.open(
        path, "w", format=tarfile.GNU_FORMAT, encoding="utf-8", errors="surrogateescape"
    ) as tar:
        for name, data in sorted(members.items()):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        for name in list(odd)[:2]:
            info = tarfile.TarInfo(name)
            info.size = len(members[good])
            tar.addfile(info, io.BytesIO(members[good]))
        link = tarfile.TarInfo("small/100/emerald/link_00.flac")
        link.type, link.linkname = tarfile.SYMTYPE, posixpath.basename(good)
        tar.addfile(link)
        hard = tarfile.TarInfo("small/100/emerald/hard_00.flac")
        hard.type, hard.linkname = tarfile.LNKTYPE, good
        tar.addfile(hard)
    return odd


def _summary_artifact(manifest: str) -> str:
    """The markdown of the acquire-summary artifact of the run that wrote `manifest`."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["acquire-summary"]))
        )
    (artifact,) = [a for a in artifacts if a.description == manifest]
    return str(artifact.data)


def test_refused_members_are_in_the_summary_and_odd_names_do_not_stop_the_run(
    prefect_api_url: str, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    tar = tmp_path / "small.tar"
    odd = _odd_tar(tar)
    data = tar.read_bytes()
    assert b"odd\nname" in data and b"caf\xe9/" in data  # the raw names really are in the tar
    with serve({"/small.tar": data}) as server:
        record = run_acquire(
            _config(f"{server.base_url}/small.tar", hashlib.md5(data).hexdigest(), tmp_path / "r")
        )
    # The run completed: a manifest of every good file; nothing of the odd names was extracted.
    rows = pq.read_table(record.path).to_pylist()
    assert len({r["source_path"] for r in rows}) == len(GOOD_FILES) + 1
    extracted = tmp_path / "r" / "librilight" / "small" / "small"
    assert (
        not (extracted / "600").exists() and not (extracted / "100/emerald/link_00.flac").exists()
    )
    # Each refused member: in rejects.parquet, in summary.json, counted in "rejected".
    shown = {
        name.replace("\n", "\\n").replace("\udce9", "\\udce9"): why for name, why in odd.items()
    }
    expected = {f"librilight/small/{name}": why for name, why in shown.items()}
    rejects = {r["path"]: r["reason"] for r in pq.read_table(record.rejects_path).to_pylist()}
    assert rejects == {path: f"refused tar member: {why}" for path, why in expected.items()}
    summary = json.loads(Path(record.summary_path).read_text())
    assert {m["path"]: m["reason"] for m in summary["refused_tar_members"]} == expected
    assert summary["files_rejected"] == len(odd) == record.n_rejects
    assert summary["rejected_by_reason"] == {"refused tar member": len(odd)}
    # ...and on the printed summary and the Prefect artifact, by name and reason.
    printed = capfd.readouterr().out
    for text in (printed, _summary_artifact(record.path)):
        assert f"refused tar members (not extracted, counted in rejected): {len(odd)}" in text
        for path, why in expected.items():
            assert f"    {path}  ({why})" in text


# --------------------------------------------------------------------------------------------
# Identity before reuse
# --------------------------------------------------------------------------------------------


def test_another_archive_under_the_same_name_is_refused_not_reused(
    prefect_api_url: str, generated_tar: bytes, tmp_path: Path
) -> None:
    other = tmp_path / "other.tar"
    make_librilight_tar(other, bad=False)
    other_tar = other.read_bytes()
    md5_a, md5_b = hashlib.md5(generated_tar).hexdigest(), hashlib.md5(other_tar).hexdigest()
    root = tmp_path / "root"
    dest = root / "librilight" / "small"
    with serve({"/a/small.tar": generated_tar, "/b/small.tar": other_tar}) as server:
        url_a, url_b = f"{server.base_url}/a/small.tar", f"{server.base_url}/b/small.tar"
        first = run_acquire(_config(url_a, md5_a, root))
        before = {p: p.read_bytes() for p in dest.rglob("*") if p.is_file()}
        n_requests = len(server.requests)

        # Same basename, another archive: one line naming the folder and both, nothing fetched.
        refusals = {
            "new md5": (url_b, md5_b, {}),
            "zero md5": (url_a, "0" * 32, {}),
            "zero md5, streamed": (url_a, "0" * 32, {"keep_archive": False}),
            "no md5, another URL": (url_b, None, {}),
        }
        for case, (url, md5, overrides) in refusals.items():
            with pytest.raises(ExtractionIdentityError) as err:
                run_acquire(_config(url, md5, root, **overrides))
            assert str(err.value) == (
                f"{dest} holds an extraction of {url_a} (md5 {md5_a}), "
                f"not {url} (md5 {md5 or 'not given'}): use another root"
            ), case
        assert len(server.requests) == n_requests  # nothing downloaded for any of them
        assert {p: p.read_bytes() for p in dest.rglob("*") if p.is_file()} == before

        # The same source again: a cache (and marker) hit, nothing fetched.
        assert run_acquire(_config(url_a, md5_a, root)) == first
        assert len(server.requests) == n_requests


def test_fetch_and_extract_tasks_never_pass_off_another_archives_extraction(
    generated_tar: bytes, tmp_path: Path
) -> None:
    from codecflow.tasks.acquire.download import FetchRecord
    from codecflow.tasks.acquire.extract import extract_tar_safely
    from codecflow.tasks.prefect.data_tasks import extract_task, fetch_task

    tar = tmp_path / "small.tar"
    tar.write_bytes(generated_tar)
    dest = tmp_path / "librilight" / "small"
    done = extract_tar_safely(tar, dest, source="https://a/small.tar")
    # The plain functions behind the tasks (no Prefect cache in the way): the short cut from an
    # extraction marker checks identity first.
    download = tmp_path / "download" / "small.tar"
    with pytest.raises(ExtractionIdentityError, match="not https://b/small.tar"):
        fetch_task.fn("https://b/small.tar", download, "0" * 32, str(dest))
    with pytest.raises(ExtractionIdentityError, match=f"md5 {done.md5}.*md5 {'0' * 32}"):
        extract_task.fn(FetchRecord(tar, "0" * 32, 1, 1, "https://a/small.tar"), str(dest))
    same = fetch_task.fn("https://a/small.tar", download, done.md5, str(dest))
    assert same.md5 == done.md5 and not download.exists()  # reused: nothing downloaded
    assert extract_task.fn(same, str(dest)) == done
