"""The codec on torchrun ranks (gloo on the CPU): the ranks hold one codec, weights and codebooks
bit for bit; a 2-rank run killed with SIGKILL resumes on one rank and continues the sequence of
crops; a rank's bad input is one line."""

from __future__ import annotations

import fcntl
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from helpers import REPO

from codecflow.schemas.configs import TrainCodecSettings
from codecflow.tasks.data.checkpoints import latest_checkpoint
from codecflow.tasks.train.codec import train_codec
from codecflow.tasks.train.torchrun import run_codec_torchrun

TINY = {
    "arch": "jukebox",
    "num_levels": 4,
    "codebook_size": 64,
    "channels": 8,
    "latent_dim": 8,
    "res_depth": 1,
    "n_blocks": 3,
    "crop_seconds": 0.128,
    "batch_size": 2,
    "warmup_steps": 2,
    "learning_rate": 3e-3,
    # Fast EMA: unused codes fall under the dead-code threshold within a few steps, so that the
    # restarts decided on rank 0 and broadcast happen in a short run (checked below).
    "update_speed": 0.5,
    "loader_workers": 1,
    "device": "cpu",
}


def _log(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]


def _ranks(out: Path) -> list[dict]:
    return [json.loads((out / "ranks" / f"rank-{r}.json").read_text()) for r in (0, 1)]


def test_two_ranks_hold_one_codec_bit_for_bit(tiny_manifest: Path, tmp_path: Path) -> None:
    settings = TrainCodecSettings(**TINY, steps=12, checkpoint_every=5, nproc_per_node=2)
    record = run_codec_torchrun(str(tiny_manifest), tmp_path, settings)
    assert record.path == tmp_path / "checkpoint" and record.steps == 12
    ranks = _ranks(tmp_path)
    assert ranks[0]["parameters_sha256"] == ranks[1]["parameters_sha256"]
    assert ranks[0]["buffers_sha256"] == ranks[1]["buffers_sha256"]  # codebooks and statistics
    log = _log(tmp_path)
    assert [r["ranks"] for r in log] == [2] * 12
    assert [r["crops"] for r in log] == [[4 * s, 4 * s + 4] for s in range(12)]  # 2 ranks x 2
    assert any(r["restarted_codes"] > 0 for r in log)  # restarts were broadcast (the post's)
    assert len({r["levels_used"] for r in log}) > 1  # quantizer dropout, the same on each rank
    metrics = json.loads((record.path / "metrics.json").read_text())
    assert metrics["ranks"] == 2 and metrics["crops_per_s"] > 0


def _children(pid: int) -> list[int]:
    return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def _stat(pid: int) -> list[str] | None:
    """`/proc/<pid>/stat`'s fields after the command name (state, ppid, pgrp, ...), or None."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError):
        return None


def _gone(pid: int) -> bool:
    """True once `pid` has exited (a zombie has closed its files too)."""
    fields = _stat(pid)
    return fields is None or fields[0] in ("Z", "X")


def _group(pgid: int) -> list[int]:
    """The processes of process group `pgid` (a rank and its loader workers)."""
    pids = [int(p) for p in os.listdir("/proc") if p.isdigit()]
    return [pid for pid in pids if (fields := _stat(pid)) is not None and int(fields[2]) == pgid]


def _kill_9_all(process: subprocess.Popen[bytes]) -> None:
    """SIGKILL to torchrun and, at once, to each rank's process group (torchrun starts every
    rank in a session of its own; a rank's loader workers are in its group): a machine that
    dies. Returns when all of them have exited."""
    ranks = _children(process.pid)
    assert len(ranks) == 2
    for rank in ranks:
        os.killpg(rank, signal.SIGKILL)
    process.kill()
    process.wait()
    deadline = time.monotonic() + 60
    # The whole groups, not only the ranks: a rank's loader workers inherit its lock's fd, and
    # the flock is free only when the last of them has died (CI once resumed too early).
    while time.monotonic() < deadline:
        if all(_gone(pid) for rank in ranks for pid in [rank, *_group(rank)]):
            break
        time.sleep(0.05)


def _wait_for_the_lock(lock: Path, timeout: float = 180.0) -> None:
    """Until the kernel has released the killed run's flock (the last process holding its fd
    has exited: on a loaded machine that can take a while after SIGKILL)."""
    if not lock.exists():
        return
    deadline = time.monotonic() + timeout
    fd = os.open(lock, os.O_RDWR)
    try:
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                fcntl.flock(fd, fcntl.LOCK_UN)
                return
            except BlockingIOError:
                assert time.monotonic() < deadline, (
                    f"{lock} still locked {timeout:.0f} s after kill"
                )
                time.sleep(0.1)
    finally:
        os.close(fd)


def test_kill_9_on_two_ranks_then_resume_on_one(tiny_manifest: Path, tmp_path: Path) -> None:
    """torchrun started by hand (its rank 0 takes the output's lock), every process of it killed
    at once after a checkpoint, then the run finished by one process: the step counter and the
    sequence of crops continue, none repeated, none skipped."""
    settings = TrainCodecSettings(**TINY, steps=30, checkpoint_every=4, nproc_per_node=2)
    out = tmp_path / "run"
    run_file = tmp_path / "run.yaml"
    config = {**settings.model_dump(mode="json"), "manifest": str(tiny_manifest), "out": str(out)}
    run_file.write_text(yaml.safe_dump(config))
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
        "-m", "codecflow.tasks.train.codec_worker", "--config", str(run_file),
    ]  # fmt: skip
    process = subprocess.Popen(command, cwd=REPO, env={**os.environ, "OMP_NUM_THREADS": "1"})
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        latest = latest_checkpoint(out)
        if latest is not None and latest.name >= "step-000008":
            break
        assert process.poll() is None, "training ended before it could be killed"
        time.sleep(0.1)
    _kill_9_all(process)
    _wait_for_the_lock(Path(f"{out}.lock"))
    killed_at = int(latest_checkpoint(out).name.split("-")[1])  # type: ignore[union-attr]
    assert 8 <= killed_at < 30 and not (out / "checkpoint").exists()

    record = train_codec(str(tiny_manifest), out, settings.model_copy(update={"nproc_per_node": 1}))
    metrics = json.loads((record.path / "metrics.json").read_text())
    assert metrics["resumed_from"] == killed_at and metrics["ranks"] == 1
    log = _log(out)
    assert [r["step"] for r in log] == list(range(1, 31))
    assert [r["ranks"] for r in log] == [2] * killed_at + [1] * (30 - killed_at)
    assert log[0]["crops"][0] == 0
    for before, after in zip(log, log[1:], strict=False):
        assert after["crops"][0] == before["crops"][1]  # the crop sequence continues
    assert log[-1]["crops"][1] == 4 * killed_at + 2 * (30 - killed_at)


def test_a_ranks_bad_input_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The codec's worker on a manifest whose audio is gone: a loader worker's error, through
    the rank's main, one line and exit status 2."""
    from codecflow.tasks.train.codec_worker import main

    manifest = tmp_path / "segments.parquet"
    import pyarrow as pa
    import pyarrow.parquet as pq

    from codecflow.schemas.tables import MANIFEST_AUDIO_ROOT_KEY, SEGMENT_MANIFEST_SCHEMA

    row = {
        "segment_id": "s0", "subset": "small", "speaker": "1", "book_id": "1",
        "source_path": "gone.flac", "start_s": 0.0, "end_s": 2.0, "duration_s": 2.0,
        "sample_rate": 16_000, "channels": 1, "snr": 30.0, "split": "train",
        "chunks": [{"start_s": 0.0, "end_s": 2.0}],
    }  # fmt: skip
    schema = SEGMENT_MANIFEST_SCHEMA.with_metadata({MANIFEST_AUDIO_ROOT_KEY: b"."})
    pq.write_table(pa.Table.from_pylist([row], schema=schema), manifest)
    settings = TrainCodecSettings(**TINY, steps=2)
    run_file = tmp_path / "run.yaml"
    config = {**settings.model_dump(mode="json"), "manifest": str(manifest)}
    run_file.write_text(yaml.safe_dump({**config, "out": str(tmp_path / "codec")}))
    assert main(["--config", str(run_file), "--error-dir", str(tmp_path)]) == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith(f"error: rank 0: unreadable audio {tmp_path / 'gone.flac'}: ")
    assert (tmp_path / "rank-0.txt").read_text().strip() == line.removeprefix("error: rank 0: ")
