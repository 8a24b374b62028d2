"""Training on a Slurm cluster: an sbatch script that runs torchrun on every node with a c10d
rendezvous on the job's first node, as moshi-finetune and torchtitan are launched.

    codecflow train-lm --launcher slurm --nodes 2 --gpus-per-node 8 --set dataset=... --set out=...

writes `<out>/run.yaml` (the trainer's config, as `train-lm` writes it for torchrun) and
`<out>/slurm/train-lm.sbatch`, then submits it with `sbatch`; `codecflow plan ... --launcher
slurm` prints the same script without submitting it. Each node runs one `srun` task, torchrun,
with one rank per GPU (or `nproc_per_node` CPU ranks on nodes without GPUs); rank 0 takes the
output's lock and writes the checkpoints, as for a torchrun started by hand.
"""

from __future__ import annotations

import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from pydantic import BaseModel

from codecflow.tasks.core import outputs
from codecflow.tasks.core.errors import CodecflowError
from codecflow.tasks.train.torchrun import write_run_file

__all__ = ["SlurmJob", "sbatch_script", "submit", "write_slurm_job"]

#: The rendezvous port on the job's first node (torchrun's default master port).
RENDEZVOUS_PORT = 29500


@dataclass(frozen=True)
class SlurmJob:
    """What sbatch is asked for: nodes and GPUs, and the site's partition, account, time limit,
    CPUs and memory when given (None: the cluster's defaults)."""

    nodes: int = 1
    gpus_per_node: int = 0
    nproc_per_node: int = 1  # ranks per node without GPUs (the config's nproc_per_node)
    partition: str | None = None
    account: str | None = None
    time: str | None = None  # HH:MM:SS or D-HH:MM:SS
    cpus_per_task: int | None = None
    mem: str | None = None  # e.g. 64G

    def __post_init__(self) -> None:
        if self.nodes < 1 or self.gpus_per_node < 0 or self.nproc_per_node < 1:
            raise CodecflowError(
                f"a Slurm job needs --nodes >= 1 and --gpus-per-node >= 0, got nodes "
                f"{self.nodes}, gpus per node {self.gpus_per_node}"
            )

    @property
    def ranks_per_node(self) -> int:
        return self.gpus_per_node or self.nproc_per_node


def sbatch_script(command: str, worker: str, run_file: Path, out: Path, job: SlurmJob) -> str:
    """The sbatch script of `command` ("train-lm"): torchrun on each node, `worker` per rank."""
    q = shlex.quote
    lines = [
        "#!/bin/bash",
        f"#SBATCH --job-name=codecflow-{command}",
        f"#SBATCH --nodes={job.nodes}",
        "#SBATCH --ntasks-per-node=1",
        f"#SBATCH --output={q(str(out / 'slurm' / '%j.out'))}",
    ]
    optional = {
        "gpus-per-node": job.gpus_per_node or None,
        "cpus-per-task": job.cpus_per_task,
        "mem": job.mem,
        "partition": job.partition,
        "account": job.account,
        "time": job.time,
    }
    lines += [f"#SBATCH --{k}={q(str(v))}" for k, v in optional.items() if v is not None]
    torchrun = [
        q(sys.executable), "-m", "torch.distributed.run",
        '--nnodes="$SLURM_JOB_NUM_NODES"', f"--nproc-per-node={job.ranks_per_node}",
        "--rdzv-backend=c10d", f'--rdzv-endpoint="$head:{RENDEZVOUS_PORT}"',
        '--rdzv-id="$SLURM_JOB_ID"', "-m", worker, "--config", q(str(run_file)),
    ]  # fmt: skip
    lines += [
        "set -euo pipefail",
        "# The rendezvous: the job's first node, on every node's torchrun.",
        'head=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)',
        "srun --kill-on-bad-exit=1 " + " ".join(torchrun),
        "",
    ]
    return "\n".join(lines)


def write_slurm_job(
    command: str, worker: str, data_key_value: tuple[str, str], out: Path,
    settings: BaseModel, job: SlurmJob,
) -> Path:  # fmt: skip
    """Write `<out>/run.yaml` and `<out>/slurm/<command>.sbatch`; the script's path."""
    from codecflow.tasks.train.torchrun import CODEC_JOB, LM_JOB

    trainer = LM_JOB if command == "train-lm" else CODEC_JOB
    out = Path(out).absolute()
    # Claimed as this kind of run first (a folder of something else is refused here, at once):
    # the job's rank 0 then finds its own run folder, and takes the lock for the run.
    with outputs.owned_output(out, trainer.kind, trainer.command, trainer.committed):
        (out / "slurm").mkdir(parents=True, exist_ok=True)
        run_file = write_run_file(trainer, data_key_value[1], out, settings)
        script = out / "slurm" / f"{command}.sbatch"
        script.write_text(sbatch_script(command, worker, run_file, out, job))
    return script


def submit(script: Path) -> str:
    """`sbatch --parsable script`: the job id; a CodecflowError of one line when sbatch is
    missing or refuses the job."""
    sbatch = shutil.which("sbatch")
    if sbatch is None:
        raise CodecflowError("sbatch not found: run this on a Slurm login node (or use plan)")
    done = subprocess.run(
        [sbatch, "--parsable", str(script)], capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        reason = " ".join(done.stderr.split()) or f"status {done.returncode}"
        raise CodecflowError(f"sbatch refused {script}: {reason}")
    return done.stdout.strip().split(";")[0]
