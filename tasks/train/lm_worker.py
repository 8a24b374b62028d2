"""The LM trainer as a program, for torchrun: one process per GPU (or CPU rank).

    torchrun --nproc_per_node=8 -m tasks.train.lm_worker --config run.yaml
    torchrun --nnodes=2 --node_rank=0 --rdzv_backend=c10d --rdzv_endpoint=host0:29500 \
        --nproc_per_node=8 -m tasks.train.lm_worker --config run.yaml          # on each node

`run.yaml` is a TrainLMConfig (dataset, out and the training settings): the fields it sets are
the settings, as `codecflow train-lm` reads them (a `preset` with no shape fields). `train-lm`
with `nproc_per_node > 1` writes `<out>/run.yaml` that way and passes every field apart with
`--expect-settings`: a rank whose run.yaml does not read back as those settings refuses to train.
Every rank trains (DDP: NCCL on GPUs, gloo on the CPU); rank 0 writes checkpoints and prints
`checkpoint: <path>`. A rank that fails on bad input (a `CodecflowError`, an invalid run.yaml, a
full disk) prints `error: rank R: <reason>`, writes the reason to `--error-dir` when given, and
exits 2: the launcher (`tasks.train.torchrun.run_torchrun`) reports that line, not torchrun's
traceback.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import yaml
from pydantic import ValidationError

from schemas.configs import TrainLMConfig, TrainLMSettings
from tasks.core.errors import CodecflowError, user_error
from tasks.core.storage import location
from tasks.core.threads import apply_thread_policy
from tasks.train.lm import train_lm

__all__ = ["check_settings", "main", "read_run_config"]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="tasks.train.lm_worker", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--config", required=True, help="YAML file holding a TrainLMConfig")
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
        cfg = read_run_config(Path(args.config))
        settings = cfg.settings()
        if args.expect_settings:
            check_settings(settings, Path(args.expect_settings), Path(args.config))
        record = train_lm(location(cfg.dataset), Path(cfg.out), settings)
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


def read_run_config(path: Path) -> TrainLMConfig:
    """The TrainLMConfig in `path`; a CodecflowError of one line when it is not one."""
    try:
        return TrainLMConfig.model_validate(yaml.safe_load(path.read_text()))
    except yaml.YAMLError as err:
        raise CodecflowError(f"{path} is not valid YAML: {' '.join(str(err).split())}") from None
    except ValidationError as err:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or '<root>'}: {e['msg']}" for e in err.errors()
        )
        raise CodecflowError(f"invalid TrainLMConfig in {path}: {problems}") from None


def check_settings(settings: TrainLMSettings, expected: Path, config: Path) -> None:
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


if __name__ == "__main__":
    sys.exit(main())
