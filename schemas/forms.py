"""How the configs show as forms in the Prefect UI: what pydantic's JSON schemas become.

Prefect renders a flow's config from its JSON schema; these helpers shape that schema (titles,
field order, optional fields) and touch nothing else: YAML configs, `--set` and `--help` read
the fields as they are. `tests/flows/test_forms.py` checks the schemas,
`tests/ops/test_forms_browser.py` the forms in a browser.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pydantic import BaseModel, ConfigDict

__all__ = ["STAGE_TITLES", "ConfigModel", "choice_titles", "inputs_first"]


def _optional_in_place(properties: dict[str, Any]) -> None:
    """Each `X | None = None` field's `anyOf: [X, null]` as X alone, without a default.

    The Prefect UI renders an `anyOf` (or a list of types) as tabs, the null one reading
    'Property is type "None"'. As X alone it renders the plain control of X, empty: an empty
    control is left out of the run's parameters, so the config's default (None) applies. The
    server still takes an explicit null (from a script or a trigger) for a number, a string or
    a list: its validation (prefect.utilities.schema_tools.validation `_fix_null_typing`) adds
    the null branch back to a property that is not required and has no default. A drop-down
    (`enum`) stays a drop-down only without null among its choices: there, a script leaves the
    field out rather than sending null. Branches titled on purpose (`choice_titles`: "no
    codec stage") stay."""
    for name, field in properties.items():
        branches = field.get("anyOf")
        if not branches or len(branches) != 2 or {"type": "null"} not in branches:
            continue
        (other,) = [b for b in branches if b != {"type": "null"}]
        if "title" in other or "type" not in other or field.get("default", 0) is not None:
            continue
        merged = {k: v for k, v in field.items() if k not in ("anyOf", "default")}
        merged.update(other)
        properties[name] = merged


#: The title of each config's JSON schema (the UI would show the class name): a flow's config
#: its stage as the CLI and prefect.yaml name it, a pipeline section's its key in the pipeline.
STAGE_TITLES: dict[str, str] = {
    "SlurmSettings": "slurm",
    "AcquireSettings": "acquire",
    "AcquireConfig": "acquire",
    "TokenizeSettings": "tokenize",
    "TokenizeConfig": "tokenize",
    "TrainCodecSettings": "train_codec",
    "TrainCodecConfig": "train-codec",
    "EvalCodecSettings": "eval_codec",
    "EvalCodecConfig": "eval-codec",
    "CompareCodecsSettings": "compare_codecs",
    "CompareCodecsConfig": "compare-codecs",
    "TrainLMSettings": "train_lm",
    "TrainLMConfig": "train-lm",
    "EvaluateSettings": "evaluate",
    "EvaluateConfig": "evaluate",
    "PipelineConfig": "pipeline",
}


class ConfigModel(BaseModel):
    """The base of every config: unknown keys refused, frozen, its form shaped for the UI."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    def __init_subclass__(cls, **kwargs: Any) -> None:
        # Every config's schema is titled by its stage (the UI would show the class name).
        super().__init_subclass__(**kwargs)
        if cls.__name__ in STAGE_TITLES:
            cls.model_config = {**cls.model_config, "title": STAGE_TITLES[cls.__name__]}

    @classmethod
    def __get_pydantic_json_schema__(cls, core_schema: Any, handler: Any) -> Any:
        json_schema = handler(core_schema)
        _optional_in_place(handler.resolve_ref_schema(json_schema).get("properties", {}))
        return json_schema


def choice_titles(*titles: str) -> Callable[[dict[str, Any]], None]:
    """A field's `json_schema_extra` naming the branches of its `anyOf`: the UI's tabs for
    `X | None` would read the class name and "None"."""

    def name(schema: dict[str, Any]) -> None:
        for branch, title in zip(schema.get("anyOf", []), titles, strict=False):
            branch["title"] = title

    return name


def inputs_first(*names: str) -> Callable[[dict[str, Any]], None]:
    """A model's `json_schema_extra` that lists `names` (a stage's inputs and outputs) first.

    Pydantic orders a subclass's fields after its base's, so a stage's own paths would come last
    in the Prefect UI's form, which follows the schema's order. Only the schema is reordered: the
    fields themselves, and so YAML configs, `--set` and `--help`, are unchanged."""

    def reorder(schema: dict[str, Any]) -> None:
        properties = schema.get("properties", {})
        first = {name: properties[name] for name in names if name in properties}
        schema["properties"] = {**first, **properties}

    return reorder
