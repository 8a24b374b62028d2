"""Cache keys for Prefect tasks: the task's source, its parameters, and the content of its inputs.

A task whose key is unchanged is a cache hit (`Cached(type=COMPLETED)` in the log), across
processes, because the results are persisted under PREFECT_HOME. Records passed between tasks
carry content hashes (the tar's md5, the dataset's fingerprint, the checkpoint's sha256), so a
parameter that is a record keys on content already; `content_key(...)` adds the sha256 of named
path parameters that point at files the task reads.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib
import importlib.util
import inspect
import json
import pkgutil
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

from pydantic import BaseModel

from codecflow.tasks.core import storage
from codecflow.tasks.core.storage import fingerprint

__all__ = [
    "content_key",
    "stable_json",
]


def _plain(value: Any) -> Any:
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, Path):
        return str(value.resolve())
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def stable_json(value: Any) -> str:
    """Canonical JSON of configs, records, paths and plain values."""
    return json.dumps(_plain(value), sort_keys=True, default=str)


def _resolve_input(parameters: dict[str, Any], spec: str) -> str:
    head, _, sub_path = spec.partition("/")
    name, *attributes = head.split(".")
    value = parameters[name]
    for attribute in attributes:
        value = getattr(value, attribute)
    return storage.join(str(value), sub_path) if sub_path else str(value)


def _content_digest(url: str) -> bytes:
    # A missing input keys as missing: the task then runs and fails with its own clear message
    # instead of the cache-key function failing obscurely.
    if not storage.exists(url):
        return b"<missing>"
    if storage.is_remote(url):
        return storage.sha256(url).encode()
    return fingerprint(Path(url)).encode()


def _task_source(fn: Any) -> bytes:
    """The source of a task's function. On a Dask worker the task arrives pickled by value, its
    code named `<dynamic-code>`, and `inspect` finds no source (every cache key failed there,
    "result will not be persisted"): the function is then looked up by name in its module,
    which the worker imports from the same package."""
    try:
        return inspect.getsource(fn).encode()
    except (OSError, TypeError):
        defined = getattr(importlib.import_module(fn.__module__), fn.__name__)
        return inspect.getsource(getattr(defined, "fn", defined)).encode()


def _source(module: ModuleType | str) -> bytes:
    """A module's source, or every module's of a package (`tasks.train`: the trainers and the
    scaffolding they share), in name order. A module given by name is read without being
    imported (`tasks.loaders` imports torch: a tokenize flow keys on it without paying that)."""
    if isinstance(module, str):
        spec = importlib.util.find_spec(module)
        assert spec is not None and spec.origin is not None, f"no module named {module}"
        assert spec.submodule_search_locations is None, f"give the package {module} as a module"
        return Path(spec.origin).read_bytes()
    if not hasattr(module, "__path__"):
        return inspect.getsource(module).encode()
    names = sorted(m.name for m in pkgutil.walk_packages(module.__path__, module.__name__ + "."))
    return b"".join(inspect.getsource(importlib.import_module(n)).encode() for n in names)


def content_key(
    *path_params: str, code: tuple[ModuleType | str, ...] = ()
) -> Callable[[Any, dict[str, Any]], str]:
    """A Prefect `cache_key_fn` over the task's source, the source of the modules in `code` (the
    plain functions it wraps, or whole packages, or a module's name: editing them invalidates the
    cache), all
    parameters, and the content of the files named by `path_params`.

    A path spec is a parameter name, optionally followed by attribute names and a sub-path:
    `"manifest"`, `"settings.prompt"`, `"dataset/dataset.json"` (a dataset is keyed by its
    `dataset.json`, which records every shard's sha256, rather than by rehashing the shards).
    """
    code_digest = hashlib.sha256(b"".join(_source(m) for m in code)).hexdigest()

    def key(context: Any, parameters: dict[str, Any]) -> str:
        digest = hashlib.sha256()
        task = context.task
        digest.update(task.name.encode())
        digest.update(_task_source(task.fn))
        digest.update(code_digest.encode())
        digest.update(stable_json(parameters).encode())
        for spec in path_params:
            digest.update(_content_digest(_resolve_input(parameters, spec)))
        return digest.hexdigest()

    return key
