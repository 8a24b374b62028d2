"""codecflow schemas: pydantic configs (flow parameters) and Arrow schemas (records)."""

from __future__ import annotations

import importlib
from typing import Any

__all__ = [
    "SEGMENT_MANIFEST_SCHEMA",
    "SPLITS",
    "TOKEN_SHARD_SCHEMA",
    "AcquireConfig",
    "AcquireSettings",
    "EvaluateConfig",
    "EvaluateSettings",
    "PipelineConfig",
    "TokenizeConfig",
    "TokenizeSettings",
    "TrainLMConfig",
    "TrainLMSettings",
]

# Loaded on first use (PEP 562): the CLI's `--help` reads the configs without paying for
# pyarrow, which `tables` imports.
_TABLES = {"SEGMENT_MANIFEST_SCHEMA", "SPLITS", "TOKEN_SHARD_SCHEMA"}


def __getattr__(name: str) -> Any:
    if name not in __all__:
        raise AttributeError(f"module 'codecflow.schemas' has no attribute {name!r}")
    module = "tables" if name in _TABLES else "configs"
    return getattr(importlib.import_module(f"codecflow.schemas.{module}"), name)
