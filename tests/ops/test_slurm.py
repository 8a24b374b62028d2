"""Training on a real Slurm (tests/slurm_cluster.py: munged, slurmctld and slurmd on
127.0.0.1): `codecflow train-lm --launcher slurm` writes and submits an sbatch script whose
torchrun trains 2 gloo ranks to a checkpoint; `codecflow plan --launcher slurm` prints the same
script without submitting; bad input is one line."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

from helpers import REPO
from slurm_cluster import slurm_cluster


def _codecflow(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "codecflow", *args], cwd=REPO, env=env, capture_output=True,
        text=True, timeout=600, check=False,
    )  # fmt: skip


def _wait_for(job: str, env: dict[str, str], timeout: float = 600.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        queued = subprocess.run(
            ["squeue", "-h", "-j", job], env=env, capture_output=True, text=True, check=False
        )
        if not queued.stdout.strip():
            return
        time.sleep(1.0)
    raise TimeoutError(f"Slurm job {job} still queued or running")


TINY_LM = ("--set", "n_layer=2", "--set", "n_head=2", "--set", "n_embd=32",
           "--set", "block_size=64", "--set", "batch_size=4", "--set", "steps=12",
           "--set", "eval_batches=1", "--set", "nproc_per_node=2", "--set", "device=cpu")  # fmt: skip


def test_train_lm_on_slurm_trains_two_ranks(tiny_dataset: Path, tmp_path: Path) -> None:
    with slurm_cluster(tmp_path / "slurm") as env:
        out = tmp_path / "lm"
        done = _codecflow(
            env, "train-lm", "--launcher", "slurm", "--nodes", "1",
            "--set", f"dataset={tiny_dataset}", "--set", f"out={out}", *TINY_LM,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr[-3000:]
        lines = dict(line.split(": ", 1) for line in done.stdout.splitlines() if ": " in line)
        script = Path(lines["script"])
        assert (
            script == out / "slurm" / "train-lm.sbatch"
            and "torch.distributed.run" in script.read_text()
        )
        _wait_for(lines["slurm job"], env)
        log = out / "slurm" / f"{lines['slurm job']}.out"
        assert log.is_file(), sorted((out / "slurm").iterdir())
        metrics = out / "checkpoint" / "metrics.json"
        assert metrics.is_file(), log.read_text()[-3000:]
        assert json.loads(metrics.read_text())["ranks"] == 2


def test_plan_prints_the_script_without_submitting(tmp_path: Path) -> None:
    config = tmp_path / "lm.yaml"
    config.write_text(f"dataset: {tmp_path}/tokens\nout: {tmp_path}/lm\npreset: post\n")
    done = _codecflow(
        {"PATH": "/usr/bin:/bin"} | {k: v for k, v in __import__("os").environ.items()},
        "plan", "--config", str(config), "--tokenizer", "mimi_8_rvq", "--hours", "1000",
        "--launcher", "slurm", "--gpus-per-node", "8",
        "--partition", "gpu", "--time", "48:00:00",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    script = done.stdout
    assert script.startswith("#!/bin/bash\n#SBATCH --job-name=codecflow-train-lm")
    for line in ("#SBATCH --gpus-per-node=8", "#SBATCH --partition=gpu", "--nproc-per-node=8",
                 "--rdzv-backend=c10d", "#SBATCH --time=48:00:00"):  # fmt: skip
        assert line in script
    assert not (tmp_path / "lm").exists()  # nothing written, nothing submitted


def test_without_sbatch_the_launcher_is_one_line(tiny_dataset: Path, tmp_path: Path) -> None:
    import os

    env = {**os.environ, "PATH": str(Path(sys.executable).parent)}  # no /usr/bin: no sbatch
    done = _codecflow(
        env, "train-lm", "--launcher", "slurm", "--set", f"dataset={tiny_dataset}",
        "--set", f"out={tmp_path / 'lm'}", *TINY_LM,
    )  # fmt: skip
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1].startswith("error: sbatch not found")


def _files(folder: Path) -> dict[str, str]:
    import hashlib

    return {
        p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and ".codecflow-" not in p.name
    }


def test_tokenize_fans_out_over_slurm_jobs(
    tiny_manifest: Path, prefect_api_url: str, tmp_path: Path
) -> None:
    """`slurm:` settings: two Dask workers started as Slurm jobs write the shards, the bytes of
    a run without Dask."""
    common = ("--set", f"manifest={tiny_manifest}", "--set", "shard_hours=0.0011",
              "--set", "max_tasks=3", "--set", "formats=[arrow]")  # fmt: skip
    with slurm_cluster(tmp_path / "slurm") as env:
        env = {
            **env,
            "PREFECT_API_URL": prefect_api_url,
            "DASK_TEMPORARY_DIRECTORY": str(tmp_path / "dask"),
        }
        local = _codecflow(env, "tokenize", *common, "--set", f"out={tmp_path / 'local'}")
        assert local.returncode == 0, local.stderr[-3000:]
        fanned = _codecflow(
            env, "tokenize", *common, "--set", f"out={tmp_path / 'slurm-out'}",
            "--set", "slurm.jobs=2", "--set", "slurm.memory=2GB", "--set", "slurm.walltime=00:10:00",
        )  # fmt: skip
        assert fanned.returncode == 0, fanned.stderr[-3000:]
    files = _files(tmp_path / "local")
    assert sum(name.endswith(".arrow") for name in files) >= 3
    assert _files(tmp_path / "slurm-out") == files
    # Slurm ran the two worker jobs, and their logs are not left in the working folder.
    allocated = (tmp_path / "slurm" / "slurmctld.log").read_text().count("Allocate JobId=")
    assert allocated >= 2 and not list(REPO.glob("slurm-*.out"))
