"""The thread policy: CPUs from affinity and cgroup quota, shared among workers, the overrides,
and the entry points that apply it (the CLI, torchrun ranks, Dask workers)."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from helpers import REPO

from codecflow.tasks.core.errors import CodecflowError
from codecflow.tasks.core.threads import (
    SMALL_DECODE_PARAMETERS,
    apply_thread_policy,
    cgroup_cpu_limit,
    decode_threads,
    thread_policy,
    usable_cpus,
    worker_thread_env,
)


@pytest.fixture(autouse=True)
def restore_threads(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """No override from the environment the suite runs in; torch's count restored after."""
    monkeypatch.delenv("CODECFLOW_THREADS", raising=False)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.delenv("MKL_NUM_THREADS", raising=False)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize(
    ("affinity", "quota", "cpus"),
    [(1, None, 1), (2, None, 2), (16, None, 16), (16, 4.0, 4), (16, 1.5, 2), (2, 8.0, 2)],
)
def test_usable_cpus_is_the_affinity_capped_by_the_quota(
    affinity: int, quota: float | None, cpus: int
) -> None:
    assert usable_cpus(affinity, quota) == cpus


def test_usable_cpus_of_this_process_is_its_affinity_mask() -> None:
    quota = cgroup_cpu_limit()
    expected = len(os.sched_getaffinity(0))
    assert usable_cpus() == (expected if quota is None else min(expected, math.ceil(quota)))


def test_cgroup_quota_v2_v1_and_none(tmp_path: Path) -> None:
    v2 = tmp_path / "v2"
    v2.mkdir()
    (v2 / "cpu.max").write_text("max 100000\n")
    assert cgroup_cpu_limit(v2) is None
    (v2 / "cpu.max").write_text("250000 100000\n")
    assert cgroup_cpu_limit(v2) == 2.5
    v1 = tmp_path / "v1" / "cpu"
    v1.mkdir(parents=True)
    (v1 / "cpu.cfs_quota_us").write_text("-1\n")
    (v1 / "cpu.cfs_period_us").write_text("100000\n")
    assert cgroup_cpu_limit(v1.parent) is None
    (v1 / "cpu.cfs_quota_us").write_text("300000\n")
    assert cgroup_cpu_limit(v1.parent) == 3.0
    assert cgroup_cpu_limit(tmp_path / "none") is None


@pytest.mark.parametrize(
    ("cpus", "workers", "threads"),
    [(1, 1, 1), (1, 4, 1), (2, 1, 2), (2, 2, 1), (2, 3, 1), (16, 1, 16), (16, 3, 5), (16, 4, 4)],
)
def test_the_cpus_are_shared_among_the_workers(cpus: int, workers: int, threads: int) -> None:
    policy = thread_policy(cpus, workers, {})
    assert (policy.threads, policy.source) == (threads, "cpus")


def test_the_override_wins_then_omp_num_threads() -> None:
    both = thread_policy(16, 4, {"CODECFLOW_THREADS": "3", "OMP_NUM_THREADS": "1"})
    assert (both.threads, both.source, both.reason()) == (
        3,
        "CODECFLOW_THREADS",
        "CODECFLOW_THREADS=3",
    )
    omp = thread_policy(16, 4, {"OMP_NUM_THREADS": "2", "CODECFLOW_THREADS": " "})
    assert (omp.threads, omp.source) == (2, "OMP_NUM_THREADS")
    assert thread_policy(16, 4, {"OMP_NUM_THREADS": ""}).threads == 4  # empty: not set
    assert thread_policy(16, 4, {"MKL_NUM_THREADS": "1"}).source == "MKL_NUM_THREADS"
    assert thread_policy(2, 1, {}).reason() == "2 CPUs / 1 worker"


@pytest.mark.parametrize("value", ["0", "-2", "two", "1.5"])
def test_a_bad_override_is_one_line_naming_it(value: str) -> None:
    with pytest.raises(
        CodecflowError,
        match=f"^CODECFLOW_THREADS must be a positive whole number of threads, not '{value}'$",
    ):
        thread_policy(2, 1, {"CODECFLOW_THREADS": value})


def test_apply_sets_torch_threads_and_counts_torchrun_ranks(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    torch.set_num_threads(1)
    assert apply_thread_policy().threads == torch.get_num_threads() == usable_cpus()
    monkeypatch.setenv("LOCAL_WORLD_SIZE", str(usable_cpus() * 2))  # more ranks than CPUs
    assert apply_thread_policy().threads == torch.get_num_threads() == 1
    monkeypatch.setenv("CODECFLOW_THREADS", "3")
    assert apply_thread_policy().threads == torch.get_num_threads() == 3


def test_children_get_their_share_unless_an_override_is_set(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    share = str(max(1, usable_cpus() // 2))
    assert worker_thread_env(2) == {"OMP_NUM_THREADS": share, "MKL_NUM_THREADS": share}
    monkeypatch.setenv("CODECFLOW_THREADS", "5")
    assert worker_thread_env(2) == {"OMP_NUM_THREADS": "5", "MKL_NUM_THREADS": "5"}


def test_small_models_decode_on_one_thread(monkeypatch: pytest.MonkeyPatch) -> None:
    torch.set_num_threads(2)
    with decode_threads(SMALL_DECODE_PARAMETERS - 1) as threads:
        assert threads == torch.get_num_threads() == 1
    assert torch.get_num_threads() == 2  # restored
    with decode_threads(SMALL_DECODE_PARAMETERS) as threads:
        assert threads == torch.get_num_threads() == 2
    with decode_threads(1_000, torch.device("cuda")) as threads:
        assert threads == 2  # on a GPU the CPU threads only launch kernels
    monkeypatch.setenv("CODECFLOW_THREADS", "2")
    with decode_threads(1_000) as threads:
        assert threads == 2  # the user's number stands
    with pytest.raises(RuntimeError), decode_threads(1_000):
        raise RuntimeError("restored on errors too")
    assert torch.get_num_threads() == 2


def _cli_threads(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    overrides = {"OMP_NUM_THREADS", "MKL_NUM_THREADS", "CODECFLOW_THREADS"}
    clean = {k: v for k, v in os.environ.items() if k not in overrides}
    return subprocess.run(
        [sys.executable, "-m", "codecflow", "threads", *args],
        cwd=REPO,
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_the_cli_applies_the_policy() -> None:
    cpus = usable_cpus()
    plain = _cli_threads()
    assert plain.returncode == 0, plain.stderr
    assert plain.stdout.strip() == f"threads: {cpus} ({cpus} CPUs / 1 worker)"
    shared = _cli_threads("--workers", "2")
    assert shared.stdout.strip() == f"threads: {max(1, cpus // 2)} ({cpus} CPUs / 2 workers)"
    override = _cli_threads(CODECFLOW_THREADS="3")
    assert override.stdout.strip() == "threads: 3 (CODECFLOW_THREADS=3)"
    bad = _cli_threads(CODECFLOW_THREADS="lots")
    assert bad.returncode == 2 and bad.stdout == ""
    assert bad.stderr.strip() == (
        "error: CODECFLOW_THREADS must be a positive whole number of threads, not 'lots'"
    )


def test_the_policy_reaches_torch_imported_later_without_importing_it() -> None:
    """A command that never needs torch (mu-law tokenization) does not import it for the
    policy: the policy waits in the variables torch reads when it is imported."""
    code = (
        "import os, sys\n"
        "os.environ['CODECFLOW_THREADS'] = '1'\n"
        "from codecflow.tasks.core.threads import apply_thread_policy\n"
        "policy = apply_thread_policy()\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
        "import torch\n"
        "assert torch.get_num_threads() == policy.threads == 1, torch.get_num_threads()\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
