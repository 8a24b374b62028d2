"""The report, the runs index and the dataset card link to the documentation page that explains
them: relative into the locally built site (`make docs`) when there is one, else to the page's
source on GitHub; and every page they name exists in docs/."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import REPO

from codecflow.schemas import resources
from codecflow.schemas.resources import DOCS_SOURCE_URL, docs_url
from codecflow.tasks.evaluate.runs_index import write_runs_index
from codecflow.tasks.tokenize.card import CARD_NAME

PAGES = ("guides/evaluation", "guides/datasets")


def test_the_pages_linked_exist() -> None:
    for page in PAGES:
        assert (REPO / "docs" / f"{page}.md").is_file(), page


def test_without_a_built_site_the_link_is_the_pages_source(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(resources, "BUILT_SITE", tmp_path / "site")
    assert docs_url("guides/evaluation", tmp_path) == f"{DOCS_SOURCE_URL}/guides/evaluation.md"
    assert DOCS_SOURCE_URL.startswith("https://")


def test_with_a_built_site_the_link_is_relative_and_opens_the_page(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    site = tmp_path / "checkout" / "site"
    (site / "guides").mkdir(parents=True)
    (site / "guides" / "evaluation.html").write_text("<html></html>")
    monkeypatch.setattr(resources, "BUILT_SITE", site)
    report = tmp_path / "checkout" / "runs" / "x" / "report"
    report.mkdir(parents=True)
    url = docs_url("guides/evaluation", report)
    assert url == "../../../site/guides/evaluation.html"
    assert (report / url).resolve() == (site / "guides" / "evaluation.html").resolve()
    # An object store has no relative path to the site: the source's URL.
    assert docs_url("guides/evaluation", "s3://bucket/runs").startswith("https://")


def test_the_runs_index_and_the_card_link_their_page(tiny_dataset: Path, tmp_path: Path) -> None:
    write_runs_index(tmp_path)
    page = (tmp_path / "index.html").read_text()
    assert "Evaluation and reports</a>" in page and "guides/evaluation" in page
    card = (tiny_dataset / CARD_NAME).read_text()
    assert "[Token datasets and formats](" in card and "guides/datasets" in card
