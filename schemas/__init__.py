"""codecflow schemas: pydantic configs (flow parameters) and Arrow schemas (records)."""

from codecflow.schemas.configs import (
    AcquireConfig,
    AcquireSettings,
    EvaluateConfig,
    EvaluateSettings,
    PipelineConfig,
    TokenizeConfig,
    TokenizeSettings,
    TrainLMConfig,
    TrainLMSettings,
)
from codecflow.schemas.tables import SEGMENT_MANIFEST_SCHEMA, SPLITS, TOKEN_SHARD_SCHEMA

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
