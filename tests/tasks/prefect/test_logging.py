"""The plain code's `codecflow.*` loggers reach the Prefect run's log (pyproject.toml's
`[tool.prefect.logging] extra_loggers`), so tasks/ below codecflow.tasks.prefect never imports Prefect and
its warnings (a high reject fraction, torchrun's output) still show in the UI."""

from __future__ import annotations

import logging
import time

from prefect import flow, task
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

import codecflow.tasks.prefect  # noqa: F401  (sets the `codecflow` loggers to INFO, as the wrappers do)


@task
def _plain_code_warns() -> None:
    logging.getLogger("codecflow.tokenize").warning("1 of 20 segments were rejected")
    logging.getLogger("codecflow.train-lm").info("rank 0: step 10 loss 3.2")


@flow
def _logging_flow() -> str:
    _plain_code_warns()
    from prefect.runtime import flow_run

    return str(flow_run.id)


def _messages(flow_run_id: str) -> list[str]:
    async def read() -> list[str]:
        async with get_client() as client:
            logs = await client.read_logs(
                log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id]))
            )
            return [log.message for log in logs]

    import asyncio

    return asyncio.run(read())


def test_codecflow_loggers_reach_the_run_log(prefect_api_url: str) -> None:
    flow_run_id = _logging_flow()
    from prefect.logging.handlers import APILogWorker

    APILogWorker.drain_all()
    deadline = time.monotonic() + 30
    while True:
        messages = _messages(flow_run_id)
        if "rank 0: step 10 loss 3.2" in messages or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert "1 of 20 segments were rejected" in messages
    assert "rank 0: step 10 loss 3.2" in messages  # INFO too: the level is set for `codecflow`


def test_codecflow_loggers_outside_a_run_stay_plain(caplog) -> None:
    with caplog.at_level(logging.WARNING, logger="codecflow.tokenize"):
        logging.getLogger("codecflow.tokenize").warning("outside any run")
    assert [r.getMessage() for r in caplog.records] == ["outside any run"]
