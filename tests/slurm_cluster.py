"""A real one-node Slurm cluster for the tests: `munged`, `slurmctld` and `slurmd` (Debian's
`slurm-wlm` and `munge`, which `make test` installs like chromium) started under a temporary
folder with their own key, socket, ports, state and logs, on 127.0.0.1; stopped at the end.
The commands reach it through `SLURM_CONF`."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ["slurm_cluster"]

_DAEMONS = ("munged", "slurmctld", "slurmd")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _conf(root: Path, host: str) -> str:
    memory_mb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2**20 - 1024
    lines = {
        "ClusterName": "codecflow",
        "SlurmctldHost": f"{host}(127.0.0.1)",
        "AuthType": "auth/munge",
        "AuthInfo": f"socket={root / 'munge' / 'munge.sock'}",
        "CryptoType": "crypto/munge",
        "SlurmUser": "root",
        "SlurmdUser": "root",
        "StateSaveLocation": str(root / "state"),
        "SlurmdSpoolDir": str(root / "spool"),
        "SlurmctldPidFile": str(root / "slurmctld.pid"),
        "SlurmdPidFile": str(root / "slurmd.pid"),
        "SlurmctldPort": str(_free_port()),
        "SlurmdPort": str(_free_port()),
        "ProctrackType": "proctrack/linuxproc",
        "TaskPlugin": "task/none",
        "ReturnToService": "2",
        "SchedulerType": "sched/builtin",
        "SelectType": "select/cons_tres",
        "SelectTypeParameters": "CR_Core",
        "MpiDefault": "none",
        "JobCompType": "jobcomp/none",
        "AccountingStorageType": "accounting_storage/none",
        "JobAcctGatherType": "jobacct_gather/none",
        "SlurmctldLogFile": str(root / "slurmctld.log"),
        "SlurmdLogFile": str(root / "slurmd.log"),
    }
    cpus = os.cpu_count() or 1
    return "\n".join(
        [f"{k}={v}" for k, v in lines.items()]
        + [
            f"NodeName={host} NodeAddr=127.0.0.1 CPUs={cpus} RealMemory={memory_mb} State=UNKNOWN",
            f"PartitionName=debug Nodes={host} Default=YES MaxTime=INFINITE State=UP",
            "",
        ]
    )


def _wait_idle(env: dict[str, str], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done = subprocess.run(
            ["sinfo", "-h", "-o", "%t"], env=env, capture_output=True, text=True, check=False
        )
        if done.returncode == 0 and done.stdout.strip() in ("idle", "mix"):
            return
        time.sleep(0.3)
    raise TimeoutError(f"the Slurm node did not come up: {done.stdout} {done.stderr}")


@contextmanager
def slurm_cluster(root: Path) -> Iterator[dict[str, str]]:
    """Start the daemons under `root`; yield the environment the Slurm commands need."""
    missing = [
        d for d in _DAEMONS if shutil.which(d) is None and not Path(f"/usr/sbin/{d}").exists()
    ]
    assert not missing, f"{missing} not installed: `make slurm` installs slurm-wlm and munge"
    for sub in ("munge", "state", "spool"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    (root / "munge").chmod(0o755)  # munged needs its socket's folder executable by all
    key = root / "munge" / "munge.key"
    key.write_bytes(os.urandom(1024))
    key.chmod(0o400)
    host = socket.gethostname()
    (root / "slurm.conf").write_text(_conf(root, host))
    env = {**os.environ, "SLURM_CONF": str(root / "slurm.conf")}
    started: list[subprocess.Popen[bytes]] = []
    munge = root / "munge"
    commands = [
        ["/usr/sbin/munged", "-F", "--force", f"--socket={munge / 'munge.sock'}", f"--key-file={key}",
         f"--pid-file={munge / 'munged.pid'}", f"--log-file={munge / 'munged.log'}",
         f"--seed-file={munge / 'seed'}"],
        ["/usr/sbin/slurmctld", "-D", "-f", str(root / "slurm.conf")],
        ["/usr/sbin/slurmd", "-D", "-f", str(root / "slurm.conf")],
    ]  # fmt: skip
    try:
        for i, command in enumerate(commands):
            log = (root / f"{_DAEMONS[i]}.out").open("wb")
            started.append(
                subprocess.Popen(
                    command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
                )  # fmt: skip
            )
            if i == 0:
                time.sleep(0.5)  # the socket, before Slurm authenticates through it
        _wait_idle(env)
        yield env
    finally:
        for process in reversed(started):
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
                try:
                    process.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    os.killpg(process.pid, signal.SIGKILL)
                    process.wait()
