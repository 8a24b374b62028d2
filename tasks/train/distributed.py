"""The ranks of one distributed (DDP) training job: who am I, how many are we, a barrier, who
holds the run's output, and the codebook agreement of the codec's replicas."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from codecflow.tasks.core import outputs

__all__ = [
    "DistributedCodebookSync",
    "Ranks",
    "barrier",
    "holding",
    "init_distributed",
    "write_rank_fingerprint",
]


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


class DistributedCodebookSync:
    """`models.rvq.CodebookSync` over the default process group: sums by all-reduce, decisions
    broadcast from rank 0. Injected into the quantizer by the trainer, so that models/ never
    depends on torch.distributed (nor on a process group being up when it is used alone)."""

    def sum_(self, tensor: torch.Tensor) -> None:
        import torch.distributed as dist

        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)

    def broadcast_(self, tensor: torch.Tensor) -> None:
        import torch.distributed as dist

        dist.broadcast(tensor, src=0)


def holding(
    out: Path, kind: str, command: str, committed: Sequence[str], held_env: str
) -> contextlib.AbstractContextManager[Any]:
    """The lock and ownership of `out`, taken by the process that launched the run: a plain
    call, or the task that starts torchrun (which tells its ranks through `held_env`). A
    torchrun started by hand has no launcher of ours: its rank 0 takes them."""
    held = os.environ.get(held_env)
    if held and Path(held).resolve() == Path(out).resolve():
        return contextlib.nullcontext()
    if int(os.environ.get("RANK", "0")) != 0:
        return contextlib.nullcontext()
    return outputs.owned_output(out, kind, command, tuple(committed))


def _digest(tensors: Sequence[tuple[str, torch.Tensor]]) -> str:
    digest = hashlib.sha256()
    for name, tensor in sorted(tensors, key=lambda item: item[0]):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def write_rank_fingerprint(folder: Path, ranks: Ranks, model: torch.nn.Module) -> None:
    """Each rank's sha256 of its state (`folder/rank-<r>.json`): `sha256` of the whole
    state_dict, and apart that of its parameters and of its buffers (the codec's codebooks and
    their statistics). DDP and the codebook sync keep them equal; the multi-process tests check
    it, bit for bit."""
    record = {
        "sha256": _digest(list(model.state_dict().items())),
        "parameters_sha256": _digest(list(model.named_parameters())),
        "buffers_sha256": _digest(list(model.named_buffers())),
    }
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"rank-{ranks.rank}.json").write_text(json.dumps(record))
