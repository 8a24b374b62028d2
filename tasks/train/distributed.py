"""The ranks of one distributed (DDP) training job: who am I, how many are we, and a barrier."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import torch

__all__ = ["Ranks", "barrier", "init_distributed", "write_rank_fingerprint"]


@dataclass(frozen=True)
class Ranks:
    rank: int
    world: int
    local_rank: int

    @property
    def main(self) -> bool:
        return self.rank == 0


def init_distributed(device: torch.device) -> Ranks:
    """torchrun's environment -> a process group (NCCL on GPUs, gloo on the CPU), or one rank."""
    import os

    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return Ranks(0, 1, 0)
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return Ranks(dist.get_rank(), world, int(os.environ.get("LOCAL_RANK", "0")))


def barrier(ranks: Ranks) -> None:
    if ranks.world > 1:
        import torch.distributed as dist

        dist.barrier()


def write_rank_fingerprint(folder: Path, ranks: Ranks, model: torch.nn.Module) -> None:
    """Each rank's sha256 of its parameters (`folder/rank-<r>.json`): DDP keeps them equal,
    and the multi-process test checks it."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"rank-{ranks.rank}.json").write_text(json.dumps({"sha256": digest.hexdigest()}))
