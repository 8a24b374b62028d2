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
traceback. The rank's side of that is `tasks.train.torchrun.rank_main`, shared with the codec.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

from codecflow.schemas.configs import TrainLMConfig, TrainLMSettings
from codecflow.tasks.core.storage import location
from codecflow.tasks.train import torchrun
from codecflow.tasks.train.lm import CheckpointRecord, train_lm

__all__ = ["check_settings", "main", "read_run_config"]

check_settings = torchrun.check_settings


def read_run_config(path: Path) -> TrainLMConfig:
    """The TrainLMConfig in `path`; a CodecflowError of one line when it is not one."""
    return torchrun.read_run_config(path, TrainLMConfig)


def _train(cfg: TrainLMConfig, settings: TrainLMSettings) -> CheckpointRecord:
    return train_lm(location(cfg.dataset), Path(cfg.out), settings)


def main(argv: Sequence[str] | None = None) -> int:
    description = __doc__.split("\n")[0]
    return torchrun.rank_main(
        argv, "codecflow.tasks.train.lm_worker", description, TrainLMConfig, _train
    )


if __name__ == "__main__":
    sys.exit(main())
