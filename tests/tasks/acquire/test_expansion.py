"""An archive may not write more than it is worth (issue 23): a gzip bomb is refused within
megabytes and leaves nothing, a large real member is not mistaken for one, and acquire extracts
only what it reads (audio, metadata, transcripts), listing the rest as refused."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import pytest

from codecflow.tasks.acquire.extract import (
    ArchiveExpansionError,
    ExtractLimits,
    acquired_member,
    extract_tar_safely,
)

MiB = 1 << 20


class _Zeros(io.RawIOBase):
    """`size` zero bytes, read in chunks (no 300 MiB buffer in the test)."""

    def __init__(self, size: int) -> None:
        self.left = size

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        n = min(len(buffer), self.left)
        buffer[:n] = bytes(n)
        self.left -= n
        return n


def _tar(path: Path, members: dict[str, int], mode: str = "w") -> Path:
    """A tar (`w:gz` for gzip) of members of zeros, by name and size."""
    with tarfile.open(path, mode) as tar:
        for name, size in members.items():
            info = tarfile.TarInfo(name)
            info.size = size
            tar.addfile(info, io.BufferedReader(_Zeros(size), buffer_size=MiB))
    return path


def _nothing_left(dest: Path) -> None:
    assert not dest.exists()
    assert not [p.name for p in dest.parent.iterdir() if p.name.startswith(f".{dest.name}.")]


@pytest.fixture(scope="module")
def bomb(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """300 MiB of zeros in a gzip of about 300 KB (the issue's case)."""
    return _tar(tmp_path_factory.mktemp("bomb") / "bomb.tar.gz", {"a/b.flac": 300 * MiB}, "w:gz")


def test_a_gzip_bomb_is_refused_and_leaves_nothing(bomb: Path, tmp_path: Path) -> None:
    assert bomb.stat().st_size < MiB
    dest = tmp_path / "out"
    with pytest.raises(ArchiveExpansionError, match=r"^archive .*bomb\.tar\.gz expands past 4x"):
        extract_tar_safely(bomb, dest)
    _nothing_left(dest)


def test_a_streamed_bomb_stops_early(bomb: Path, tmp_path: Path) -> None:
    """From a non-seekable stream (an HTTP body): the same refusal, after at most the slack."""
    dest = tmp_path / "out"
    with open(bomb, "rb") as f, pytest.raises(ArchiveExpansionError) as err:
        extract_tar_safely(io.BufferedReader(f), dest, limits=ExtractLimits(slack_bytes=4 * MiB))
    written = int(str(err.value).split(": ")[1].split()[0].replace(",", ""))
    assert written <= 4 * MiB + 4 * bomb.stat().st_size + MiB  # stopped within a chunk
    _nothing_left(dest)


def test_a_large_member_of_an_uncompressed_tar_is_no_bomb(tmp_path: Path) -> None:
    """An uncompressed tar writes what it reads: a first member far over the slack passes."""
    archive = _tar(tmp_path / "real.tar", {"a/big.flac": 48 * MiB, "a/big.json": 100})
    record = extract_tar_safely(archive, tmp_path / "out", limits=ExtractLimits(slack_bytes=MiB))
    assert record.n_files == 2 and (tmp_path / "out" / "a" / "big.flac").stat().st_size == 48 * MiB


def test_acquire_extracts_only_what_it_reads(tmp_path: Path) -> None:
    members = {
        "small/1/book/1-1-0000.flac": 10,
        "small/1/book/1-1-0000.json": 5,
        "small/1/book/1-1-0000.txt": 3,
        "mine/spk/a.wav": 4,
        "mine/spk/a.lab": 2,
        "small/README.md": 7,
        "small/1/book/setup.exe": 9,
    }
    archive = _tar(tmp_path / "a.tar", members)
    dest = tmp_path / "out"
    record = extract_tar_safely(archive, dest, limits=ExtractLimits(keep=acquired_member))
    assert sorted(p.name for p in dest.rglob("*") if p.is_file() and p.name[0] != ".") == [
        "1-1-0000.flac", "1-1-0000.json", "1-1-0000.txt", "a.lab", "a.wav",
    ]  # fmt: skip
    reason = "not audio or its metadata (not extracted)"
    assert sorted(record.refused) == [
        ("small/1/book/setup.exe", reason),
        ("small/README.md", reason),
    ]
