"""Tests of schemas.sources: Libri-Light's catalog, splits, mirrors and md5 rules."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

from codecflow.schemas import sources
from codecflow.schemas.sources import (
    LIBRILIGHT_ARCHIVES,
    LIBRILIGHT_BASE_URL,
    LIBRILIGHT_SPLITS,
    LibriLightArchive,
    ResolvedSource,
    SourceSpecError,
    resolve_sources,
)

MD5 = "0123456789abcdef0123456789abcdef"


def test_module_is_pure_and_exports_what_it_lists() -> None:
    text = Path(sources.__file__).read_text()
    assert not re.search(r"^\s*(import|from)\s+(tasks|prefect|fsspec|httpx)\b", text, re.M)
    assert set(sources.__all__) <= set(dir(sources))
    assert issubclass(SourceSpecError, ValueError)


def test_catalog_matches_libri_light_readme() -> None:
    # facebookresearch/libri-light, data_preparation/README.md, "1A. Downloading" and "2.".
    expected = {
        "small": ("small.tar", 577, 35 * 10**9, "c49207eb86a8e8ac895561c37232041e"),
        "medium": ("medium.tar", 5193, 321 * 10**9, "c75e7ac62471bfbf2db77528d62a9b74"),
        "large": ("large.tar", 51934, 3_050 * 10**9, "4dfbac018f50b99797ece101fc9f0c30"),
        "duplicate": ("duplicate.tar", 4500, 274 * 10**9, None),
        "librispeech_finetuning": ("librispeech_finetuning.tgz", 10, 600 * 10**6, None),
    }
    assert set(LIBRILIGHT_ARCHIVES) == set(expected)
    for name, (filename, hours, approx_bytes, md5) in expected.items():
        archive = LIBRILIGHT_ARCHIVES[name]
        assert archive == LibriLightArchive(name, filename, hours, approx_bytes, md5)
    assert LIBRILIGHT_BASE_URL == "https://dl.fbaipublicfiles.com/librilight/data/"
    with pytest.raises(dataclasses.FrozenInstanceError):
        LIBRILIGHT_ARCHIVES["small"].md5 = None  # type: ignore[misc]


@pytest.mark.parametrize("name", sorted(LIBRILIGHT_ARCHIVES))
def test_every_archive_resolves(name: str) -> None:
    archive = LIBRILIGHT_ARCHIVES[name]
    assert resolve_sources(name) == [
        ResolvedSource(
            name, LIBRILIGHT_BASE_URL + archive.filename, archive.md5, archive.approx_bytes
        )
    ]


@pytest.mark.parametrize(
    ("split", "names"),
    [
        ("unlab-600", ["small"]),
        ("unlab-6k", ["small", "medium"]),
        ("unlab-60k", ["small", "medium", "large"]),
    ],
)
def test_every_split_resolves_to_its_archives(split: str, names: list[str]) -> None:
    assert list(LIBRILIGHT_SPLITS[split]) == names
    resolved = resolve_sources(split)
    assert [r.name for r in resolved] == names
    for r in resolved:
        archive = LIBRILIGHT_ARCHIVES[r.name]
        assert r.url == f"https://dl.fbaipublicfiles.com/librilight/data/{archive.filename}"
        assert r.md5 == archive.md5 and r.md5 is not None
        assert r.approx_bytes == archive.approx_bytes


@pytest.mark.parametrize("slash", ["", "/"], ids=["no-slash", "slash"])
@pytest.mark.parametrize(
    "mirror",
    ["http://127.0.0.1:8000/librilight", "s3://bucket/datasets/librilight", "/srv/mirror/ll"],
    ids=["http", "s3", "folder"],
)
def test_mirror_replaces_the_base_url(mirror: str, slash: str) -> None:
    resolved = resolve_sources("unlab-6k", mirror=mirror + slash)
    assert [r.url for r in resolved] == [f"{mirror}/small.tar", f"{mirror}/medium.tar"]
    assert [r.md5 for r in resolved] == [
        LIBRILIGHT_ARCHIVES["small"].md5,
        LIBRILIGHT_ARCHIVES["medium"].md5,
    ]
    [finetuning] = resolve_sources("librispeech_finetuning", mirror=mirror + slash)
    assert finetuning.url == f"{mirror}/librispeech_finetuning.tgz"


def test_mirror_does_not_touch_a_url_source() -> None:
    url = "https://example.org/x/small.tar"
    assert resolve_sources(url, mirror="s3://bucket/ll")[0].url == url


def test_explicit_md5_overrides_an_archive_md5() -> None:
    [r] = resolve_sources("small", md5=MD5)
    assert r.md5 == MD5 and r.url == LIBRILIGHT_BASE_URL + "small.tar"
    # Archives without a published md5 get one this way.
    assert resolve_sources("duplicate", md5=MD5.upper())[0].md5 == MD5


@pytest.mark.parametrize("split", sorted(LIBRILIGHT_SPLITS))
def test_explicit_md5_with_a_split_is_an_error(split: str) -> None:
    with pytest.raises(SourceSpecError, match=f"md5 cannot be given for split '{split}'") as info:
        resolve_sources(split, md5=MD5)
    assert "\n" not in str(info.value)


def test_malformed_md5_is_an_error() -> None:
    with pytest.raises(SourceSpecError, match=r"md5 for source 'small' is not 32 hex digits"):
        resolve_sources("small", md5="abc")
    with pytest.raises(SourceSpecError, match="not 32 hex digits"):
        resolve_sources("https://example.org/a.tar", md5="z" * 32)


@pytest.mark.parametrize(
    ("source", "name"),
    [
        ("https://example.org/data/small.tar", "small"),
        ("https://example.org/data/corpus.tar.gz?X-Amz-Signature=abc#frag", "corpus"),
        ("s3://bucket/key/medium.tar", "medium"),
        ("file:///srv/data/librilight-tiny.tar", "librilight-tiny"),
        ("data/librilight-tiny/librilight-tiny.tar", "librilight-tiny"),
        ("/abs/path/librispeech_finetuning.tgz", "librispeech_finetuning"),
        ("/abs/path/audio.flac", "audio"),
        ("smal", "smal"),  # an unknown name is a path: fetch will report "source not found"
        ("unlab-6K", "unlab-6K"),  # names are matched exactly
    ],
)
def test_url_or_path_passes_through_with_its_md5(source: str, name: str) -> None:
    assert resolve_sources(source) == [ResolvedSource(name, source, None, None)]
    assert resolve_sources(f"  {source} ", md5=MD5) == [ResolvedSource(name, source, MD5, None)]


@pytest.mark.parametrize("source", ["", "   ", "https://example.org/", "https://example.org"])
def test_a_source_that_names_no_file_is_an_error(source: str) -> None:
    with pytest.raises(SourceSpecError) as info:
        resolve_sources(source)
    assert "source" in str(info.value) and "\n" not in str(info.value)


def test_an_empty_mirror_is_an_error() -> None:
    with pytest.raises(SourceSpecError, match="mirror is empty"):
        resolve_sources("small", mirror=" ")
