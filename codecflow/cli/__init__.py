"""The `codecflow` command: one subcommand per flow, and the tools around them.

- `main`: argument parsing and dispatch (`codecflow.cli.main`);
- `config`: YAML plus `--set key.path=value` into a validated config, one-line errors;
- `preflight`: the paths, URLs and credentials of a config checked before any server starts;
- `prefect_env`: the Prefect settings codecflow needs, applied when the user has not set them;
- `session`: the run's own ephemeral Prefect server, and signals;
- `server`: `codecflow server start|stop`, a local Prefect server with every deployment;
- `costs`: what a config will cost (`codecflow plan`); `help`: `--help`'s field tables.

Nothing here imports torch or Prefect at module level: `codecflow --help` answers at once.
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    """The `codecflow` command (`python -m codecflow`): exit status 0, 2 on bad input."""
    from codecflow.cli.main import main as run

    return run(argv)
