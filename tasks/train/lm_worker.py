"""The LM trainer as a program, for torchrun: one process per GPU (or CPU rank).

    torchrun --nproc_per_node=8 -m tasks.train.lm_worker --config run.yaml
    torchrun --nnodes=2 --node_rank=0 --rdzv_backend=c10d --rdzv_endpoint=host0:29500 \
        --nproc_per_node=8 -m tasks.train.lm_worker --config run.yaml          # on each node

`run.yaml` is a TrainLMConfig (dataset, out and the training settings). Every rank trains (DDP:
NCCL on GPUs, gloo on the CPU); rank 0 writes checkpoints and prints `checkpoint: <path>`. A rank
that fails on bad input (a `CodecflowError`, a full disk) prints `error: rank R: <reason>`, writes
the reason to `--error-dir` when given, and exits 2: the launcher
(`tasks.train.distributed.run_torchrun`)
reports that line, not torchrun's traceback.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import yaml

from schemas.configs import TrainLMConfig, TrainLMSettings
from tasks.core.errors import user_error
from tasks.train.lm import train_lm

__all__ = [
    "main",
]


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
    args = parser.parse_args(argv)
    rank = int(os.environ.get("RANK", "0"))
    try:
        cfg = TrainLMConfig.model_validate(yaml.safe_load(Path(args.config).read_text()))
        settings = TrainLMSettings(**cfg.model_dump(include=set(TrainLMSettings.model_fields)))
        record = train_lm(Path(cfg.dataset), Path(cfg.out), settings)
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
