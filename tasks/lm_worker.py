"""The LM trainer as a program, for torchrun: one process per GPU (or CPU rank).

    torchrun --nproc_per_node=8 -m tasks.lm_worker --config run.yaml
    torchrun --nnodes=2 --node_rank=0 --rdzv_backend=c10d --rdzv_endpoint=host0:29500 \\
        --nproc_per_node=8 -m tasks.lm_worker --config run.yaml          # on each node

`run.yaml` is a TrainLMConfig (dataset, out and the training settings). Every rank trains (DDP:
NCCL on GPUs, gloo on the CPU); rank 0 writes checkpoints and prints `checkpoint: <path>`.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import yaml

from schemas.configs import TrainLMConfig, TrainLMSettings
from tasks.train_lm import train_lm

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tasks.lm_worker", description=__doc__.split("\n")[0])
    parser.add_argument("--config", required=True, help="YAML file holding a TrainLMConfig")
    args = parser.parse_args(argv)
    cfg = TrainLMConfig.model_validate(yaml.safe_load(Path(args.config).read_text()))
    settings = TrainLMSettings(**cfg.model_dump(include=set(TrainLMSettings.model_fields)))
    record = train_lm(Path(cfg.dataset), Path(cfg.out), settings)
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"checkpoint: {record.path}", flush=True)
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
