"""Every page codecflow writes, in a real browser at 1 280 px (issue 28): the evaluation report,
the runs index over two of them, the codec comparison and the eval-codec page.

Each page is opened from its folder (file://, as a user opens it), screenshotted whole, and
checked: nothing wider than the window (a wide table scrolls inside its own box), every
picture loaded and no wider than the page, no empty header row, no blank metric without its
reason, and the line that says which codecflow wrote it and when. On a failure the screenshot
and the page's HTML stay in the test's `tmp_path/pages/` (`<page>.png`, `failure.html`)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from helpers import PROMPT
from live_server import CHROMIUM_ARGS, chromium_executable

from codecflow import __version__
from codecflow.schemas.configs import (
    CompareCodecsSettings,
    EvalCodecSettings,
    EvaluateSettings,
    TrainCodecSettings,
)
from codecflow.tasks.evaluate.codec import eval_codec
from codecflow.tasks.evaluate.compare import compare_codecs
from codecflow.tasks.evaluate.lm import evaluate
from codecflow.tasks.evaluate.runs_index import write_runs_index
from codecflow.tasks.train.codec import train_codec

WIDTH = 1280

#: A codec small enough to train in seconds (tests/tasks/train/test_codec.py's TINY).
TINY_CODEC = {
    "arch": "jukebox", "num_levels": 4, "codebook_size": 64, "channels": 16, "latent_dim": 8,
    "res_depth": 1, "n_blocks": 3, "crop_seconds": 0.256, "batch_size": 4, "warmup_steps": 2,
    "learning_rate": 3e-3, "steps": 20, "checkpoint_every": 20, "device": "cpu",
}  # fmt: skip


@pytest.fixture(scope="module")
def pages(
    tiny_checkpoint: Path,
    tiny_dataset: Path,
    tiny_manifest: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("runs")
    common: dict[str, Any] = {"prompt": str(PROMPT), "num_samples": 2, "device": "cpu"}
    # One report with the speech metrics on (their reasons for what 0.3 s cannot give), one
    # without (the reason: turned off), side by side in the runs index.
    heard = EvaluateSettings(**common, seconds=0.3, regenerate_seconds=0.3, speech_metrics=True)
    evaluate(tiny_checkpoint, tiny_dataset, root / "a" / "report", heard)
    plain = EvaluateSettings(**common, seconds=0.02, regenerate_seconds=0.02, speech_metrics=False)
    evaluate(tiny_checkpoint, tiny_dataset, root / "b" / "report", plain)
    codec = root / "codec"
    train_codec(str(tiny_manifest), codec, TrainCodecSettings(**TINY_CODEC))
    settings = EvalCodecSettings(n_wavs=1, max_segments=2, device="cpu")
    eval_codec(codec / "checkpoint", str(tiny_manifest), root / "eval-codec", settings)
    names = ["mu-law-256", "mu-law-256-post", f"codec:{codec / 'checkpoint'}@2", "codec:rvq-8@4"]
    compared = CompareCodecsSettings(tokenizers=names, max_segments=2, max_seconds=1.0)
    compare_codecs(
        str(tiny_manifest), root / "compare", compared.model_copy(update={"device": "cpu"})
    )
    return {
        "report": root / "a" / "report" / "index.html",
        "report-without-speech": root / "b" / "report" / "index.html",
        "runs-index": write_runs_index(root),
        "compare-codecs": root / "compare" / "index.html",
        "eval-codec": root / "eval-codec" / "index.html",
    }


def _check_page(page: Any, name: str) -> None:
    widths = page.evaluate("() => [document.documentElement.scrollWidth, window.innerWidth]")
    assert widths[0] <= widths[1], f"{name}: {widths[0]} px wide in a {widths[1]} px window"
    # Every picture loaded, and no element but a scrolling box wider than the window.
    broken = page.evaluate(
        "() => [...document.images].filter(i => !i.complete || i.naturalWidth === 0).length"
    )
    assert broken == 0, f"{name}: {broken} picture(s) did not load"
    over = page.evaluate(
        """() => [...document.body.querySelectorAll('*')]
            .filter(e => !e.closest('.wide') && e.getBoundingClientRect().right > innerWidth + 1)
            .map(e => e.tagName)"""
    )
    assert over == [], f"{name}: {over} overflow the window"
    header_rows = page.evaluate(
        """() => [...document.querySelectorAll('tr')]
            .filter(r => r.querySelector('th') && !r.innerText.trim()).length"""
    )
    assert header_rows == 0, f"{name}: an empty header row"
    text = page.locator("body").inner_text()
    # A blank metric is "–" followed by its reason in parentheses.
    bare = [m for m in re.finditer(r"–(?!\s*\()", text)]
    assert not bare, f"{name}: a '–' without a reason: {text[max(0, bare[0].start() - 80) :][:160]}"
    stamp = re.search(
        rf"codecflow {re.escape(__version__)}(, commit \w+\+?)?, written (\S+ \S+) UTC", text
    )
    assert stamp is not None, f"{name}: no version and date line"


def test_every_page_fits_1280_px_and_explains_its_blanks(
    pages: dict[str, Path], tmp_path: Path
) -> None:
    from playwright.sync_api import sync_playwright

    executable = chromium_executable()
    assert executable is not None, "no chromium: apt-get install chromium"
    shots = tmp_path / "pages"
    shots.mkdir()
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": WIDTH, "height": 900})
            for name, path in pages.items():
                page.goto(path.as_uri())
                page.wait_for_load_state("load")
                page.screenshot(path=str(shots / f"{name}.png"), full_page=True)
                try:
                    _check_page(page, name)
                except AssertionError as err:
                    (shots / "failure.html").write_text(page.content())
                    err.add_note(f"screenshots in {shots}")
                    raise
        finally:
            browser.close()
