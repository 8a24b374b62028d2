"""`--launcher slurm` on the command line: the flags, the job they describe, submitting it
(`train-lm`, `train-codec`), and printing its script (`plan`); the script itself is
`tasks.train.slurm`'s."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from codecflow.schemas.configs import TrainLMConfig
from codecflow.tasks.core.errors import CodecflowError

__all__ = ["TRAINERS", "plan_slurm", "slurm_arguments", "submit_slurm"]

#: The subcommands that can be launched on Slurm (`tasks.train.slurm`): name -> its worker.
TRAINERS = {
    "train-lm": ("codecflow.tasks.train.lm_worker", "dataset"),
    "train-codec": ("codecflow.tasks.train.codec_worker", "manifest"),
}


def slurm_arguments(parser: argparse.ArgumentParser, nodes: bool) -> None:
    group = parser.add_argument_group("Slurm (--launcher slurm)")
    group.add_argument("--launcher", choices=["local", "slurm"], default="local",
                       help="slurm: write an sbatch script running torchrun on each node, and "
                       "submit it (plan: print it)")  # fmt: skip
    if nodes:
        group.add_argument("--nodes", type=int, default=1, help="Slurm nodes")
    group.add_argument("--gpus-per-node", type=int, default=0,
                       help="GPUs (ranks) per node; 0: nproc_per_node CPU ranks")  # fmt: skip
    group.add_argument("--partition", help="Slurm partition")
    group.add_argument("--account", help="Slurm account")
    group.add_argument("--time", help="time limit, HH:MM:SS")
    group.add_argument("--cpus-per-task", type=int, help="CPUs per node's torchrun task")
    group.add_argument("--mem", help="memory per node, e.g. 64G")


def slurm_job(args: argparse.Namespace, nproc_per_node: int) -> Any:
    from codecflow.tasks.train.slurm import SlurmJob

    return SlurmJob(
        nodes=args.nodes, gpus_per_node=args.gpus_per_node, nproc_per_node=nproc_per_node,
        partition=args.partition, account=args.account, time=args.time,
        cpus_per_task=args.cpus_per_task, mem=args.mem,
    )  # fmt: skip


def submit_slurm(name: str, config: Any, args: argparse.Namespace) -> list[str]:
    """Write the run's config and sbatch script, submit it: the lines to print."""
    from codecflow.tasks.train.slurm import submit, write_slurm_job

    worker, data_key = TRAINERS[name]
    settings = config.settings()
    job = slurm_job(args, settings.nproc_per_node)
    data = (data_key, str(getattr(config, data_key)))
    script = write_slurm_job(name, worker, data, Path(config.out), settings, job)
    return [f"script: {script}", f"slurm job: {submit(script)}"]


def plan_slurm(config: Any, args: argparse.Namespace) -> int:
    """`plan --launcher slurm`: the sbatch script train-lm would submit, not submitted."""
    from codecflow.tasks.train.slurm import sbatch_script

    if not isinstance(config, TrainLMConfig):
        print("error: plan --launcher slurm takes a train-lm config", file=sys.stderr)
        return 2
    try:
        job = slurm_job(args, config.settings().nproc_per_node)
    except CodecflowError as exc:
        print(f"error: {' '.join(str(exc).split())}", file=sys.stderr, flush=True)
        return 2
    out = Path(config.out).absolute()
    worker = TRAINERS["train-lm"][0]
    print(sbatch_script("train-lm", worker, out / "run.yaml", out, job), end="", flush=True)
    return 0
