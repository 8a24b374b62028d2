"""Launching torchrun for a multi-rank LM training, and turning a rank's failure into one line.

`run_torchrun` holds the run's output lock, launches `torchrun --standalone` with
`-m tasks.train.lm_worker`, streams its output into the `codecflow.train-lm` log, stops it on an
interrupt, and turns the first failing rank's one-line reason into a `CodecflowError`.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from schemas.configs import TrainLMSettings
from tasks.core import outputs
from tasks.core.errors import CodecflowError
from tasks.core.threads import worker_thread_env
from tasks.data.token_dataset import read_dataset_info
from tasks.train import lm as train_lm

__all__ = ["run_torchrun"]


def run_torchrun(
    dataset: str | Path, out: Path, settings: TrainLMSettings
) -> train_lm.CheckpointRecord:
    """`torchrun --standalone --nproc_per_node=N -m tasks.train.lm_worker --config <out>/run.yaml`.

    run.yaml holds `dataset`, `out` and the settings the user set (not every default), so it
    validates in the ranks as it did here; each rank checks that it reads back as `settings`.

    The ranks inherit this process's environment: the `AWS_*` credentials and endpoint that a
    dataset on S3 is read with. A rank's one-line reason for failing (bad input, a full disk)
    becomes this task's `CodecflowError`; an interrupt or any error here stops torchrun and its
    ranks first.
    """
    out = Path(out)
    read_dataset_info(dataset)  # a missing dataset is refused before out is claimed
    # This process holds the run's lock for as long as torchrun runs (the kernel drops it if
    # it is killed); the ranks are told so through the environment and take none. torchrun
    # itself inherits the lock's descriptor: were this process killed, the output stays locked
    # until torchrun has stopped writing too.
    with outputs.owned_output(
        out, train_lm.LM_RUN_KIND, "train-lm", train_lm.LM_RUN_COMMITTED
    ) as lock_fd:
        _launch_torchrun(dataset, out, settings, () if lock_fd is None else (lock_fd,))
    return train_lm.train_lm(dataset, out, settings)  # committed: reads the checkpoint back


def _launch_torchrun(
    dataset: str | Path, out: Path, settings: TrainLMSettings, keep_fds: tuple[int, ...]
) -> None:
    import os
    import sys
    import tempfile

    run_file = _write_run_file(dataset, out, settings)
    with tempfile.TemporaryDirectory(prefix="codecflow-ranks-") as errors:
        expected = Path(errors) / "settings.json"
        expected.write_text(json.dumps(settings.model_dump(mode="json"), sort_keys=True))
        command = [
            sys.executable, "-m", "torch.distributed.run", "--standalone",
            f"--nproc_per_node={settings.nproc_per_node}",
            "-m", "tasks.train.lm_worker", "--config", str(run_file),
            "--error-dir", errors, "--expect-settings", str(expected),
        ]  # fmt: skip
        # Each rank's share of this machine's CPUs, unless an override is set (tasks.core.threads).
        threads = worker_thread_env(settings.nproc_per_node)
        env = {**os.environ, **threads, train_lm.LM_RUN_HELD_ENV: str(out)}
        status = _stream_process(command, env, keep_fds)
        if status != 0:
            _raise_rank_failure(Path(errors), status)


def _write_run_file(dataset: str | Path, out: Path, settings: TrainLMSettings) -> Path:
    """`<out>/run.yaml`: a TrainLMConfig of the fields the user set, as they gave them.

    A full dump would add the default model shape beside a `preset`, and would validate no
    more; every field goes to the ranks apart (`--expect-settings`), for them to check that
    this file reads back as the same settings.
    """
    import yaml

    config = {
        **settings.model_dump(mode="json", exclude_unset=True),
        "dataset": str(dataset),
        "out": str(out),
    }
    run_file = out / "run.yaml"
    run_file.write_text(yaml.safe_dump(config, sort_keys=True))
    return run_file


def _raise_rank_failure(errors: Path, status: int) -> None:
    """The first failing rank's one-line reason as a CodecflowError; else torchrun's status."""
    reasons = sorted(errors.glob("rank-*.txt"), key=lambda p: int(p.stem[5:]))
    if reasons:
        rank = reasons[0].stem[5:]
        reason = reasons[0].read_text().strip()
        raise CodecflowError(f"train-lm rank {rank} failed: {reason}")
    raise RuntimeError(f"torchrun exited with status {status}; see the log above")


def _stream_process(command: list[str], env: dict[str, str], keep_fds: tuple[int, ...]) -> int:
    """Run `command`, its output lines into the run's log; stop it if this process is stopped."""
    import subprocess

    logger = logging.getLogger("codecflow.train-lm")
    logger.info("launching %s", " ".join(command))
    process = subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
        pass_fds=keep_fds,
    )
    try:
        assert process.stdout is not None
        for line in process.stdout:
            logger.info("%s", line.rstrip())
        return process.wait()
    finally:
        if process.poll() is None:  # interrupted: torchrun forwards SIGTERM to its ranks
            process.terminate()
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        if process.stdout is not None:
            process.stdout.close()
