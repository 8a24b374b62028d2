"""Resumable checkpoints (`tasks.data.checkpoints`): the newest complete step wins by number, a
folder without COMPLETE is not a checkpoint, saves are whole and pruned to two, the log is cut
at the resumed step, and a damaged file is refused in one line naming it."""

from __future__ import annotations

import errno
import json
import re
import threading
from pathlib import Path

import pytest
import torch

from codecflow.tasks.core.errors import CodecflowError, user_error
from codecflow.tasks.data.checkpoints import (
    latest_checkpoint,
    load_training_state,
    load_weights,
    read_checkpoint_json,
    read_log,
    save_resumable,
    save_torch,
    save_weights,
)


def _step_dir(out: Path, name: str, complete: bool = True) -> Path:
    folder = out / "checkpoints" / name
    folder.mkdir(parents=True)
    if complete:
        (folder / "COMPLETE").write_text("x\n")
    return folder


def _weights() -> dict[str, torch.Tensor]:
    return {"w": torch.arange(6, dtype=torch.float32).reshape(2, 3), "b": torch.ones(3)}


def test_latest_checkpoint_orders_by_step_number_and_needs_complete(tmp_path: Path) -> None:
    assert latest_checkpoint(tmp_path) is None  # no checkpoints folder
    (tmp_path / "checkpoints").mkdir()
    assert latest_checkpoint(tmp_path) is None
    _step_dir(tmp_path, "step-000009")
    ten = _step_dir(tmp_path, "step-000010")
    assert latest_checkpoint(tmp_path) == ten
    _step_dir(tmp_path, "step-000011", complete=False)  # killed mid-save: not a checkpoint
    (_step_dir(tmp_path, "step-000012", complete=False) / "COMPLETE").mkdir()  # not a file
    _step_dir(tmp_path, ".step-000013.ab12cd34.tmp")  # atomic_dir's temporary
    _step_dir(tmp_path, "step-14")  # too few digits: not our name
    _step_dir(tmp_path, "step-000015-old")
    (tmp_path / "checkpoints" / "step-000016").write_text("a file")
    assert latest_checkpoint(tmp_path) == ten
    # Seven digits sort after six by number, not by name.
    big = _step_dir(tmp_path, "step-1000000")
    _step_dir(tmp_path, "step-999999")
    assert latest_checkpoint(tmp_path) == big


def test_save_resumable_writes_a_whole_folder_and_keeps_two(tmp_path: Path) -> None:
    state = {"optimizer": {"lr": torch.tensor(0.5)}, "rng": torch.get_rng_state(), "epoch": 2}
    for step in (5, 10, 15):
        save_resumable(tmp_path, step, _weights(), state, files={"config.json": '{"n": 1}\n'})
    folder = tmp_path / "checkpoints"
    assert sorted(p.name for p in folder.iterdir()) == ["step-000010", "step-000015"]
    newest = latest_checkpoint(tmp_path)
    assert newest == folder / "step-000015"
    assert sorted(p.name for p in newest.iterdir()) == [
        "COMPLETE",
        "config.json",
        "model.safetensors",
        "training_state.pt",
    ]
    assert (newest / "COMPLETE").read_text() == "15\n"
    assert read_checkpoint_json(newest / "config.json") == {"n": 1}
    weights = load_weights(newest / "model.safetensors")
    assert set(weights) == {"w", "b"} and torch.equal(weights["w"], _weights()["w"])
    loaded = load_training_state(newest / "training_state.pt")
    assert loaded["step"] == 15 and loaded["epoch"] == 2
    assert torch.equal(loaded["rng"], state["rng"])
    assert loaded["optimizer"]["lr"].item() == 0.5


def test_save_resumable_again_at_the_same_step_replaces_it(tmp_path: Path) -> None:
    save_resumable(tmp_path, 3, {"w": torch.zeros(2)}, {})
    save_resumable(tmp_path, 3, {"w": torch.ones(2)}, {"note": 1})
    folder = tmp_path / "checkpoints"
    assert [p.name for p in folder.iterdir()] == ["step-000003"]  # no temporaries, no .old
    assert torch.equal(
        load_weights(folder / "step-000003" / "model.safetensors")["w"], torch.ones(2)
    )
    assert load_training_state(folder / "step-000003" / "training_state.pt") == {
        "step": 3,
        "note": 1,
    }


def test_pruning_keeps_the_newest_by_number_past_a_million_steps(tmp_path: Path) -> None:
    for step in (999_998, 999_999, 1_000_000):
        save_resumable(tmp_path, step, {"w": torch.zeros(1)}, {})
    names = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert names == ["step-1000000", "step-999999"]  # the one just written is kept
    assert latest_checkpoint(tmp_path) == tmp_path / "checkpoints" / "step-1000000"


def test_a_failed_save_leaves_the_previous_checkpoints_alone(tmp_path: Path) -> None:
    save_resumable(tmp_path, 1, {"w": torch.zeros(1)}, {})
    save_resumable(tmp_path, 2, {"w": torch.zeros(1)}, {})
    with pytest.raises(TypeError, match="cannot pickle"):
        save_resumable(tmp_path, 3, {"w": torch.zeros(1)}, {"lock": threading.Lock()})
    names = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert names == ["step-000001", "step-000002"]  # nothing pruned, no temporary left
    assert latest_checkpoint(tmp_path) == tmp_path / "checkpoints" / "step-000002"


def test_read_log_cuts_the_lines_past_the_resumed_step(tmp_path: Path) -> None:
    log = tmp_path / "train_log.jsonl"
    assert read_log(log, upto=5) == []  # no log yet
    rows = [{"step": s, "loss": 1.0 / s} for s in range(1, 8)]
    log.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")
    assert read_log(log, upto=0) == []
    assert read_log(log, upto=4) == rows[:4]
    assert read_log(log, upto=100) == rows


def test_load_weights_refuses_what_is_not_safetensors_naming_the_file(tmp_path: Path) -> None:
    missing = tmp_path / "model.safetensors"
    with pytest.raises(CodecflowError) as raised:
        load_weights(missing)
    assert str(raised.value) == f"checkpoint weights not found: {missing}"
    folder = tmp_path / "a-folder"
    folder.mkdir()
    with pytest.raises(CodecflowError, match=f"^checkpoint weights not found: {folder}$"):
        load_weights(folder)
    save_resumable(tmp_path, 1, _weights(), {})
    good = tmp_path / "checkpoints" / "step-000001" / "model.safetensors"
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(good.read_bytes()[:-8])
    for bad, data in ((truncated, None), (tmp_path / "junk.safetensors", b"\x00" * 3)):
        if data is not None:
            bad.write_bytes(data)
        with pytest.raises(CodecflowError) as raised:
            load_weights(bad)
        message = str(raised.value)
        assert message.startswith(f"unreadable checkpoint {bad}: not a safetensors file (")
        assert "\n" not in message


def test_load_training_state_refuses_in_one_line_naming_the_file(tmp_path: Path) -> None:
    missing = tmp_path / "step-000001" / "training_state.pt"
    with pytest.raises(CodecflowError, match=f"^training state not found: {missing}$"):
        load_training_state(missing)
    damaged = tmp_path / "step-000002" / "training_state.pt"
    damaged.parent.mkdir()
    damaged.write_bytes(b"garbage, not a pickle or a zip")
    with pytest.raises(CodecflowError) as raised:
        load_training_state(damaged)
    assert str(raised.value) == (
        f"unreadable training state {damaged}: it is damaged; delete the checkpoint folder "
        f"{damaged.parent} to resume from the one before it"
    )
    not_a_mapping = tmp_path / "list.pt"
    torch.save([torch.zeros(1)], not_a_mapping)
    with pytest.raises(CodecflowError) as raised:
        load_training_state(not_a_mapping)
    assert str(raised.value) == f"unreadable training state {not_a_mapping}: not a mapping"


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"{not json", r": Expecting property name"),
        (b"\xff\xfe\x00garbage", r": "),
        (b"[1, 2]", r": not a JSON object$"),
        (b'"a string"', r": not a JSON object$"),
    ],
)
def test_read_checkpoint_json_refuses_naming_the_file(
    tmp_path: Path, data: bytes, reason: str
) -> None:
    path = tmp_path / "config.json"
    path.write_bytes(data)
    with pytest.raises(CodecflowError) as raised:
        read_checkpoint_json(path)
    message = str(raised.value)
    assert message.startswith(f"unreadable checkpoint file {path}")
    assert "\n" not in message
    assert re.search(reason, message), message


def test_read_checkpoint_json_of_a_missing_file_or_a_folder(tmp_path: Path) -> None:
    with pytest.raises(CodecflowError, match=f"^checkpoint file not found: {tmp_path}/metrics"):
        read_checkpoint_json(tmp_path / "metrics.json")
    (tmp_path / "config.json").mkdir()
    with pytest.raises(CodecflowError, match=f"^unreadable checkpoint file {tmp_path}/config.json"):
        read_checkpoint_json(tmp_path / "config.json")
    (tmp_path / "ok.json").write_text('{"a": [1]}')
    assert read_checkpoint_json(tmp_path / "ok.json") == {"a": [1]}


def test_a_full_disk_is_an_os_error_naming_the_file() -> None:
    """torch.save given a path raised `RuntimeError: [enforce fail at inline_container.cc:664]`
    on a full disk, and safetensors its own SafetensorError: both are now ENOSPC naming the
    file, which the CLI prints as `error: no space left on device: <path>` (/dev/full fails
    every write with ENOSPC)."""
    full = Path("/dev/full")
    for save in (
        lambda: save_torch({"step": 1, "x": torch.zeros(10_000)}, full),
        lambda: save_weights({"x": torch.zeros(10_000)}, full),
    ):
        with pytest.raises(OSError) as err:
            save()
        assert (err.value.errno, err.value.filename) == (errno.ENOSPC, str(full))
        assert str(user_error(err.value)) == f"no space left on device: {full}"
