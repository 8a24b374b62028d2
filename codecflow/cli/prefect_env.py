"""The Prefect settings codecflow's runs need, applied by the CLI when the user has not set them.

Prefect reads `[tool.prefect]` from the pyproject.toml of the current folder only, so the
checkout's settings did not follow the installed CLI into another folder: there Prefect used
`~/.prefect` and its 20 s start-up limit, and a run died before its flow started. The CLI sets
them in its own environment instead, before Prefect is imported (Prefect reads the environment
when it loads its settings), each only where the variable is not set already:

- `PREFECT_HOME`: `$CODECFLOW_HOME/prefect`, `CODECFLOW_HOME` defaulting to
  `$XDG_DATA_HOME/codecflow` (`~/.local/share/codecflow`): the database of the CLI's own
  ephemeral server and the task results that make runs resume from cache;
- `PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS=120`: the ephemeral server took 15-31 s to
  start on a 2-core machine (../shared/docs/prefect-3.9-notes.md), over the default 20 s;
- `PREFECT_SERVER_ANALYTICS_ENABLED=false`: no telemetry calls from machines without internet;
- `PREFECT_LOGGING_EXTRA_LOGGERS=codecflow` and
  `PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW=ignore`: the plain code's `codecflow.*` loggers go to
  the flow run's log, and are plain loggers outside a run.

A user's own `PREFECT_API_URL` (a real server) is left alone: runs then go there.
"""

from __future__ import annotations

import os
from collections.abc import MutableMapping
from pathlib import Path

__all__ = ["PREFECT_DEFAULTS", "apply_prefect_defaults", "codecflow_home"]

#: Settings applied when unset (PREFECT_HOME is added by `apply_prefect_defaults`).
PREFECT_DEFAULTS: dict[str, str] = {
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "PREFECT_LOGGING_EXTRA_LOGGERS": "codecflow",
    "PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW": "ignore",
}


def codecflow_home(env: MutableMapping[str, str] = os.environ) -> Path:
    """codecflow's user folder: `$CODECFLOW_HOME`, else `$XDG_DATA_HOME/codecflow`, else
    `~/.local/share/codecflow` (the XDG base directory default)."""
    if env.get("CODECFLOW_HOME"):
        return Path(env["CODECFLOW_HOME"]).expanduser()
    data_home = env.get("XDG_DATA_HOME") or str(Path("~/.local/share").expanduser())
    return Path(data_home).expanduser() / "codecflow"


def apply_prefect_defaults(env: MutableMapping[str, str] = os.environ) -> dict[str, str]:
    """Set each default the user has not set in `env`; returns what was set."""
    wanted = {"PREFECT_HOME": str(codecflow_home(env) / "prefect"), **PREFECT_DEFAULTS}
    applied = {name: value for name, value in wanted.items() if not env.get(name)}
    env.update(applied)
    # Prefect creates its home without parents, and fails on a fresh machine without them.
    Path(env["PREFECT_HOME"]).expanduser().mkdir(parents=True, exist_ok=True)
    return applied
