"""Experiment tracking: a run's scalars and audio also in TensorBoard and Weights & Biases.

`log_to` (train-lm, train-codec and evaluate) names the trackers, none by default. The files the
run writes stay what they are (`train_log.jsonl`, `summary.json`); a tracker receives the same
numbers as they are produced:

    check_log_to(settings.log_to)       # before any work: a missing package is one line
    with Tracker(out, "train-lm lm", config, settings.log_to, resumed_step=s) as tracker:
        tracker.scalars(step, {"loss": 2.3, "loss_per_level": [2.1, 2.5]})  # loss_per_level/0
        tracker.audio(step, "continuation_0", wav, 16000)

TensorBoard: event files under `OUT/tensorboard/` (`torch.utils.tensorboard`, which needs the
tensorboard package). W&B: the run's folder under `OUT/wandb/`, offline unless the user has
logged in (`WANDB_API_KEY`, or a `wandb login` entry in ~/.netrc) or sets `WANDB_MODE`; an
offline run is uploaded later with `wandb sync OUT/wandb/offline-run-*`.

Cheap to import (the CLI's preflight checks `log_to` with it): tensorboard, torch and wandb are
imported by the tracker that uses them, when it is opened.
"""

from __future__ import annotations

import importlib.util
import json
import netrc
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Self, get_args

import numpy as np

from codecflow.schemas.configs import TrackerName
from codecflow.tasks.core.errors import CodecflowError

__all__ = [
    "TRACKERS",
    "Tracker",
    "check_log_to",
    "flat_scalars",
    "wandb_mode",
]

#: The trackers `log_to` may name (the configs' `TrackerName`).
TRACKERS: tuple[str, ...] = get_args(TrackerName)

#: The W&B project runs go to when WANDB_PROJECT does not name one.
_PROJECT = "codecflow"


def check_log_to(log_to: Sequence[str]) -> None:
    """A CodecflowError of one line for a tracker of `log_to` that is unknown or whose package
    is not installed; called before a run starts, so that it fails before its first step."""
    for name in log_to:
        if name not in TRACKERS:
            raise CodecflowError(f"log_to: unknown tracker {name!r}; choose among {TRACKERS}")
        if importlib.util.find_spec(name) is None:  # the package is the tracker's name
            raise CodecflowError(
                f"log_to: {name} needs the {name} package (pip install 'codecflow[tracking]')"
            )


def _logged_in() -> bool:
    """Whether wandb would find an API key: the environment, or the ~/.netrc entry that
    `wandb login` writes for its server (WANDB_BASE_URL, api.wandb.ai by default)."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    base = os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")
    host = base.split("://", 1)[-1].split("/", 1)[0].split(":", 1)[0]
    path = Path(os.environ.get("NETRC", Path.home() / ".netrc"))
    try:
        return netrc.netrc(str(path)).authenticators(host) is not None
    except (OSError, netrc.NetrcParseError):
        return False  # no file, or one wandb could not read either


def wandb_mode() -> str | None:
    """The mode a W&B run is opened in: None where WANDB_MODE is set (wandb reads it itself),
    else online for a logged-in user and offline otherwise (no prompt, no network)."""
    if os.environ.get("WANDB_MODE"):
        return None
    return "online" if _logged_in() else "offline"


def flat_scalars(values: Mapping[str, Any], prefix: str = "") -> dict[str, float]:
    """The numbers of `values` under one name each: a list's items as `name/0`, `name/1`, a
    mapping's as `name/key`; text and None are left out (a skipped metric is None)."""
    flat: dict[str, float] = {}
    for key, value in values.items():
        _flatten(f"{prefix}{key}", value, flat)
    return flat


def _flatten(name: str, value: Any, flat: dict[str, float]) -> None:
    if isinstance(value, Mapping):
        for key, item in value.items():
            _flatten(f"{name}/{key}", item, flat)
    elif isinstance(value, list | tuple | np.ndarray):
        for i, item in enumerate(value):
            _flatten(f"{name}/{i}", item, flat)
    elif isinstance(value, bool | int | float | np.number):
        flat[name] = float(value)


class Tracker:
    """The trackers of `log_to` for one run, written into its folder; with an empty `log_to`
    (the default, and every DDP rank but 0) each call does nothing.

    `resumed_step`: the step a resumed training starts after. TensorBoard then hides the
    events past it that the stopped process had written (its `purge_step`), so that the curve
    continues with no repeated steps, as `train_log.jsonl` does.
    """

    def __init__(
        self,
        folder: Path,
        name: str,
        config: Mapping[str, Any],
        log_to: Sequence[str],
        *,
        resumed_step: int = 0,
    ) -> None:
        check_log_to(log_to)
        self._writer: Any = None
        self._run: Any = None
        self._wandb: Any = None
        if not log_to:
            return
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        config_json = json.dumps(dict(config), indent=2, default=str)
        if "tensorboard" in log_to:
            from torch.utils.tensorboard import SummaryWriter

            purge = resumed_step + 1 if resumed_step else None
            self._writer = SummaryWriter(str(folder / "tensorboard"), purge_step=purge)
            # Markdown: indented by 4 spaces, the JSON shows as code in the Text tab.
            self._writer.add_text("config", "    " + config_json.replace("\n", "\n    "))
        if "wandb" in log_to:
            import wandb

            self._wandb = wandb
            self._run = wandb.init(
                dir=str(folder),
                project=os.environ.get("WANDB_PROJECT", _PROJECT),
                name=name,
                config=json.loads(config_json),
                mode=wandb_mode(),  # type: ignore[arg-type]
                # codecflow's own log already reaches the run's log (Prefect, torchrun's
                # streaming): wandb's capture of stdout would wrap theirs.
                settings=wandb.Settings(console="off"),
            )

    @property
    def active(self) -> bool:
        """Whether any tracker is open (the caller may skip computing what only they read)."""
        return self._writer is not None or self._run is not None

    def scalars(self, step: int, values: Mapping[str, Any]) -> None:
        """The numbers of `values` at `step` (`flat_scalars` names them)."""
        if not self.active:
            return
        flat = flat_scalars(values)
        if self._writer is not None:
            for name, value in flat.items():
                self._writer.add_scalar(name, value, step)
        if self._run is not None:
            self._run.log(flat, step=step)

    def audio(self, step: int, name: str, wav: np.ndarray, rate: int) -> None:
        """A mono recording `wav` [T] (floats in [-1, 1]) at `rate` Hz, under `name`."""
        if not self.active:
            return
        samples = np.ascontiguousarray(wav, dtype=np.float32).reshape(-1)  # [T]
        if self._writer is not None:
            import torch

            self._writer.add_audio(name, torch.from_numpy(samples)[None], step, sample_rate=rate)
        if self._run is not None:
            self._run.log({name: self._wandb.Audio(samples, sample_rate=rate)}, step=step)

    def close(self, failed: bool = False) -> None:
        """Flush and close every tracker (a W&B run is marked failed when `failed`)."""
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        if self._run is not None:
            self._run.finish(exit_code=1 if failed else 0)
            self._run = None

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close(failed=error is not None)
