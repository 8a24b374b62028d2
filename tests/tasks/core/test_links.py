"""Tests of tasks.core.links: which outputs get an `http://` URL of the runs folder's file server,
and how the others are named (a path as text, never a `file://` link)."""

from __future__ import annotations

from pathlib import Path

import pytest

from codecflow.tasks.core.links import FILES_ROOT_ENV, FILES_URL_ENV, file_url, markdown_link, where


@pytest.fixture
def served(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """`tmp_path/runs` as the folder a file server on port 4201 serves."""
    root = tmp_path / "runs"
    (root / "demo" / "report").mkdir(parents=True)
    (root / "demo" / "report" / "index.html").write_text("<h1>report</h1>")
    monkeypatch.setenv(FILES_URL_ENV, "http://127.0.0.1:4201/")
    monkeypatch.setenv(FILES_ROOT_ENV, str(root))
    return root


def test_an_output_below_the_served_folder_gets_its_url(served: Path) -> None:
    page = served / "demo" / "report" / "index.html"
    assert file_url(page) == "http://127.0.0.1:4201/demo/report/index.html"
    # A folder ends with "/", so the relative links of its listing resolve inside it.
    assert file_url(served / "demo" / "report") == "http://127.0.0.1:4201/demo/report/"
    assert file_url(served) == "http://127.0.0.1:4201/"
    assert markdown_link(page, "open the report") == (
        "[open the report](http://127.0.0.1:4201/demo/report/index.html)"
    )


def test_names_are_quoted_and_relative_paths_resolved(
    served: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    odd = served / "a run #1" / "index.html"
    odd.parent.mkdir()
    odd.write_text("x")
    assert file_url(odd) == "http://127.0.0.1:4201/a%20run%20%231/index.html"
    monkeypatch.chdir(served.parent)
    assert file_url("runs/demo/report") == "http://127.0.0.1:4201/demo/report/"
    assert file_url("file://" + str(served / "demo")) == "http://127.0.0.1:4201/demo/"


def test_a_symlinked_run_maps_to_what_the_server_serves(served: Path, tmp_path: Path) -> None:
    (tmp_path / "elsewhere").mkdir()
    (served / "out").symlink_to(tmp_path / "elsewhere")  # the server refuses what leaves root
    assert file_url(served / "out") is None
    (tmp_path / "alias").symlink_to(served / "demo")  # and serves what resolves inside
    assert file_url(tmp_path / "alias" / "report") == "http://127.0.0.1:4201/demo/report/"


def test_outside_the_served_folder_or_remote_it_is_named_as_text(
    served: Path, tmp_path: Path
) -> None:
    outside = tmp_path / "runs-other" / "report"  # a sibling whose name starts the same
    outside.mkdir(parents=True)
    assert file_url(outside) is None
    assert markdown_link(outside, "report") == f"report: `{outside}`"
    assert file_url("s3://bucket/tokens") is None
    assert markdown_link("s3://bucket/tokens", "dataset") == "dataset: `s3://bucket/tokens`"


def test_without_a_file_server_every_output_is_named_as_an_absolute_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(FILES_URL_ENV, raising=False)
    monkeypatch.delenv(FILES_ROOT_ENV, raising=False)
    monkeypatch.chdir(tmp_path)
    assert file_url("runs/demo/report") is None
    assert where("runs/demo/report") == str(tmp_path / "runs" / "demo" / "report")
    text = markdown_link("runs/demo/report/index.html", "open the report")
    assert text == f"open the report: `{tmp_path}/runs/demo/report/index.html`"
    assert "file://" not in text
