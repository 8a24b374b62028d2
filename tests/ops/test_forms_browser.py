"""Each stage's form in the Prefect UI, in a real browser (issue 28): text a person reads.

For every deployment of a flow, its custom-run form: no optional field offered as a choice of
its type and "None" (the 'Property is type "None"' line shows only under the tabs titled on
purpose, "no Slurm" and "no codec stage"), no class name ("TrainCodecSettings"), the
placeholders of the descriptions as written (the UI drops an angle-bracket placeholder as an
HTML tag: "under <out>/tokens/" read "under /tokens/"), and `preset` as a drop-down of the
presets. On a failure, `ui_page` keeps `failure.png`, `failure.html` and `failure.log` in the
test's `tmp_path/screenshots/` and prints their paths.
"""

from __future__ import annotations

import re
from pathlib import Path

from live_server import LiveServer, form_group, open_custom_run, ui_page

#: Deployment -> a description's text that the form must show as written.
WRITTEN = {
    "acquire": "empty means ROOT/download for a local root",
    "train-codec": "Local folder",
    "eval-codec": "Local folder",
    "compare-codecs": "'codec:CHECKPOINT@LEVELS' (list one per number of levels",
    "tokenize": "'codec:CHECKPOINT[@LEVELS]' (a codec trained by train-codec",
    "train-lm": "Model shape: 'post' is the post's LM",
    "evaluate": "the report goes to out/step-N-hash",
    "pipeline": "the segments into token shards under OUT/tokens/TOKENIZER.",
}
#: The titled choices whose null tab shows Prefect's 'Property is type "None"' line.
TITLED_NONE = {"no Slurm", "no codec stage"}


def _check_form(page: object, deployment: str) -> None:
    from playwright.sync_api import expect

    main = page.locator("main")  # type: ignore[attr-defined]
    expect(main.get_by_text(WRITTEN[deployment], exact=False).first).to_be_visible()
    text = main.inner_text()
    assert not re.search(r"\b[A-Z]\w+(Settings|Config)\b", text), deployment
    # Each 'Property is type "None"' sits under a selected tab titled on purpose.
    nones = main.get_by_text('Property is type "None"', exact=True)
    for i in range(nones.count()):
        group = nones.nth(i).locator("xpath=ancestor::div[.//*[@role='tab']][1]")
        selected = group.get_by_role("tab", selected=True).inner_text()
        assert selected in TITLED_NONE, f"{deployment}: a None under {selected!r}"


def test_every_stage_form_reads_as_text(live_server: LiveServer, tmp_path: Path) -> None:
    from playwright.sync_api import expect

    with ui_page(live_server, tmp_path / "screenshots") as page:
        for deployment in WRITTEN:
            open_custom_run(page, live_server, deployment)
            expect(page.get_by_text("cfg (Optional)", exact=True)).to_be_visible()
            _check_form(page, deployment)
            if deployment == "train-lm":
                preset = form_group(page, "Preset")
                preset.get_by_role("button", name="Select Preset").click()
                expect(page.get_by_role("option")).to_have_text(["tiny", "demo", "post"])
                page.keyboard.press("Escape")
            if deployment == "pipeline":
                codec = form_group(page, "train_codec")
                codec.get_by_role("tab", name="train a codec").click()
                expect(codec.get_by_text("Num Levels (Optional)", exact=True)).to_be_visible()
                _check_form(page, deployment)
