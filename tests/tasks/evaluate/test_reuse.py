"""One evaluation per report identity at a time: the second, into another folder, waits for the
first and copies its committed report; stale registry entries are skipped (tasks.evaluate.reuse).

Whether an evaluation computed is read from its log: every computation logs its first generated
token ("evaluate: generating token 1/320"), a reuse logs none and says "reused"."""

from __future__ import annotations

import json
import logging
import threading
import time
from pathlib import Path

import pytest
from helpers import tiny_evaluate_settings

from codecflow.tasks.core import outputs
from codecflow.tasks.evaluate import reuse
from codecflow.tasks.evaluate.lm import evaluate, report_identity

_LOGGER = "codecflow.evaluate"


_settings = tiny_evaluate_settings


def _computations(caplog: pytest.LogCaptureFixture) -> int:
    return sum(
        1 for r in caplog.records if r.getMessage().startswith("evaluate: generating token 1/")
    )


def _files(folder: Path) -> dict[str, bytes]:
    return {
        p.relative_to(folder).as_posix(): p.read_bytes()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != "summary.json"
    }


def test_a_second_folder_gets_a_copy_of_the_committed_report(
    tiny_checkpoint: Path, tiny_dataset: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    first, second = tmp_path / "pipeline" / "report", tmp_path / "lm" / "evaluations" / "step"
    with caplog.at_level(logging.INFO, logger=_LOGGER):
        computed = evaluate(tiny_checkpoint, tiny_dataset, first, _settings())
        assert _computations(caplog) == 1
        copied = evaluate(tiny_checkpoint, tiny_dataset, second, _settings())
    assert _computations(caplog) == 1  # not computed again
    assert computed.reused_from is None and copied.reused_from == first.resolve()
    assert any("reused the committed report" in r.getMessage() for r in caplog.records)
    # The same report, file for file; its summary names where it came from, and nothing else
    # differs.
    assert _files(second) == _files(first)
    original = json.loads((first / "summary.json").read_text())
    reused = json.loads((second / "summary.json").read_text())
    assert reused.pop("reused_from") == str(first.resolve()) and reused == original
    assert (copied.val_loss, copied.n_flagged_samples) == (
        computed.val_loss,
        computed.n_flagged_samples,
    )
    # Another setting is another question: computed.
    with caplog.at_level(logging.INFO, logger=_LOGGER):
        evaluate(tiny_checkpoint, tiny_dataset, tmp_path / "seed5", _settings(seed=5))
    assert _computations(caplog) == 2


def test_two_evaluations_at_once_compute_once(
    tiny_checkpoint: Path, tiny_dataset: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    identity = report_identity(tiny_checkpoint, tiny_dataset, _settings())
    key = reuse.identity_key(identity)
    outs = [tmp_path / "a", tmp_path / "b"]
    records: dict[Path, object] = {}

    def run(out: Path) -> None:
        records[out] = evaluate(tiny_checkpoint, tiny_dataset, out, _settings())

    threads = [threading.Thread(target=run, args=(out,)) for out in outs]
    with caplog.at_level(logging.INFO, logger=_LOGGER):
        # The test holds the identity's lock first, so that both evaluations meet it.
        with reuse.one_at_a_time(key, tmp_path / "test"):
            for thread in threads:
                thread.start()
            deadline = time.monotonic() + 60
            while sum("waiting for its report" in r.getMessage() for r in caplog.records) < 2:
                assert time.monotonic() < deadline, "the evaluations did not wait for the lock"
                time.sleep(0.05)
            assert not any(out.exists() for out in outs)  # nothing written while waiting
        for thread in threads:
            thread.join(timeout=120)
    assert set(records) == set(outs)
    assert _computations(caplog) == 1
    reused = [r.reused_from for r in records.values()]  # type: ignore[attr-defined]
    (computed,) = [out for out in outs if records[out].reused_from is None]  # type: ignore[attr-defined]
    assert sorted(map(str, reused), key=str) == sorted(["None", str(computed.resolve())])
    # The lock file goes with its last holder; the registry lists both folders, oldest first.
    assert not (reuse.registry_folder() / f"{key}.lock").exists()
    registry = json.loads((reuse.registry_folder() / f"{key}.json").read_text())
    other = next(out for out in outs if out != computed)
    assert [e["path"] for e in registry["reports"]] == [
        str(computed.resolve()),
        str(other.resolve()),
    ]


def test_stale_entries_are_skipped_and_dropped(
    tiny_checkpoint: Path, tiny_dataset: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    import shutil

    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    evaluate(tiny_checkpoint, tiny_dataset, a, _settings())
    evaluate(tiny_checkpoint, tiny_dataset, b, _settings())  # a copy of a
    shutil.rmtree(a)  # gone
    # Changed: the same identity, but not the bytes that were committed.
    (b / "summary.json").write_text((b / "summary.json").read_text() + "\n")
    caplog.clear()  # (a's computation is in it when the `codecflow` logger is at INFO already)
    with caplog.at_level(logging.INFO, logger=_LOGGER):
        record = evaluate(tiny_checkpoint, tiny_dataset, c, _settings())
    assert _computations(caplog) == 1 and record.reused_from is None
    key = reuse.identity_key(report_identity(tiny_checkpoint, tiny_dataset, _settings()))
    registry = reuse.registry_folder() / f"{key}.json"
    assert [e["path"] for e in json.loads(registry.read_text())["reports"]] == [str(c.resolve())]
    # A registry file that is not one costs a recomputation, with a warning, and is rewritten.
    registry.write_text("{not json")
    caplog.clear()
    with caplog.at_level(logging.INFO, logger=_LOGGER):
        evaluate(tiny_checkpoint, tiny_dataset, tmp_path / "d", _settings())
    assert _computations(caplog) == 1
    assert any("registry of committed evaluation reports" in r.getMessage() for r in caplog.records)
    assert len(json.loads(registry.read_text())["reports"]) == 1


def test_a_reuse_into_a_users_folder_is_refused(
    tiny_checkpoint: Path, tiny_dataset: Path, tmp_path: Path
) -> None:
    from codecflow.tasks.core.errors import CodecflowError

    evaluate(tiny_checkpoint, tiny_dataset, tmp_path / "a", _settings())
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("mine\n")
    with pytest.raises(CodecflowError, match="is not empty and is not a codecflow evaluation"):
        evaluate(tiny_checkpoint, tiny_dataset, mine, _settings())
    assert [p.name for p in mine.iterdir()] == ["notes.txt"]
    assert outputs.OWNER_MARKER not in {p.name for p in mine.iterdir()}
