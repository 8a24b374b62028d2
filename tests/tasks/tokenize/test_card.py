"""The dataset card (`README.md` in a token dataset's folder): YAML front matter that
huggingface_hub reads (license by the source archive, configs with one pattern per split that
matches exactly that split's shards), provenance, tokenizer, sizes that are dataset.json's, and
loading instructions that run as written."""

from __future__ import annotations

import fnmatch
import json
import re
import shutil
from pathlib import Path

import pytest
import yaml
from helpers import REPO, tiny_tar_md5

from codecflow.schemas.configs import TokenizeSettings
from codecflow.tasks.core import storage
from codecflow.tasks.data.manifest import EXTRACTED_MARKER
from codecflow.tasks.data.token_dataset import read_dataset_info
from codecflow.tasks.tokenize.card import CARD_NAME, LIBRILIGHT_LICENSE, LICENSES_BY_MD5
from codecflow.tasks.tokenize.finalize import tokenize_manifest


def _front_matter(text: str) -> dict:
    match = re.match(r"^---\n(.*?)\n---\n", text, re.S)
    assert match, "a card starts with YAML front matter between --- lines"
    return yaml.safe_load(match.group(1))


def test_the_card_describes_the_dataset_as_huggingface_reads_it(
    tiny_dataset: Path, tiny_manifest: Path
) -> None:
    from huggingface_hub import DatasetCard

    info = read_dataset_info(tiny_dataset)
    text = (tiny_dataset / CARD_NAME).read_text()
    front = _front_matter(text)
    card = DatasetCard.load(tiny_dataset / CARD_NAME)  # the Hub's own parser
    assert card.data.license == front["license"] == "cc-by-4.0"  # the embedded corpus: LibriSpeech
    assert card.data.task_categories == ["audio-to-audio"] and "en" in card.data.language
    assert front["size_categories"] == ["n<1K"]
    (config,) = card.data.configs
    assert config["config_name"] == "default"
    files = {f.file for f in info.shards}
    for entry in config["data_files"]:
        matched = {f for f in files if fnmatch.fnmatch(f, entry["path"])}
        assert matched == {s.file for s in info.shards if s.split == entry["split"]}
    assert [e["split"] for e in config["data_files"]] == ["train", "val"]
    # Provenance, tokenizer and sizes: what dataset.json and the manifest say.
    assert storage.sha256(tiny_manifest) in text and info.fingerprint in text
    assert f"md5 `{tiny_tar_md5()}`" in text and "Archive `librilight-tiny`" in text
    assert "| levels (K) | 1 |" in text and "| codebook size | 256 |" in text
    for split in ("train", "val"):
        shards = [s for s in info.shards if s.split == split]
        rows, tokens = sum(s.rows for s in shards), sum(s.tokens for s in shards)
        assert re.search(rf"\| {split} \| {len(shards)} \| {rows} \| .* \| {tokens:,} \|", text)
    assert f"| total | {len(info.shards)} | {info.totals.segments} |" in text


def test_the_cards_pyarrow_and_codecflow_snippets_run_in_the_dataset_folder(
    tiny_dataset: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    text = (tiny_dataset / CARD_NAME).read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, re.S)
    assert len(blocks) == 3  # pyarrow, codecflow, datasets (run by test_hf_interop.py)
    monkeypatch.chdir(tiny_dataset)
    plain: dict = {}
    exec(blocks[0], plain)
    assert (
        len(plain["codes"]) == 1 and len(plain["codes"][0]) == plain["table"]["n_frames"][0].as_py()
    )
    ours: dict = {}
    exec(blocks[1], ours)
    assert ours["segments"][0]["codes"].tolist() == plain["codes"]
    assert len(ours["windows"]) > 0
    ours["segments"].close()
    ours["windows"].close()


def test_the_embedded_corpus_md5_is_the_one_published_beside_it() -> None:
    assert LICENSES_BY_MD5[tiny_tar_md5()] == {"license": "cc-by-4.0"}
    readme = (REPO / "data" / "librilight-tiny" / "README.md").read_text()
    assert "CC BY 4.0" in readme


def test_audio_of_an_unknown_archive_is_libri_lights_public_domain(
    tiny_manifest: Path, tmp_path: Path
) -> None:
    """Another archive than the embedded corpus (here: its extraction record gone, as after an
    extraction by hand): Libri-Light's licence, and the card says there is no record."""
    acquire = tmp_path / "acquire"
    shutil.copytree(tiny_manifest.parents[1], acquire, ignore=shutil.ignore_patterns("download"))
    (acquire / "librilight" / "librilight-tiny" / EXTRACTED_MARKER).unlink()
    out = tmp_path / "tokens"
    tokenize_manifest(acquire / "manifest" / "segments.parquet", out, TokenizeSettings())
    text = (out / CARD_NAME).read_text()
    front = _front_matter(text)
    assert {k: front[k] for k in LIBRILIGHT_LICENSE} == LIBRILIGHT_LICENSE
    assert "Archive `librilight-tiny`: no extraction record" in text
    assert json.loads((out / "dataset.json").read_text())["fingerprint"] in text
