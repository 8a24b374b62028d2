"""The thread policy reaches the Dask workers of a local cluster: each gets its share of the
CPUs. Dask's nanny alone gives every worker OMP_NUM_THREADS=1 (`distributed.nanny.pre-spawn-
environ`), which leaves all but one core idle when there are fewer workers than cores."""

from __future__ import annotations

import pytest
from prefect import flow, task

from codecflow.flows._common import task_runner_for
from codecflow.tasks.core.threads import usable_cpus


@task
def _worker_threads() -> tuple[int, str]:
    import os

    import torch

    return torch.get_num_threads(), os.environ.get("OMP_NUM_THREADS", "")


def test_local_dask_workers_get_a_share_of_the_cpus(
    prefect_api_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.delenv("CODECFLOW_THREADS", raising=False)
    monkeypatch.delenv("MKL_NUM_THREADS", raising=False)
    monkeypatch.setenv("PREFECT_API_URL", prefect_api_url)  # the workers report here too

    @flow(task_runner=task_runner_for(1, None))
    def threads_on_a_worker() -> tuple[int, str]:
        return _worker_threads.submit().result()

    # One worker on this machine: all the CPUs (two on the CI machine, where Dask gives one).
    assert threads_on_a_worker() == (usable_cpus(), str(usable_cpus()))
