"""Resumable training checkpoints, shared by the codec and the LM trainers.

    <out>/checkpoints/step-000100/   model.safetensors, training_state.pt, COMPLETE (written last)
    <out>/train_log.jsonl            one JSON line per step

A checkpoint folder is written under a temporary name and renamed whole; `COMPLETE` inside it
is the commit marker. The training state (optimizer, step, RNG and sampler states) is saved
with `torch.save` of tensors and plain values only, so it loads with `weights_only=True`.

A train-lm run's final checkpoint is `<out>/checkpoint` (`metrics.json` written last).
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from codecflow.tasks.core.errors import CodecflowError
from codecflow.tasks.core.storage import atomic_dir

__all__ = [
    "final_checkpoint",
    "is_checkpoint_committed",
    "latest_checkpoint",
    "load_training_state",
    "load_weights",
    "newest_checkpoint",
    "read_checkpoint_json",
    "read_log",
    "save_resumable",
    "save_torch",
    "save_weights",
    "weight_shapes",
]

_STEP_DIR = re.compile(r"^step-(\d{6,})$")


def latest_checkpoint(out: Path) -> Path | None:
    """The newest complete resumable checkpoint in `out/checkpoints`, if any."""
    folder = Path(out) / "checkpoints"
    if not folder.is_dir():
        return None
    complete = [
        p for p in folder.iterdir() if _STEP_DIR.match(p.name) and (p / "COMPLETE").is_file()
    ]
    return max(complete, key=lambda p: int(p.name.split("-")[1]), default=None)


def save_resumable(
    out: Path,
    step: int,
    weights: dict[str, torch.Tensor],
    state: dict[str, Any],
    files: Mapping[str, str] | None = None,
) -> None:
    """Write `out/checkpoints/step-<step>` whole, then keep only the two newest: enough to
    survive a kill during the next save. `files` are extra text files (name -> content), such
    as the model's `config.json` that lets an evaluation load the checkpoint mid-training."""
    target = Path(out) / "checkpoints" / f"step-{step:06d}"
    with atomic_dir(target) as tmp:
        save_weights(weights, tmp / "model.safetensors")
        for name, text in (files or {}).items():
            (tmp / name).write_text(text)
        save_torch({"step": step, **state}, tmp / "training_state.pt")
        (tmp / "COMPLETE").write_text(f"{step}\n")  # last: the folder is whole
    steps = sorted(
        (p for p in target.parent.iterdir() if _STEP_DIR.match(p.name)),
        key=lambda p: int(p.name.split("-")[1]),  # by number: step-1000000 after step-999999
    )
    for old in steps[:-2]:
        shutil.rmtree(old, ignore_errors=True)


def save_weights(weights: dict[str, torch.Tensor], path: Path) -> None:
    """safetensors' `save_file`, its I/O failures as an OSError naming `path` (safetensors
    raises its own `SafetensorError: ... (os error 28)`, which no caller can tell apart)."""
    try:
        save_file(weights, str(path))
    except SafetensorError as exc:
        code = re.search(r"\(os error (\d+)\)", str(exc))
        if code is None:
            raise
        number = int(code.group(1))
        raise OSError(number, os.strerror(number), str(path)) from exc


def save_torch(obj: Any, path: Path) -> None:
    """`torch.save` into a file that Python opened: a full disk, a read-only folder or a quota
    is then an OSError naming `path` (`error: no space left on device: <path>`), where torch
    given the path raised `RuntimeError: [enforce fail at inline_container.cc:664] ...`."""
    try:
        with open(path, "wb") as f:
            torch.save(obj, f)
    except (OSError, RuntimeError) as exc:
        # torch's zip writer ends a failed write with its own RuntimeError, the OSError that
        # caused it in the chain (a real full disk; /dev/full fails at the first write).
        cause = _os_error_in(exc)
        if cause is None or cause.filename is not None:
            raise
        raise OSError(cause.errno, cause.strerror, str(path)) from exc


def _os_error_in(exc: BaseException) -> OSError | None:
    """The first OSError in `exc`'s chain (itself, its cause or context), or None."""
    item: BaseException | None = exc
    while item is not None and not isinstance(item, OSError):
        item = item.__cause__ or item.__context__
    return item


def read_log(path: Path, upto: int) -> list[dict[str, Any]]:
    """The training log's lines up to step `upto` (those past a resumed checkpoint are cut)."""
    if upto == 0 or not path.is_file():
        return []
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [r for r in rows if r["step"] <= upto]


def load_weights(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a `model.safetensors` file; a one-line error for anything else.

    safetensors never unpickles, so a crafted file cannot run code; what it can be is not a
    safetensors file at all (a pickle, a truncated copy, a folder), which is the user's to fix.
    """
    return _read_safetensors(Path(path), load_file)


def weight_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    """The shape of every tensor of a `model.safetensors` file, read from its header only (no
    tensor is loaded); a one-line error for a file that is no safetensors."""

    def shapes(name: str) -> dict[str, tuple[int, ...]]:
        with safe_open(name, "pt") as f:
            return {key: tuple(f.get_slice(key).get_shape()) for key in f.keys()}  # noqa: SIM118

    return _read_safetensors(Path(path), shapes)


T = TypeVar("T")


def _read_safetensors(path: Path, read: Callable[[str], T]) -> T:
    """`read(path)` of a `model.safetensors` file, its failures one line naming the file."""
    if not path.is_file():
        raise CodecflowError(f"checkpoint weights not found: {path}")
    try:
        return read(str(path))
    except (SafetensorError, OSError, ValueError) as err:
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise CodecflowError(
            f"unreadable checkpoint {path}: not a safetensors file ({reason})"
        ) from None


def load_training_state(path: Path) -> dict[str, Any]:
    """A resumable checkpoint's `training_state.pt`, loaded with `weights_only=True`.

    Tensors and plain values only: a file that needs more (a crafted pickle, another tool's
    checkpoint) is refused in one line. torch's own message would suggest `weights_only=False`,
    i.e. running the file's code: codecflow never does.
    """
    path = Path(path)
    try:
        state = torch.load(path, weights_only=True)
    except FileNotFoundError:
        raise CodecflowError(f"training state not found: {path}") from None
    except Exception as err:  # noqa: BLE001 - a damaged pickle raises anything (IndexError...)
        # torch's weights_only refusal of a class names the global; bytes that are no pickle
        # at all ("Unsupported operand") are refused by the same unpickler, and are damage.
        kind = "holds objects other than tensors" if "global" in str(err) else "is damaged"
        raise CodecflowError(
            f"unreadable training state {path}: it {kind}; delete the checkpoint folder "
            f"{path.parent} to resume from the one before it"
        ) from None
    if not isinstance(state, dict):
        raise CodecflowError(f"unreadable training state {path}: not a mapping")
    return state


def read_checkpoint_json(path: Path) -> dict[str, Any]:
    """A checkpoint's `config.json` or `metrics.json`, as a mapping; one line if it is not."""
    path = Path(path)
    try:
        data = json.loads(path.read_bytes())
    except FileNotFoundError:
        raise CodecflowError(f"checkpoint file not found: {path}") from None
    except (OSError, ValueError) as err:
        raise CodecflowError(f"unreadable checkpoint file {path}: {err}") from None
    if not isinstance(data, dict):
        raise CodecflowError(f"unreadable checkpoint file {path}: not a JSON object")
    return data


def is_checkpoint_committed(out: Path) -> bool:
    """True when `out/checkpoint` holds a complete checkpoint."""
    return (Path(out) / "checkpoint" / "metrics.json").is_file()


def final_checkpoint(run: Path) -> Path | None:
    """The final checkpoint of a train-lm run folder, or None while the run still trains (or
    has not started). What a scheduled evaluation waits for by default."""
    run = Path(run)
    if not run.is_dir():
        raise CodecflowError(f"train-lm run {run} is not a folder")
    return run / "checkpoint" if is_checkpoint_committed(run) else None


def newest_checkpoint(run: Path) -> Path:
    """The newest checkpoint of a train-lm run folder: the final one when training has ended,
    else the newest resumable one. What a scheduled evaluation of a running training reads."""
    run = Path(run)
    if is_checkpoint_committed(run):
        return run / "checkpoint"
    latest = latest_checkpoint(run)
    if latest is None or not (latest / "config.json").is_file():
        raise CodecflowError(f"train-lm run {run} has no checkpoint yet")
    return latest
