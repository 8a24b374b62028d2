"""The loss curves of the training behind an evaluated checkpoint, drawn into its report.

The training log (`train_log.jsonl`, one line per step: `loss`, `loss_per_level`, and at each
resumable checkpoint `val_loss` / `val_loss_per_level`, `tasks.train.lm`) gives the train curve
and the validation points; the evaluation's own held-out loss at the checkpoint's step is the
last validation point (the same windows as training's, so the same number).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from codecflow.tasks.core.plots import figure, plot_smoothed
from codecflow.tasks.data.checkpoints import read_log

__all__ = ["LOSS_PNG", "LOSS_PER_LEVEL_PNG", "curve_names", "training_log", "write_loss_curves"]

LOSS_PNG = "loss.png"

LOSS_PER_LEVEL_PNG = "loss_per_level.png"

_YLABEL = "cross-entropy (nats/token)"


def training_log(checkpoint: Path, step: int) -> list[dict[str, Any]]:
    """The log lines up to `step` of the run that wrote `checkpoint`: the final checkpoint keeps
    its own copy, a mid-training `checkpoints/step-N` reads the run's live log."""
    checkpoint = Path(checkpoint)
    own = checkpoint / "train_log.jsonl"
    return read_log(own if own.is_file() else checkpoint.parent.parent / "train_log.jsonl", step)


def _val_points(
    log: Sequence[Mapping[str, Any]], step: int, validation: Mapping[str, Any]
) -> list[tuple[int, float, list[float]]]:
    """(step, total, per level) of every validation in the log, then the evaluation's own."""
    points = [
        (int(r["step"]), float(r["val_loss"]), list(r["val_loss_per_level"]))
        for r in log
        if "val_loss" in r and int(r["step"]) < step
    ]
    points.append((step, float(validation["val_loss"]), list(validation["val_loss_per_level"])))
    return points


def curve_names(log: Sequence[Mapping[str, Any]], num_levels: int) -> dict[str, str]:
    """The pictures `write_loss_curves` draws for `log`, by kind: none without a log, the
    per-level one for K > 1 levels when every line has its per-level losses."""
    if not log:
        return {}
    per_level = num_levels > 1 and all("loss_per_level" in r for r in log)
    return {"total": LOSS_PNG, **({"per_level": LOSS_PER_LEVEL_PNG} if per_level else {})}


def write_loss_curves(
    log: Sequence[Mapping[str, Any]],
    step: int,
    validation: Mapping[str, Any],
    folder: Path,
    num_levels: int,
) -> dict[str, str]:
    """Draw `curve_names(log, num_levels)` into `folder`: train and validation loss against
    steps, and the same per level; returns their names by kind."""
    names = curve_names(log, num_levels)
    if not names:
        return names
    steps = [int(r["step"]) for r in log]
    points = _val_points(log, step, validation)
    with figure(folder / LOSS_PNG, size=(7, 3.5)) as ax:
        plot_smoothed(ax, steps, [r["loss"] for r in log], label="train (smoothed)")
        ax.plot([p[0] for p in points], [p[1] for p in points], "o-", label="validation")
        ax.set_xlabel("step")
        ax.set_ylabel(_YLABEL)
        ax.legend()
    if "per_level" in names:
        _plot_per_level(log, steps, points, folder / LOSS_PER_LEVEL_PNG, num_levels)
    return names


def _plot_per_level(
    log: Sequence[Mapping[str, Any]],
    steps: list[int],
    points: list[tuple[int, float, list[float]]],
    path: Path,
    num_levels: int,
) -> None:
    with figure(path, size=(7, 4)) as ax:
        for k in range(num_levels):
            train = [r["loss_per_level"][k] for r in log]
            line = plot_smoothed(ax, steps, train, label=f"level {k}")
            val = [p[2][k] for p in points]
            ax.plot([p[0] for p in points], val, "o--", color=line.get_color())
        ax.set_xlabel("step (lines: train, smoothed over the faint raw; dashes: validation)")
        ax.set_ylabel(_YLABEL)
        ax.legend(ncol=2, fontsize="small")
