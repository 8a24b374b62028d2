"""The typed records of the on-disk contracts (`tasks.data.records`): files written before the
records existed (tests/fixtures/records/, written by the dictionary code, format version 2) read
and write back to the same bytes, a tokenize run today writes the bytes of the version 3
fixtures (`*_v3*`: written when the format changed), its fingerprint moved by the format
version alone, and a file that is no record is refused in one line that names it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import codecflow.tasks.tokenize.plan
from codecflow.schemas.configs import TokenizeSettings
from codecflow.tasks.core import storage
from codecflow.tasks.core.errors import CodecflowError
from codecflow.tasks.data.records import (
    DatasetInfo,
    EvaluationSummary,
    Reject,
    ShardEntry,
    ShardFile,
    ShardMarker,
)
from codecflow.tasks.tokenize.finalize import tokenize_manifest

FIXTURES = Path(__file__).parents[2] / "fixtures" / "records"


def _sorted_json(obj: object) -> str:
    """What `storage.write_json` writes (dataset.json and the shard markers)."""
    return json.dumps(obj, indent=2, sort_keys=True) + "\n"


@pytest.mark.parametrize(
    "name", ["dataset.json", "dataset_arrow_only.json", "dataset_v3.json", "dataset_v4.json"]
)
def test_dataset_info_written_before_round_trips_to_identical_bytes(name: str) -> None:
    text = (FIXTURES / name).read_text()
    info = DatasetInfo.read(FIXTURES / name)
    assert info.totals.tokens == sum(s.tokens for s in info.shards)
    assert _sorted_json(info.to_json()) == text


def test_shard_marker_written_before_round_trips_to_identical_bytes() -> None:
    text = (FIXTURES / "shard.commit.json").read_text()
    marker = ShardMarker.read(FIXTURES / "shard.commit.json")
    assert marker.files["webdataset"].bytes > 0 and marker.rejects == ()
    assert _sorted_json(marker.to_json()) == text
    # The marker's shard as dataset.json lists it, webdataset fields included.
    listed = DatasetInfo.read(FIXTURES / "dataset.json").shards[0]
    assert ShardEntry.from_marker(marker) == listed


def test_a_shard_of_rejects_only_keeps_its_integer_zero() -> None:
    # sum() of no durations is the int 0: a float field would write 0.0, other bytes.
    literal = {
        "audio_seconds": 0,
        "files": {"arrow": {"bytes": 10, "sha256": "ab"}},
        "frames": 0,
        "name": "val-00003",
        "plan_hash": "cd",
        "rejects": [{"path": "a/b_0001", "reason": "empty audio: the segment has no samples"}],
        "rows": 0,
        "split": "val",
        "tokens": 0,
    }
    marker = ShardMarker.from_json(literal, "x.commit.json")
    assert marker.rejects == (Reject(path="a/b_0001", reason=literal["rejects"][0]["reason"]),)
    assert marker.files == {"arrow": ShardFile(bytes=10, sha256="ab")}
    assert _sorted_json(marker.to_json()) == _sorted_json(literal)
    entry = ShardEntry.from_marker(marker).to_json()
    assert "webdataset_file" not in entry and entry["audio_seconds"] == 0


def test_evaluation_summary_written_before_round_trips_to_identical_bytes() -> None:
    text = (FIXTURES / "summary.json").read_text()
    summary = EvaluationSummary.read(FIXTURES / "summary.json")
    assert summary.n_flagged_samples == 2 and summary.prompt_roundtrip.si_sdr_db > 0
    assert summary.dumps() == text  # field order is the file's key order


def test_a_tokenize_run_writes_the_bytes_the_code_before_wrote(
    tiny_manifest: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same corpus and settings as the fixtures: the version 4 fixtures' markers and
    dataset.json (but for the manifest's path), so fingerprints and shard hashes do not move;
    and the version 3 and 2 fixtures' fingerprints when planned as those versions: the format
    version is all that moved them."""
    out = tmp_path / "wds"
    settings = TokenizeSettings(formats=["arrow", "webdataset"])
    tokenize_manifest(tiny_manifest, out, settings)
    marker = (out / "shards" / "train-00000.commit.json").read_text()
    assert marker == (FIXTURES / "shard_v4.commit.json").read_text()
    before = storage.read_json(FIXTURES / "dataset_v4.json")
    now = storage.read_json(out / "dataset.json")
    assert now["fingerprint"] == before["fingerprint"]
    before["manifest"] = now["manifest"]
    assert (out / "dataset.json").read_text() == _sorted_json(before)
    for version, fixture in ((3, "dataset_v3.json"), (2, "dataset.json")):
        monkeypatch.setattr(codecflow.tasks.tokenize.plan, "DATASET_FORMAT_VERSION", version)
        planned = codecflow.tasks.tokenize.plan.plan_dataset(
            tiny_manifest, tmp_path / f"v{version}", settings
        )
        assert planned.fingerprint == storage.read_json(FIXTURES / fixture)["fingerprint"]


def test_a_file_that_is_no_record_is_refused_in_one_line(tmp_path: Path) -> None:
    summary = json.loads((FIXTURES / "summary.json").read_text())
    del summary["val_loss"]
    bad = tmp_path / "summary.json"
    bad.write_text(json.dumps(summary))
    with pytest.raises(CodecflowError, match=r"summary.json is not a valid .*val_loss") as err:
        EvaluationSummary.read(bad)
    assert str(bad) in str(err.value) and "\n" not in str(err.value)
    bad.write_text("{half")
    with pytest.raises(CodecflowError, match="not JSON"):
        EvaluationSummary.read(bad)
    extra = dict(json.loads((FIXTURES / "shard.commit.json").read_text()), surprise=1)
    with pytest.raises(CodecflowError, match="m.commit.json is not a valid shard commit marker"):
        ShardMarker.from_json(extra, "m.commit.json")  # an unknown key would be lost on rewrite
