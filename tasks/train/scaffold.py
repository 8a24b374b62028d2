"""What the codec and the LM trainers share around their training steps, written once.

    identity = RunIdentity("LM run", "checkpoint", "dataset", fingerprint, settings_json)
    metrics = identity.committed(out)        # a finished run's metrics, or None; another's refused
    identity.check_resumable(out, recorded)  # an unfinished run of other settings refused, by field
    resumed = resume(out, model, optimizer)  # the newest complete checkpoint: step, state, log
    for step, lr in schedule(optimizer, resumed.step, settings): ...   # the learning rate set
    save_checkpoint(out, step, weights, optimizer, state)               # resumable, every N steps
    write_final(out, weights, config, metrics, resumed.log, plot)       # out/checkpoint, whole

The on-disk names are the trainers' own (see `tasks.data.checkpoints`): `training_state.pt`
holds `step`, `optimizer` and `torch_rng` plus the trainer's own state; the final folder holds
`model.safetensors`, `config.json`, `train_log.jsonl`, `loss.png` and `metrics.json` (last).
"""

from __future__ import annotations

import dataclasses
import json
import typing
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TypeVar

import torch

from codecflow.tasks.core.errors import CodecflowError
from codecflow.tasks.core.plots import figure, plot_smoothed
from codecflow.tasks.core.runtime import Schedule, learning_rate_at
from codecflow.tasks.core.storage import atomic_dir, fingerprint
from codecflow.tasks.data.checkpoints import (
    is_checkpoint_committed,
    latest_checkpoint,
    load_training_state,
    load_weights,
    read_log,
    save_resumable,
    save_weights,
)

__all__ = [
    "Checkpointed",
    "Resumed",
    "RunIdentity",
    "RunLog",
    "checkpoint_due",
    "json_text",
    "plot_log",
    "read_identity",
    "read_record",
    "resume",
    "save_checkpoint",
    "schedule",
    "write_final",
]


def json_text(obj: Any, sort_keys: bool = False) -> str:
    """The JSON files' one format: indented, one trailing newline."""
    return json.dumps(obj, indent=2, sort_keys=sort_keys) + "\n"


@dataclass(frozen=True)
class RunIdentity:
    """What a run is: the fingerprint of its data and the settings that shape what it learns.

    Recorded in `metrics.json` (`identity`) and where the trainer keeps it for a resume, as
    `{data_key: data, "settings": settings}`. A run whose recorded identity differs is refused,
    every differing field named: resuming it would mix two runs' steps in one result.
    """

    kind: str  # what an unfinished run is called: "LM run"
    product: str  # what a finished one holds: "checkpoint", "codec"
    data_key: str  # "dataset", "manifest"
    data: str  # the data's fingerprint
    settings: Mapping[str, Any]
    #: Settings renamed since runs were recorded (old name -> new): read under the new name.
    renamed: Mapping[str, str] = field(default_factory=dict)
    #: Settings added since runs were recorded (name -> the value those runs had).
    added: Mapping[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {self.data_key: self.data, "settings": dict(self.settings)}

    def text(self) -> str:
        """The identity file's content (key-sorted, like `storage.write_json`)."""
        return json_text(self.to_json(), sort_keys=True)

    def recorded_as_now(self, recorded: Any) -> Any:
        """A recorded identity with its renamed settings under their current names."""
        if not isinstance(recorded, dict) or not isinstance(recorded.get("settings"), dict):
            return recorded
        settings = dict(recorded["settings"])
        for old, new in self.renamed.items():
            if old in settings and new not in settings:
                settings[new] = settings.pop(old)
        for name, value in self.added.items():
            settings.setdefault(name, value)
        return {**recorded, "settings": settings}

    def differences(self, recorded: Mapping[str, Any]) -> list[str]:
        """'learning_rate 0.001 in the checkpoint, 0.003 asked for' per field that differs."""
        recorded = self.recorded_as_now(recorded)
        old = {self.data_key: recorded.get(self.data_key), **recorded.get("settings", {})}
        new = {self.data_key: self.data, **self.settings}
        lines = []
        for key in sorted(set(old) | set(new)):
            if old.get(key) != new.get(key):
                a, b = (_shown(v) for v in (old.get(key), new.get(key)))
                lines.append(f"{key} {a} in the checkpoint, {b} asked for")
        return lines

    def committed(self, out: Path) -> dict[str, Any] | None:
        """The metrics of `out/checkpoint` when it is this run's, None when there is none; a
        final checkpoint of another run is refused (returning it would answer another question)."""
        final = Path(out) / "checkpoint"
        if not is_checkpoint_committed(out):
            return None
        metrics: dict[str, Any] = json.loads((final / "metrics.json").read_text())
        if self.recorded_as_now(metrics.get("identity")) == self.to_json():
            return metrics
        raise CodecflowError(
            f"{final} holds a {self.product} of another {self.data_key} or settings ("
            + "; ".join(self.differences(metrics.get("identity") or {}))
            + "); choose another out"
        )

    def check_resumable(
        self, out: Path, recorded: Mapping[str, Any] | None, where: str | None = None
    ) -> None:
        """Refuse to resume an unfinished run that recorded another identity (it would load its
        weights and record the new settings as if they had been used from step 0). `where`
        names the checkpoint the identity was read from, when it is one checkpoint's."""
        if recorded is None or self.recorded_as_now(recorded) == self.to_json():
            return
        at = f" ({where})" if where else ""
        raise CodecflowError(
            f"{out} holds an unfinished {self.kind}{at} of another {self.data_key} or settings: "
            + "; ".join(self.differences(recorded))
            + "; resume with the same ones or choose another out"
        )


def _shown(value: Any) -> str:
    # A sha256 fingerprint: its first 12 hex digits tell two datasets apart on one line.
    if isinstance(value, str) and len(value) == 64:
        return f"fingerprint {value[:12]}"
    return str(value)


def read_identity(path: Path) -> dict[str, Any] | None:
    """A recorded identity file, or None when there is none."""
    path = Path(path)
    if not path.is_file():
        return None
    identity: dict[str, Any] = json.loads(path.read_text())
    return identity


@dataclass
class RunLog:
    """The per-step records of a run, in memory and in `out/train_log.jsonl` (one JSON line per
    step, appended as each step ends: a kill loses at most the step in progress)."""

    path: Path
    rows: list[dict[str, Any]] = field(default_factory=list)
    write: bool = True  # False on the ranks that do not write (DDP: rank 0 writes)

    def append(self, record: dict[str, Any]) -> None:
        if not self.write:
            return
        self.rows.append(record)
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")

    def text(self) -> str:
        return "".join(json.dumps(r) + "\n" for r in self.rows)


@dataclass(frozen=True)
class Resumed:
    """Where a run starts: step 0, or the newest complete checkpoint's step and state."""

    step: int
    state: dict[str, Any]  # training_state.pt, for the trainer's own entries (its samplers)
    log: RunLog
    checkpoint: Path | None


def resume(
    out: Path,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    *,
    tied: Collection[str] = (),
    write_log: bool = True,
) -> Resumed:
    """Load the newest complete checkpoint of `out` into `model`, `optimizer` and torch's RNG.

    `tied` names weights not stored (tied to another: the GPT's `wte.weight`). The log keeps
    the lines up to the resumed step (those past it are cut, in the file too, when
    `write_log`), so the loss curve continues with no gap and no repeat.
    """
    out = Path(out)
    step, state = 0, {}
    checkpoint = latest_checkpoint(out)
    if checkpoint is not None:
        missing, unexpected = model.load_state_dict(
            load_weights(checkpoint / "model.safetensors"), strict=False
        )
        if set(missing) - set(tied) or unexpected:
            raise RuntimeError(f"{checkpoint}: missing {missing}, unexpected {unexpected}")
        state = load_training_state(checkpoint / "training_state.pt")
        optimizer.load_state_dict(state["optimizer"])
        torch.set_rng_state(state["torch_rng"])
        step = int(state["step"])
    log = RunLog(out / "train_log.jsonl", write=write_log)
    if write_log:
        log.rows = read_log(log.path, upto=step)
        out.mkdir(parents=True, exist_ok=True)
        log.path.write_text(log.text())
    return Resumed(step, state, log, checkpoint)


def schedule(
    optimizer: torch.optim.Optimizer, start: int, settings: Schedule
) -> Iterator[tuple[int, float]]:
    """Each step from `start` to the last, with the optimizer's learning rate set for it."""
    for step in range(start, settings.steps):
        lr = learning_rate_at(step, settings)
        for group in optimizer.param_groups:
            group["lr"] = lr
        yield step, lr


class Checkpointed(Schedule, Protocol):
    """The fields of a training config that say when it checkpoints."""

    @property
    def checkpoint_every(self) -> int: ...


def checkpoint_due(done: int, settings: Checkpointed) -> bool:
    """A resumable checkpoint after `done` steps? Not after the last: the final one follows."""
    return done % settings.checkpoint_every == 0 and done < settings.steps


def save_checkpoint(
    out: Path,
    step: int,
    weights: dict[str, torch.Tensor],
    optimizer: torch.optim.Optimizer,
    state: Mapping[str, Any] | None = None,
    files: Mapping[str, str] | None = None,
) -> None:
    """`out/checkpoints/step-<step>`: the weights, the optimizer, torch's RNG and the trainer's
    own `state` (tensors and plain values: loaded with weights_only=True), and text `files`."""
    full = {
        **(state or {}),
        "optimizer": optimizer.state_dict(),
        "torch_rng": torch.get_rng_state(),
    }
    save_resumable(out, step, weights, full, files=files)


def write_final(
    out: Path,
    weights: dict[str, torch.Tensor],
    config: Mapping[str, Any],
    metrics: Mapping[str, Any],
    log: RunLog,
    plot: Callable[[Path], None],
) -> Path:
    """Write `out/checkpoint` whole (a temporary folder renamed), `metrics.json` last: its
    presence is what marks a run finished."""
    final = Path(out) / "checkpoint"
    with atomic_dir(final) as tmp:
        save_weights(weights, tmp / "model.safetensors")
        (tmp / "config.json").write_text(json_text(config))
        (tmp / "train_log.jsonl").write_text(log.text())
        plot(tmp / "loss.png")
        (tmp / "metrics.json").write_text(json_text(metrics))  # last
    return final


def plot_log(
    rows: Sequence[Mapping[str, Any]],
    path: Path,
    curves: Mapping[str, str],
    *,
    ylabel: str | None = None,
    log_scale: bool = False,
    reference: tuple[float, str] | None = None,
) -> None:
    """The loss curves of a run's log (`curves`: log key -> label), and a horizontal
    `reference` line (value, label) such as the validation loss at the end."""
    with figure(path) as ax:
        steps = [r["step"] for r in rows]
        for key, label in curves.items():
            plot_smoothed(ax, steps, [r[key] for r in rows], label=f"{label} (smoothed)")
        if reference is not None:
            ax.axhline(reference[0], color="tab:orange", linestyle="--", label=reference[1])
        if log_scale:
            ax.set_yscale("log")
        ax.set_xlabel("step")
        if ylabel:
            ax.set_ylabel(ylabel)
        ax.legend()


R = TypeVar("R")


def read_record(
    cls: type[R], final: Path, metrics: Mapping[str, Any], renamed: Mapping[str, str] = {}
) -> R:
    """The trainer's typed record of a final checkpoint: `path`, `fingerprint` (of its
    weights) and every other field of the dataclass `cls` from `metrics`, cast to its type.
    `renamed` maps a field to the name an older release wrote it under (read when the current
    name is missing)."""
    metrics = {**{renamed[k]: v for k, v in metrics.items() if k in renamed}, **metrics}
    hints = typing.get_type_hints(cls)
    values: dict[str, Any] = {
        f.name: hints[f.name](metrics[f.name])
        for f in dataclasses.fields(cls)  # type: ignore[arg-type]
        if f.name not in ("path", "fingerprint")
    }
    values.update(path=final, fingerprint=fingerprint(final / "model.safetensors"))
    return cls(**values)
