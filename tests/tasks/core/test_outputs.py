"""Output folders: ours or refused (the ownership marker), our own temporaries swept and nothing
else, and a lock per output held by a live process, released on kill -9, removed at the end."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from helpers import lock_held_by_another_process

from codecflow.tasks.core import outputs
from codecflow.tasks.core.errors import CodecflowError
from codecflow.tasks.core.storage import atomic_dir, atomic_file


def _tree(folder: Path) -> dict[str, bytes]:
    return {
        p.relative_to(folder).as_posix(): p.read_bytes()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def test_a_missing_or_empty_folder_is_claimed_with_a_typed_marker(tmp_path: Path) -> None:
    out = tmp_path / "a" / "ds"
    outputs.claim_output(out, "token dataset")
    marker = json.loads((out / outputs.OWNER_MARKER).read_text())
    assert marker == {"format": 1, "kind": "token dataset"}
    outputs.claim_output(out, "token dataset")  # ours: accepted again
    with pytest.raises(
        CodecflowError,
        match=r"ds is not empty and is not a codecflow LM run \(it is a codecflow token dataset\)$",
    ):
        outputs.claim_output(out, "LM run")
    empty = tmp_path / "empty"
    empty.mkdir()
    outputs.claim_output(empty, "LM run")
    assert (empty / outputs.OWNER_MARKER).is_file()


def test_someone_elses_folder_or_a_file_is_refused_and_left_as_it_was(tmp_path: Path) -> None:
    out = tmp_path / "mine"
    out.mkdir()
    (out / "size_report.json").write_text('{"mine": true}\n')
    (out / ".notes.tmp").write_text("a user's temporary-looking file\n")
    before = _tree(out)
    with pytest.raises(CodecflowError, match=f"^{out} is not empty and is not a codecflow token"):
        outputs.claim_output(out, "token dataset", committed=("dataset.json",))
    assert _tree(out) == before  # no marker written, nothing touched
    a_file = tmp_path / "file"
    a_file.write_text("x")
    with pytest.raises(CodecflowError, match=f"^{a_file} is a file, not a folder$"):
        outputs.claim_output(a_file, "token dataset")


def test_an_output_written_before_markers_existed_is_adopted(tmp_path: Path) -> None:
    legacy = tmp_path / "run"
    (legacy / "checkpoints" / "step-000010").mkdir(parents=True)
    (legacy / "checkpoints" / "step-000010" / "COMPLETE").write_text("10\n")
    (legacy / "train_log.jsonl").write_text("")
    outputs.claim_output(legacy, "LM run", committed=("checkpoints/step-*/COMPLETE",))
    assert json.loads((legacy / outputs.OWNER_MARKER).read_text())["kind"] == "LM run"
    # Killed while writing the marker: its own temporary does not make the folder someone's.
    killed = tmp_path / "killed"
    killed.mkdir()
    (killed / f"{outputs.OWNER_MARKER}.a1b2c3d4.tmp").write_text("")
    outputs.claim_output(killed, "LM run")


def test_the_sweep_removes_our_own_temporaries_and_nothing_else(tmp_path: Path) -> None:
    out = tmp_path / "out"
    (out / "shards").mkdir(parents=True)
    keep = {
        "shards/train-00000.arrow": b"committed",
        ".notes.tmp": b"a user's",  # not tasks.core.storage's pattern: no 8 random characters
        "shards/.x.abc.tmp": b"a user's",
        "data.tmp": b"a user's",
    }
    for name, data in keep.items():
        (out / name).write_bytes(data)
    # Real temporaries of tasks.core.storage, left as a kill would leave them.
    with pytest.raises(RuntimeError), atomic_file(out / "shards" / "train-00001.arrow") as tmp:
        ours_file = tmp
        raise RuntimeError("killed")
    ours_file.write_bytes(b"half")  # atomic_file removed it on the exception: put it back
    ours_dir = out / "checkpoints" / ".step-000010.k2j4h5g6.tmp"
    (ours_dir / "sub").mkdir(parents=True)
    (ours_dir / "sub" / "model.safetensors").write_bytes(b"half")
    beside_ours = tmp_path / ".out.zz99yy88.tmp"  # atomic_dir(out)'s own, beside the folder
    beside_ours.mkdir()
    beside_other = tmp_path / ".other.zz99yy88.tmp"  # another folder's: not ours to judge
    beside_other.mkdir()
    outputs.remove_stale_temporaries(out)
    assert not ours_file.exists() and not ours_dir.exists() and not beside_ours.exists()
    assert beside_other.is_dir()
    assert _tree(out) == keep


def test_atomic_dir_temporaries_match_the_swept_pattern(tmp_path: Path) -> None:
    target = tmp_path / "report"
    with pytest.raises(RuntimeError), atomic_dir(target) as tmp:
        name = tmp.name
        raise RuntimeError
    (tmp_path / name).mkdir()  # what a kill -9 would have left
    outputs.remove_stale_temporaries(target)
    assert not (tmp_path / name).exists()


def test_s3_folders_are_claimed_and_refused_the_same_way(s3_bucket: str) -> None:
    import s3fs

    fs = s3fs.S3FileSystem(skip_instance_cache=True)
    out = f"{s3_bucket}/tokens/ds"
    outputs.claim_output(out, "token dataset")
    marker = json.loads(fs.cat(f"{out[5:]}/{outputs.OWNER_MARKER}"))
    assert marker == {"format": 1, "kind": "token dataset"}
    outputs.claim_output(out, "token dataset")
    theirs = f"{s3_bucket}/theirs"
    fs.pipe(f"{theirs[5:]}/plan.parquet", b"not ours")
    with pytest.raises(CodecflowError, match="theirs is not empty and is not a codecflow token"):
        outputs.claim_output(theirs, "token dataset")
    assert fs.ls(theirs[5:]) == [f"{theirs[5:]}/plan.parquet"]


# --------------------------------------------------------------------------------------------
# Locks
# --------------------------------------------------------------------------------------------


def test_a_locked_output_is_refused_at_once_naming_the_holder(tmp_path: Path) -> None:
    out = tmp_path / "run"
    with lock_held_by_another_process(out) as pid:
        with pytest.raises(CodecflowError) as refused:
            with outputs.owned_output(out, "LM run", "train-lm"):
                pytest.fail("the lock was taken twice")
        message = str(refused.value)
        assert "\n" not in message
        assert message.startswith(f"{out} is being written by another run (holder test, pid {pid}")
        assert not out.exists()  # refused before claiming: nothing written
    # kill -9 (Popen.kill) released the flock: the next run takes it; its file stayed behind.
    assert (tmp_path / "run.lock").exists()
    with outputs.owned_output(out, "LM run", "train-lm"):
        assert (out / outputs.OWNER_MARKER).is_file()
    assert not (tmp_path / "run.lock").exists()


def test_the_lock_file_is_removed_after_success_and_after_failure(tmp_path: Path) -> None:
    out = tmp_path / "ds"
    with outputs.exclusive_lock(out, "first"):
        holder = json.loads((tmp_path / "ds.lock").read_text())
        assert holder["pid"] == os.getpid() and holder["what"] == "first"
    assert not (tmp_path / "ds.lock").exists()
    with pytest.raises(ValueError, match="boom"), outputs.exclusive_lock(out, "second"):
        raise ValueError("boom")
    assert not (tmp_path / "ds.lock").exists()


def test_a_lock_on_an_unlinked_file_excludes_nobody(tmp_path: Path) -> None:
    """A waiter that opened the lock file before its holder unlinked it gets a flock on a dead
    inode: the lock that counts is the one on the path's current file."""
    import fcntl

    out = tmp_path / "ds"
    with outputs.exclusive_lock(out, "first"):
        stale = os.open(tmp_path / "ds.lock", os.O_RDWR)
    try:
        fcntl.flock(stale, fcntl.LOCK_EX | fcntl.LOCK_NB)  # succeeds: the file was unlinked
        with outputs.exclusive_lock(out, "second"):  # not blocked by the stale flock
            with pytest.raises(CodecflowError, match=r"another run \(second, pid"):
                with outputs.exclusive_lock(out, "third"):
                    pass
    finally:
        os.close(stale)


def test_a_child_given_the_lock_keeps_it_after_its_launcher_is_killed(tmp_path: Path) -> None:
    """What run_torchrun relies on: torchrun inherits the lock's descriptor, so a kill -9 of
    the launching task does not free an output that torchrun's ranks still write."""
    import signal
    import subprocess
    import sys
    import time

    from helpers import REPO

    out = tmp_path / "run"
    code = (
        "import subprocess, sys, time; from codecflow.tasks.core import outputs\n"
        "with outputs.exclusive_lock(sys.argv[1], 'launcher') as fd:\n"
        "    child = subprocess.Popen(['sleep', '600'], pass_fds=(fd,))\n"
        "    print(child.pid, flush=True); time.sleep(600)\n"
    )
    launcher = subprocess.Popen(
        [sys.executable, "-c", code, str(out)], cwd=REPO, stdout=subprocess.PIPE, text=True
    )
    assert launcher.stdout is not None
    child = int(launcher.stdout.readline())
    try:
        launcher.kill()
        launcher.wait()
        with pytest.raises(CodecflowError, match=r"being written by another run \(launcher, pid"):
            with outputs.exclusive_lock(out, "next"):
                pass
    finally:
        os.kill(child, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while True:  # the orphan is reaped by init: the lock is free once it has gone
        try:
            with outputs.exclusive_lock(out, "next"):
                break
        except CodecflowError:
            assert time.monotonic() < deadline
            time.sleep(0.05)


def test_train_codec_and_evaluate_refuse_a_locked_out(
    tiny_manifest: Path, tiny_checkpoint: Path, tiny_dataset: Path, tmp_path: Path
) -> None:
    from helpers import PROMPT

    from codecflow.schemas.configs import EvaluateSettings, TrainCodecSettings
    from codecflow.tasks.evaluate.lm import evaluate
    from codecflow.tasks.train.codec import train_codec

    codec, report = tmp_path / "codec", tmp_path / "report"
    with lock_held_by_another_process(codec, "train-codec") as pid:
        with pytest.raises(CodecflowError, match=rf"another run \(train-codec, pid {pid} on "):
            train_codec(str(tiny_manifest), codec, TrainCodecSettings(steps=1, device="cpu"))
    settings = EvaluateSettings(prompt=str(PROMPT), seconds=0.01, device="cpu")
    with lock_held_by_another_process(report, "evaluate") as pid:
        with pytest.raises(CodecflowError, match=rf"another run \(evaluate, pid {pid} on "):
            evaluate(tiny_checkpoint, tiny_dataset, report, settings)
    assert not codec.exists() and not report.exists()
