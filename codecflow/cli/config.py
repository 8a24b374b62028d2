"""A config from YAML plus `--set key.path=value`, validated, with one-line errors.

`--config` takes a file, or the name of a config that ships with codecflow (`demo`,
`post-mimi-8`, `tiny/post-mimi-8`: the repository's configs/, inside the package). A packaged
config's relative `data/...` paths are the package's own files (the embedded corpus and the
post's prompt), so `codecflow pipeline --config demo` runs from any folder.

A field that does not exist is named with the closest valid one:
`unknown field 'tokenize.tokeniser'; did you mean 'tokenizer'?`.
"""

from __future__ import annotations

import difflib
import types
import typing
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from codecflow.schemas.resources import PACKAGE_ROOT, packaged_path

__all__ = [
    "CliError",
    "apply_override",
    "config_path",
    "load_config",
    "packaged_configs",
    "read_config_file",
]

#: The configs that ship with the package (the repository's configs/).
CONFIGS = PACKAGE_ROOT / "configs"


class CliError(Exception):
    """A bad command line or config file: printed as one line."""


def _unwrap_optional(annotation: Any) -> Any:
    """`X | None` -> `X`; anything else unchanged (a nested section may be optional)."""
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if typing.get_origin(annotation) in (typing.Union, types.UnionType) and len(args) == 1:
        return args[0]
    return annotation


def _annotation_at(model: type[BaseModel] | None, keys: Sequence[str]) -> Any:
    """The type annotation of the field at `keys` in `model`, or None when unknown."""
    annotation: Any = None
    for key in keys:
        if model is None or key not in model.model_fields:
            return None
        annotation = model.model_fields[key].annotation
        section = _unwrap_optional(annotation)
        model = section if isinstance(section, type) and issubclass(section, BaseModel) else None
    return annotation


def _is_text(annotation: Any) -> bool:
    """True for `str`, `str | None` and string `Literal`s: fields whose value stays as typed."""
    if annotation is str:
        return True
    args = typing.get_args(annotation)
    if typing.get_origin(annotation) is typing.Literal:
        return all(isinstance(a, str) for a in args)
    # `str | None` only: `list[str]` has the args (str,) too, but its value is YAML (a list).
    union = typing.get_origin(annotation) in (typing.Union, types.UnionType)
    return union and all(a is str or a is type(None) for a in args)


def _yaml_problem(err: yaml.YAMLError) -> str:
    """A YAML error in one line: what and where, without PyYAML's multi-line excerpt."""
    mark = getattr(err, "problem_mark", None)
    problem = getattr(err, "problem", None) or str(err).splitlines()[0]
    where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
    return f"{where}{problem}".replace("\n", " ")


def apply_override(
    config: dict[str, Any], assignment: str, model: type[BaseModel] | None = None
) -> None:
    """Apply `key.path=value` to a nested dict.

    The value is parsed as YAML (`1e-3`, `true`, `null`), except for text fields of `model`,
    which keep the characters as typed (`Note: this` stays a sentence, an md5 of all digits a
    string); `null` still clears them.
    """
    key, sep, raw = assignment.partition("=")
    if not sep or not key:
        raise CliError(f"--set {assignment!r}: expected key.path=value")
    *parents, leaf = key.split(".")
    node = config
    for part in parents:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise CliError(f"--set {assignment!r}: {part!r} is not a section")
        node = child
    if _is_text(_annotation_at(model, key.split("."))):
        node[leaf] = None if raw in ("null", "~") else raw
        return
    try:
        node[leaf] = yaml.safe_load(raw) if raw else ""
    except yaml.YAMLError as err:
        raise CliError(
            f"--set {key}: value {raw!r} is not valid YAML ({_yaml_problem(err)})"
        ) from None


def packaged_configs() -> list[str]:
    """The names `--config` accepts besides a file: `demo`, `post-mimi-8`, `tiny/post-mimi-8`..."""
    return sorted(str(p.relative_to(CONFIGS).with_suffix("")) for p in CONFIGS.rglob("*.yaml"))


def config_path(path: str) -> Path:
    """The file `--config path` names: the file itself, else a config shipped with codecflow
    (`demo`, `demo.yaml`, `configs/demo.yaml` from another folder); CliError naming the
    shipped ones when neither exists."""
    file = Path(path)
    if file.exists():
        return file
    name = path.removeprefix("configs/").removesuffix(".yaml")
    if name in packaged_configs():
        return CONFIGS / f"{name}.yaml"
    names = ", ".join(n for n in packaged_configs() if "/" not in n)
    raise CliError(f"config file not found: {file} (the shipped configs are: {names})")


def _with_packaged_data(data: Any) -> Any:
    """A shipped config's relative `data/...` paths, as the package's own files."""
    if isinstance(data, dict):
        return {key: _with_packaged_data(value) for key, value in data.items()}
    return packaged_path(data) if isinstance(data, str) and data.startswith("data/") else data


def read_config_file(path: str) -> dict[str, Any]:
    """The mapping in a YAML config file; one-line errors for a missing, binary, non-UTF-8 or
    invalid file, and for tags that would build Python objects (`!!python/...`: refused by
    the safe loader, never run)."""
    file = config_path(path)
    if not file.is_file():
        raise CliError(f"config file {file} is not a file")
    try:
        text = file.read_bytes().decode("utf-8")
    except OSError as err:
        raise CliError(f"config file {file} cannot be read: {err.strerror}") from None
    except UnicodeDecodeError:
        raise CliError(f"config file {file} is not UTF-8 text (a binary file?)") from None
    if "\x00" in text:
        raise CliError(f"config file {file} is not text: it holds NUL bytes")
    try:
        loaded = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise CliError(f"config file {file} is not valid YAML: {_yaml_problem(err)}") from None
    if loaded is not None and not isinstance(loaded, dict):
        raise CliError(f"config file {file} must hold a mapping, not {type(loaded).__name__}")
    if file.absolute().is_relative_to(CONFIGS.absolute()):
        return _with_packaged_data(loaded or {})
    return loaded or {}


def _model_at(model: type[BaseModel] | None, keys: Sequence[str | int]) -> type[BaseModel] | None:
    """The pydantic model of the section at `keys` (None when it is no model)."""
    for key in keys:
        annotation = _annotation_at(model, [str(key)])
        section = _unwrap_optional(annotation)
        model = section if isinstance(section, type) and issubclass(section, BaseModel) else None
    return model


def _problem(model: type[BaseModel], error: Any) -> str:
    """One validation error in a few words; an unknown field with the closest valid name."""
    loc = [str(p) for p in error["loc"]]
    where = ".".join(loc) or "<root>"
    if error["type"] == "extra_forbidden":
        section = _model_at(model, loc[:-1])
        names = list(section.model_fields) if section is not None else []
        close = difflib.get_close_matches(loc[-1], names, n=1, cutoff=0.6)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        return f"unknown field {where!r}{hint}"
    got = error.get("input")
    return f"{where}: {error['msg']}" + ("" if isinstance(got, dict) else f" (got {got!r})")


def load_config(model: type[BaseModel], path: str | None, overrides: Sequence[str]) -> BaseModel:
    """Read the YAML file (if any), apply the overrides, validate against `model`."""
    data: dict[str, Any] = read_config_file(path) if path is not None else {}
    for assignment in overrides:
        apply_override(data, assignment, model)
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(_problem(model, e) for e in exc.errors())
        where = f" in {path}" if path else ""
        raise CliError(f"invalid {model.__name__}{where}: {problems}") from None
