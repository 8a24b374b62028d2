"""The codec trainer as a program, for torchrun: one process per GPU (or CPU rank).

    torchrun --nproc_per_node=8 -m tasks.train.codec_worker --config run.yaml

`run.yaml` is a TrainCodecConfig (manifest, out and the training settings). `codecflow
train-codec` with `nproc_per_node > 1` writes `<out>/run.yaml` and launches this
(`tasks.train.torchrun.run_codec_torchrun`). Every rank trains on its own crops (DDP: NCCL on
GPUs, gloo on the CPU; the codebooks synchronised, see `tasks.train.codec`); rank 0 writes the
checkpoints and prints `checkpoint: <path>`. Bad input is one line, `error: rank R: <reason>`,
and exit status 2, as for the LM's worker (`tasks.train.torchrun.rank_main`).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

from codecflow.schemas.configs import TrainCodecConfig, TrainCodecSettings
from codecflow.tasks.train import torchrun
from codecflow.tasks.train.codec import CodecCheckpointRecord, train_codec

__all__ = ["main"]


def _train(cfg: TrainCodecConfig, settings: TrainCodecSettings) -> CodecCheckpointRecord:
    return train_codec(cfg.manifest, Path(cfg.out), settings)


def main(argv: Sequence[str] | None = None) -> int:
    description = __doc__.split("\n")[0]
    return torchrun.rank_main(
        argv, "codecflow.tasks.train.codec_worker", description, TrainCodecConfig, _train
    )


if __name__ == "__main__":
    sys.exit(main())
