"""The only package of `tasks` that imports Prefect: the task wrappers, cache keys and progress
artifacts.

The plain code below logs to `codecflow.*` loggers; Prefect attaches them to the run's log
(`extra_loggers` in pyproject.toml). Prefect's root logger stops at WARNING, so the `codecflow`
logger is set to INFO here: a torchrun rank's lines and the tokenizer's throughput reach the
run's log, as Prefect's own run loggers' INFO lines do.
"""

import logging

logging.getLogger("codecflow").setLevel(logging.INFO)
