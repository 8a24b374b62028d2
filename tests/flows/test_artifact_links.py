"""The pipeline's `pipeline-outputs` artifact: every output linked through the runs folder's file
server when one serves it, or named by its path with a note saying why (never `file://`)."""

from __future__ import annotations

from pathlib import Path

import pytest

from codecflow.flows.pipeline import PipelineRecord, outputs_markdown
from codecflow.tasks.core.links import FILES_ROOT_ENV, FILES_URL_ENV


def _run(root: Path) -> PipelineRecord:
    """A pipeline run's outputs under `root/demo`, as files and folders that exist."""
    out = root / "demo"
    for folder in ("report", "lm/checkpoint", "tokens/mu-law-256", "acquire/manifest"):
        (out / folder).mkdir(parents=True)
    (out / "report" / "index.html").write_text("<h1>report</h1>")
    (out / "acquire" / "manifest" / "segments.parquet").write_bytes(b"PAR1")
    (root / "index.html").write_text("<h1>runs</h1>")
    return PipelineRecord(
        manifest=out / "acquire" / "manifest" / "segments.parquet",
        dataset=out / "tokens" / "mu-law-256",
        checkpoint=out / "lm" / "checkpoint",
        report=out / "report",
    )


def test_served_outputs_are_links(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(FILES_URL_ENV, "http://127.0.0.1:4201")
    monkeypatch.setenv(FILES_ROOT_ENV, str(tmp_path))
    text = outputs_markdown(_run(tmp_path), tmp_path / "index.html")
    assert text == (
        "### pipeline outputs\n\n"
        "- [report](http://127.0.0.1:4201/demo/report/index.html)\n"
        "- [runs index](http://127.0.0.1:4201/index.html)\n"
        "- [LM checkpoint](http://127.0.0.1:4201/demo/lm/checkpoint/)\n"
        "- [token dataset](http://127.0.0.1:4201/demo/tokens/mu-law-256/)\n"
        "- [segment manifest](http://127.0.0.1:4201/demo/acquire/manifest/)"
    )


def test_without_a_file_server_outputs_are_named_by_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(FILES_URL_ENV, raising=False)
    monkeypatch.delenv(FILES_ROOT_ENV, raising=False)
    record = _run(tmp_path)
    (tmp_path / "index.html").unlink()  # the runs index was not written: not listed
    text = outputs_markdown(record, tmp_path / "index.html")
    assert text.splitlines()[2:4] == [
        f"- report: `{record.report / 'index.html'}`",
        f"- LM checkpoint: `{record.checkpoint}`",
    ]
    assert "runs index" not in text and "file://" not in text
    assert text.endswith("`make server` serves runs/ over HTTP)")
