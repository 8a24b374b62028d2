"""Launching torchrun for a multi-rank training (the LM or the codec), and turning a rank's
failure into one line.

Launcher side: `run_torchrun` (train-lm) and `run_codec_torchrun` (train-codec) hold the run's
output lock, launch `torchrun --standalone` with the trainer's worker module, stream its output
into the `codecflow.<command>` log, stop it on an interrupt, and turn the first failing rank's
one-line reason into a `CodecflowError`.

Rank side: `rank_main` is a worker module's `main` (`tasks.train.lm_worker`,
`tasks.train.codec_worker`): it reads `--config` (the trainer's config as YAML), checks it against
the launcher's `--expect-settings`, trains, and turns bad input into `error: rank R: <reason>` on
stderr and in `--error-dir`, exit status 2.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from codecflow.schemas.configs import TrainCodecSettings, TrainLMSettings
from codecflow.tasks.core import outputs, storage
from codecflow.tasks.core.errors import CodecflowError, user_error
from codecflow.tasks.core.threads import apply_thread_policy, worker_thread_env
from codecflow.tasks.core.tracking import check_log_to
from codecflow.tasks.data.token_dataset import read_dataset_info
from codecflow.tasks.train import codec as train_codec
from codecflow.tasks.train import lm as train_lm

__all__ = [
    "check_settings",
    "CODEC_JOB",
    "LM_JOB",
    "rank_main",
    "write_run_file",
    "read_run_config",
    "run_codec_torchrun",
    "run_torchrun",
]


@dataclass(frozen=True)
class _Job:
    """What differs between the trainers that run under torchrun."""

    command: str  # "train-lm": the log's name and the failure's prefix
    worker: str  # the module each rank runs
    data_key: str  # the config field naming the data: "dataset", "manifest"
    kind: str  # the kind of output folder (tasks.core.outputs)
    committed: tuple[str, ...]
    held_env: str  # tells the ranks that the launcher holds the output's lock


LM_JOB = _LM = _Job(
    "train-lm",
    "codecflow.tasks.train.lm_worker",
    "dataset",
    train_lm.LM_RUN_KIND,
    train_lm.LM_RUN_COMMITTED,
    train_lm.LM_RUN_HELD_ENV,
)
CODEC_JOB = _CODEC = _Job(
    "train-codec",
    "codecflow.tasks.train.codec_worker",
    "manifest",
    train_codec.CODEC_RUN_KIND,
    train_codec.CODEC_RUN_COMMITTED,
    train_codec.CODEC_RUN_HELD_ENV,
)


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
    check_log_to(settings.log_to)  # here, not as every rank's failure
    _run(_LM, str(dataset), out, settings, settings.nproc_per_node)
    return train_lm.train_lm(dataset, out, settings)  # committed: reads the checkpoint back


def run_codec_torchrun(
    manifest: str, out: Path, settings: TrainCodecSettings
) -> train_codec.CodecCheckpointRecord:
    """`torchrun ... -m tasks.train.codec_worker --config <out>/run.yaml`, as `run_torchrun`."""
    out = Path(out)
    if not storage.exists(manifest):  # refused before out is claimed
        raise CodecflowError(f"segment manifest not found: {manifest}")
    check_log_to(settings.log_to)
    _run(_CODEC, manifest, out, settings, settings.nproc_per_node)
    return train_codec.train_codec(manifest, out, settings)  # committed: reads it back


def _run(job: _Job, data: str, out: Path, settings: BaseModel, nproc: int) -> None:
    # This process holds the run's lock for as long as torchrun runs (the kernel drops it if
    # it is killed); the ranks are told so through the environment and take none. torchrun
    # itself inherits the lock's descriptor: were this process killed, the output stays locked
    # until torchrun has stopped writing too.
    with outputs.owned_output(out, job.kind, job.command, job.committed) as lock_fd:
        _launch_torchrun(job, data, out, settings, nproc, () if lock_fd is None else (lock_fd,))


def _launch_torchrun(
    job: _Job, data: str, out: Path, settings: BaseModel, nproc: int, keep_fds: tuple[int, ...]
) -> None:
    import tempfile

    run_file = write_run_file(job, data, out, settings)
    with tempfile.TemporaryDirectory(prefix="codecflow-ranks-") as errors:
        expected = Path(errors) / "settings.json"
        expected.write_text(json.dumps(settings.model_dump(mode="json"), sort_keys=True))
        command = [
            sys.executable, "-m", "torch.distributed.run", "--standalone",
            f"--nproc_per_node={nproc}",
            "-m", job.worker, "--config", str(run_file),
            "--error-dir", errors, "--expect-settings", str(expected),
        ]  # fmt: skip
        # Each rank's share of this machine's CPUs, an override included (tasks.core.threads).
        env = {**os.environ, **worker_thread_env(nproc), job.held_env: str(out)}
        logger = logging.getLogger(f"codecflow.{job.command}")
        status = _stream_process(command, env, keep_fds, logger)
        if status != 0:
            _raise_rank_failure(job, Path(errors), status)


def write_run_file(job: _Job, data: str, out: Path, settings: BaseModel) -> Path:
    """`<out>/run.yaml`: the trainer's config of the fields the user set, as they gave them.

    A full dump would add the default model shape beside a `preset`, and would validate no
    more; every field goes to the ranks apart (`--expect-settings`), for them to check that
    this file reads back as the same settings.
    """
    config = {
        **settings.model_dump(mode="json", exclude_unset=True),
        job.data_key: str(data),
        "out": str(out),
    }
    run_file = out / "run.yaml"
    run_file.write_text(yaml.safe_dump(config, sort_keys=True))
    return run_file


def _raise_rank_failure(job: _Job, errors: Path, status: int) -> None:
    """The first failing rank's one-line reason as a CodecflowError; else torchrun's status."""
    reasons = sorted(errors.glob("rank-*.txt"), key=lambda p: int(p.stem[5:]))
    if reasons:
        rank = reasons[0].stem[5:]
        reason = reasons[0].read_text().strip()
        raise CodecflowError(f"{job.command} rank {rank} failed: {reason}")
    raise RuntimeError(f"torchrun exited with status {status}; see the log above")


def _stream_process(
    command: list[str], env: dict[str, str], keep_fds: tuple[int, ...], logger: logging.Logger
) -> int:
    """Run `command`, its output lines into the run's log; stop it if this process is stopped."""
    import subprocess

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


# --- the rank side -----------------------------------------------------------------------------


C = TypeVar("C", bound=BaseModel)


def read_run_config(path: Path, model: type[C]) -> C:
    """The `model` config in `path`; a CodecflowError of one line when it is not one."""
    try:
        return model.model_validate(yaml.safe_load(path.read_text()))
    except yaml.YAMLError as err:
        raise CodecflowError(f"{path} is not valid YAML: {' '.join(str(err).split())}") from None
    except ValidationError as err:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or '<root>'}: {e['msg']}" for e in err.errors()
        )
        raise CodecflowError(f"invalid {model.__name__} in {path}: {problems}") from None


def check_settings(settings: BaseModel, expected: Path, config: Path) -> None:
    """Refuse settings that differ from the launcher's (`expected`: every field, as JSON).

    run.yaml holds only the fields set; should a way of building settings leave a value out of
    `model_fields_set`, the ranks would train with its default: refused here, naming the fields.
    """
    want = json.loads(expected.read_text())
    got = settings.model_dump(mode="json")
    differ = sorted(k for k in want.keys() | got.keys() if want.get(k) != got.get(k))
    if differ:
        fields = ", ".join(f"{k}: {got.get(k)!r} instead of {want.get(k)!r}" for k in differ)
        raise CodecflowError(
            f"{config} reads back as other settings than the launcher's ({fields}): the "
            "settings it was written from did not mark those values as set"
        )


def rank_main(
    argv: Sequence[str] | None,
    prog: str,
    description: str,
    model: type[BaseModel],
    train: Callable[[Any, Any], Any],
) -> int:
    """A torchrun worker's `main`: `train(config, settings)` on this rank, its record's `path`
    printed by rank 0 (`checkpoint: <path>`); bad input one line and exit status 2."""
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("--config", required=True, help=f"YAML file holding a {model.__name__}")
    parser.add_argument(
        "--error-dir",
        help="folder where a rank that fails writes its one-line reason (rank-<R>.txt), for "
        "the launcher to report instead of torchrun's traceback",
    )
    parser.add_argument(
        "--expect-settings",
        help="JSON file of every training setting the launcher resolved: a rank whose --config "
        "reads back as other settings refuses to train",
    )
    args = parser.parse_args(argv)
    rank = int(os.environ.get("RANK", "0"))
    _log_to_stdout()
    try:
        apply_thread_policy()  # OMP_NUM_THREADS from the launcher, or torchrun's 1
        cfg: Any = read_run_config(Path(args.config), model)
        settings = cfg.settings()
        if args.expect_settings:
            check_settings(settings, Path(args.expect_settings), Path(args.config))
        record = train(cfg, settings)
    except Exception as exc:
        error = user_error(exc)
        if error is None:
            raise  # a bug: torchrun's error file and traceback are what a developer needs
        _report(args.error_dir, rank, " ".join(str(error).split()))
        return 2
    if rank == 0:
        print(f"checkpoint: {record.path}", flush=True)
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()
    return 0


def _log_to_stdout() -> None:
    """The rank's `codecflow.*` INFO lines (rank 0's training progress) on stdout, which the
    launcher streams into the run's log: a bare process would drop them (no handler)."""
    logger = logging.getLogger("codecflow")
    if not logger.handlers:
        handler = logging.StreamHandler(sys.stdout)
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)


def _report(error_dir: str | None, rank: int, reason: str) -> None:
    """Print the rank's one-line reason and leave it in `error_dir` for the launcher."""
    print(f"error: rank {rank}: {reason}", file=sys.stderr, flush=True)
    if error_dir:
        target = Path(error_dir) / f"rank-{rank}.txt"
        tmp = target.with_name(f".{target.name}.tmp")
        tmp.write_text(reason + "\n")
        os.replace(tmp, target)
