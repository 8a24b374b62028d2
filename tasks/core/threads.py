"""One thread policy for every codecflow process: how many intra-op threads torch may use.

Why: torch's default intra-op pool takes every core it sees, and its OpenMP threads spin while
they wait. On a machine shared with other work that oversubscribes the cores: measured on a
2-core machine (issue 17), generating 1 s of mu-law audio took 31 s alone and 906 s beside other
CPU work; two evaluations started together took 7.4x their time alone where a fair share is 2x.

The policy, in order:

1. `CODECFLOW_THREADS=N` (the override, documented in docs/reference/cli.md) wins;
2. else `OMP_NUM_THREADS=N` (or `MKL_NUM_THREADS`) when the environment sets it: torch's own
   convention, and how a launcher hands its children their share (`worker_thread_env`);
   torchrun sets it to 1 for its ranks when the launcher did not;
3. else the CPUs this process may use (its affinity mask, capped by a cgroup CPU quota, which
   `os.cpu_count()` and torch both ignore) divided among the concurrent workers it knows about:
   the torchrun ranks on this node (`LOCAL_WORLD_SIZE`), at least one thread each. The
   launchers of torchrun and of a local Dask cluster compute each child's share here and hand
   it over in the environment.

`decode_threads` narrows that to one thread around single-token decoding of a small model, where
the per-token kernels are too small for a pool to pay for its wake-ups.
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import logging
import math
import os
import sys
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from importlib.machinery import ModuleSpec
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Literal

from codecflow.tasks.core.errors import CodecflowError

if TYPE_CHECKING:
    import torch

__all__ = [
    "OVERRIDE_ENV",
    "SMALL_DECODE_PARAMETERS",
    "ThreadPolicy",
    "apply_thread_policy",
    "cgroup_cpu_limit",
    "decode_threads",
    "thread_policy",
    "usable_cpus",
    "worker_thread_env",
]

log = logging.getLogger("codecflow.threads")

#: The override: a positive number of intra-op threads for every codecflow process.
OVERRIDE_ENV = "CODECFLOW_THREADS"

#: Models with fewer parameters decode one token at a time on one thread (`decode_threads`).
#: Measured on a 2-core machine (`decode_threads`): under 20 M parameters one thread decodes
#: faster than two; at 26 M they are even.
SMALL_DECODE_PARAMETERS = 20_000_000


Source = Literal["CODECFLOW_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "cpus"]


@dataclass(frozen=True)
class ThreadPolicy:
    """The intra-op threads of one process, and where the number came from."""

    threads: int
    cpus: int
    workers: int
    source: Source

    def reason(self) -> str:
        """Where the number came from, e.g. "2 CPUs / 1 worker" or "CODECFLOW_THREADS=3"."""
        if self.source == "cpus":
            plural = "s" if self.workers > 1 else ""
            return f"{self.cpus} CPUs / {self.workers} worker{plural}"
        return f"{self.source}={self.threads}"


def cgroup_cpu_limit(root: Path = Path("/sys/fs/cgroup")) -> float | None:
    """The CPU quota of this process's cgroup in CPUs (cgroup v2 `cpu.max`, or v1's CFS quota
    over its period), or None when there is none."""
    try:
        quota, period = (root / "cpu.max").read_text().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        pass
    try:
        quota_us = int((root / "cpu" / "cpu.cfs_quota_us").read_text())
        period_us = int((root / "cpu" / "cpu.cfs_period_us").read_text())
    except (OSError, ValueError):
        return None
    return None if quota_us <= 0 or period_us <= 0 else quota_us / period_us


def usable_cpus(affinity: int | None = None, quota: float | None = None) -> int:
    """The CPUs this process may use: its affinity mask, capped by the cgroup quota (rounded
    up: a quota of 1.5 CPUs still runs two threads part of the time)."""
    if affinity is None:
        affinity = len(os.sched_getaffinity(0))
    if quota is None:
        quota = cgroup_cpu_limit()
    if quota is not None:
        affinity = min(affinity, max(1, math.ceil(quota)))
    return max(1, affinity)


def _positive(name: str, value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        number = 0
    if number < 1:
        raise CodecflowError(f"{name} must be a positive whole number of threads, not {value!r}")
    return number


def thread_policy(
    cpus: int, workers: int = 1, env: Mapping[str, str] | None = None
) -> ThreadPolicy:
    """The threads of one of `workers` processes sharing `cpus` CPUs, `env` overriding."""
    env = os.environ if env is None else env
    names: tuple[Source, ...] = ("CODECFLOW_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")
    for name in names:
        if env.get(name, "").strip():
            return ThreadPolicy(_positive(name, env[name].strip()), cpus, workers, name)
    workers = max(1, workers)
    return ThreadPolicy(max(1, cpus // workers), cpus, workers, "cpus")


def _local_workers(env: Mapping[str, str]) -> int:
    """The processes of this job on this machine: torchrun's ranks per node, else one."""
    try:
        return max(1, int(env.get("LOCAL_WORLD_SIZE", "1")))
    except ValueError:
        return 1


def worker_thread_env(workers: int) -> dict[str, str]:
    """The environment of `workers` child processes sharing this machine (torchrun ranks, Dask
    workers): each one's threads by the policy, an override included, in the two variables
    torch reads when it is imported.

    Both, because Dask's nanny sets OMP_NUM_THREADS and MKL_NUM_THREADS to 1 for its workers
    (`distributed.nanny.pre-spawn-environ`) and torch takes MKL_NUM_THREADS=1 over
    OMP_NUM_THREADS=2 (measured: one thread).
    """
    threads = str(thread_policy(usable_cpus(), workers).threads)
    return {"OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads}


def apply_thread_policy(workers: int | None = None) -> ThreadPolicy:
    """Set torch's intra-op threads for this process by the policy; return it.

    Without importing torch: when it is not imported yet, the threads are set the moment it is
    (`_TorchThreads`), so that a run that never needs torch (mu-law tokenization, planning)
    does not pay its import, 0.8 s of every command on the 2-core VM. Not through
    OMP_NUM_THREADS: torch caps that at the machine's cores, an override above them included.
    """
    env = os.environ
    policy = thread_policy(usable_cpus(), workers or _local_workers(env), env)
    torch = sys.modules.get("torch")
    if torch is None:
        _TorchThreads.pending = policy.threads
        if not any(isinstance(finder, _TorchThreads) for finder in sys.meta_path):
            sys.meta_path.insert(0, _TorchThreads())
        return policy
    if torch.get_num_threads() != policy.threads:
        torch.set_num_threads(policy.threads)
        log.debug("%d torch threads (%s)", policy.threads, policy.reason())
    return policy


class _TorchThreads(importlib.abc.MetaPathFinder):
    """An import hook: once `import torch` has run, its intra-op threads are set to `pending`.

    It finds torch with the other finders (it leaves `sys.meta_path` first) and wraps that
    spec's own loader, so torch is imported exactly as without it.
    """

    pending = 0

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> ModuleSpec | None:
        if fullname != "torch":
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec("torch")
        if spec is None or spec.loader is None:
            return spec
        execute = spec.loader.exec_module

        def exec_module(module: ModuleType) -> None:
            execute(module)
            if self.pending and module.get_num_threads() != self.pending:
                module.set_num_threads(self.pending)

        spec.loader.exec_module = exec_module  # type: ignore[method-assign]
        return spec


@contextmanager
def decode_threads(n_parameters: int, device: torch.device | None = None) -> Iterator[int]:
    """One intra-op thread inside the block when a small model (`SMALL_DECODE_PARAMETERS`)
    decodes on the CPU and no override is set; yields the threads in use, restores the count.

    Measured on this project's 2-core machine, ms per token with one thread and with two
    (KV-cache sampling, batch 1): 0.9 M parameters 0.53 and 8.98, 4.9 M 1.93 and 2.87, 25.9 M
    8.9 and 8.8, 153 M 43.2 and 40.8. A pool pays for its wake-ups only on large models.
    """
    import torch

    before = torch.get_num_threads()
    on_cpu = device is None or device.type == "cpu"
    small = n_parameters < SMALL_DECODE_PARAMETERS and on_cpu
    threads = 1 if small and not os.environ.get(OVERRIDE_ENV, "").strip() else before
    torch.set_num_threads(threads)
    try:
        yield threads
    finally:
        torch.set_num_threads(before)
