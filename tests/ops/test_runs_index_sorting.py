"""The runs index sorts by a column when its header is clicked (its inline script, in headless
chromium, the page opened from disk as a user opens it): numbers as numbers, then the other
way round on a second click, blanks last."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from live_server import CHROMIUM, CHROMIUM_ARGS, chromium_executable

from codecflow.tasks.evaluate.runs_index import write_runs_index

FIXTURE = Path(__file__).parents[1] / "fixtures" / "records" / "summary.json"


def _report(root: Path, name: str, **changes: Any) -> None:
    summary = json.loads(FIXTURE.read_text()) | changes
    (root / name / "report").mkdir(parents=True)
    (root / name / "report" / "summary.json").write_text(json.dumps(summary))


def _column(page: Any, index: int) -> list[str]:
    cells = page.locator(f"table.sortable tbody tr td:nth-child({index + 1})")
    return [c.strip() for c in cells.all_inner_texts()]


def test_clicking_a_header_sorts_the_rows(tmp_path: Path) -> None:
    from playwright.sync_api import sync_playwright

    # 9 > 10 as text, not as numbers: the sort must compare numbers.
    _report(tmp_path, "a", val_bits_per_audio_second=78_810.0, checkpoint_step=9)
    _report(tmp_path, "b", val_bits_per_audio_second=900.5, checkpoint_step=10)
    _report(tmp_path, "c", val_bits_per_audio_second=12_000.0, checkpoint_step=100)
    index = write_runs_index(tmp_path)
    executable = chromium_executable()
    assert executable is not None, f"no chromium at {CHROMIUM}: apt-get install chromium"
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page()
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.goto(index.as_uri())
            headers = [h.strip() for h in page.locator("table.sortable th").all_inner_texts()]
            bits, step = headers.index("bits / audio s"), headers.index("step")
            assert _column(page, 0) == ["a/report", "b/report", "c/report"]
            page.locator("th", has_text="bits / audio s").click()
            assert _column(page, bits) == ["900.5", "12,000", "78,810"]
            assert _column(page, 0) == ["b/report", "c/report", "a/report"]
            page.locator("th", has_text="bits / audio s").click()
            assert _column(page, bits) == ["78,810", "12,000", "900.5"]
            page.locator("th", has_text="step").click()
            assert _column(page, step) == ["9", "10", "100"]
            assert errors == []
        finally:
            browser.close()
