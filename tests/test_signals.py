"""Ctrl-C, SIGTERM and SIGKILL of a real `codecflow` run on Prefect's ephemeral server (the path
a user walks: no PREFECT_API_URL). Ctrl-C signals the whole process group, as a terminal does.

- SIGINT to the group: the run stops within seconds, committed checkpoints stay, the last line
  is `error: interrupted; re-run to resume`, exit 130, and a re-run resumes from the checkpoint.
- SIGTERM to the process: the same stop, exit 143.
- SIGKILL: the ephemeral server does not outlive its run.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import REPO

from codecflow.tasks.data.checkpoints import latest_checkpoint

# Long enough that the signal, sent at the first checkpoint (step 100), finds it training; short
# enough for the resumed run to finish in seconds. A resume must ask for the same steps.
_STEPS = 1000

_TINY = [
    "n_layer=1",
    "n_head=2",
    "n_embd=32",
    "block_size=64",
    "batch_size=4",
    "warmup_steps=2",
    "device=cpu",
    "checkpoint_every=100",
    "eval_batches=1",
]


def _start(dataset: Path, out: Path, steps: int, home: Path) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    env.update({"PREFECT_HOME": str(home), "OMP_NUM_THREADS": "1"})
    args = [f"dataset={dataset}", f"out={out}", f"steps={steps}", *_TINY]
    return subprocess.Popen(
        [sys.executable, "-m", "codecflow", "train-lm", *(a for s in args for a in ("--set", s))],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its own process group, as a shell job in a terminal
    )


def _children(pid: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def _server_of(process: subprocess.Popen[str]) -> int:
    """The pid of the run's ephemeral server (a child running uvicorn), waiting for it."""
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        for child in _children(process.pid):
            cmdline = Path(f"/proc/{child}/cmdline").read_bytes()
            if b"uvicorn" in cmdline and b"prefect.server" in cmdline:
                return child
        assert process.poll() is None, process.communicate()
        time.sleep(0.2)
    raise AssertionError("no ephemeral server started")


def _wait_for_checkpoint(process: subprocess.Popen[str], out: Path) -> int:
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        latest = latest_checkpoint(out)
        if latest is not None:
            return int(latest.name.split("-")[1])
        assert process.poll() is None, process.communicate()
        time.sleep(0.2)
    raise AssertionError("no checkpoint within 300 s")


def _gone(pid: int, within: float) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        # A zombie has exited; only its parent (gone too) would reap it.
        stat = Path(f"/proc/{pid}/stat")
        if stat.exists() and stat.read_text().rsplit(")", 1)[1].split()[0] == "Z":
            return True
        time.sleep(0.1)
    return False


@pytest.mark.parametrize(
    ("signum", "to_group", "status"),
    [(signal.SIGINT, True, 130), (signal.SIGTERM, False, 143)],
    ids=["ctrl-c-to-the-group", "sigterm-to-the-process"],
)
def test_a_signal_stops_the_run_cleanly_and_a_rerun_resumes(
    tiny_dataset: Path, tmp_path: Path, signum: int, to_group: bool, status: int
) -> None:
    out = tmp_path / "lm"
    process = _start(tiny_dataset, out, _STEPS, tmp_path / "prefect")
    server = _server_of(process)
    step = _wait_for_checkpoint(process, out)
    sent = time.monotonic()
    if to_group:
        os.killpg(process.pid, signum)
    else:
        process.send_signal(signum)
    _, stderr = process.communicate(timeout=120)
    assert time.monotonic() - sent < 60, "the run took more than a minute to stop"
    assert process.returncode == status, stderr[-3000:]
    assert stderr.strip().splitlines()[-1] == "error: interrupted; re-run to resume"
    assert _gone(server, within=10), "the ephemeral server outlived its run"
    kept = latest_checkpoint(out)
    assert kept is not None and int(kept.name.split("-")[1]) >= step  # committed work stays
    assert not list(out.rglob("*.tmp")), "a half-written checkpoint was left"
    assert not (tmp_path / "lm.lock").exists(), "the lock file stayed after the run"

    if not to_group:
        return  # the resume after an interrupt is shown once, for Ctrl-C
    resumed_at = int(kept.name.split("-")[1])
    rerun = _start(tiny_dataset, out, _STEPS, tmp_path / "prefect")  # the same run, resumed
    stdout, stderr = rerun.communicate(timeout=600)
    assert rerun.returncode == 0, stderr[-3000:]
    assert stdout.strip().splitlines()[-1] == f"checkpoint: {out / 'checkpoint'}"
    metrics = json.loads((out / "checkpoint" / "metrics.json").read_text())
    assert metrics["resumed_from"] == resumed_at and metrics["steps"] == _STEPS


def test_the_ephemeral_server_dies_with_a_killed_run(tiny_dataset: Path, tmp_path: Path) -> None:
    process = _start(tiny_dataset, tmp_path / "lm", 100_000, tmp_path / "prefect")
    server = _server_of(process)
    os.kill(process.pid, signal.SIGKILL)
    process.communicate()
    assert _gone(server, within=15), "an orphaned ephemeral server outlived its SIGKILLed run"
