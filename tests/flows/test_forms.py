"""The flows' parameter forms in the Prefect UI, as their JSON schemas say (the UI renders the
schema Prefect derives from each flow's pydantic config, and the server validates a run's
parameters against it before the flow starts): stages titled by their key, every default shown,
known tokenizer names offered beside the typed forms, a stage's inputs and outputs first.
tests/ops/test_browser.py checks what the browser shows of it."""

from __future__ import annotations

import importlib
from typing import Any

import pytest
import yaml
from helpers import REPO
from prefect.utilities.callables import parameter_schema
from prefect.utilities.schema_tools.validation import ValidationError, validate
from pydantic import BaseModel

from codecflow.schemas import configs
from codecflow.schemas.forms import STAGE_TITLES
from codecflow.schemas.tokenizers import KNOWN_NAMES, TokenizerNameError, parse_tokenizer_name

#: Flow entrypoint -> the fields its form lists first.
INPUTS_FIRST = {
    "flows/acquire.py:acquire_flow": ["source", "md5", "root"],
    "flows/train_codec.py:train_codec_flow": ["manifest", "out"],
    "flows/eval_codec.py:eval_codec_flow": ["checkpoint", "manifest", "out"],
    "flows/tokenize.py:tokenize_flow": ["manifest", "out", "tokenizer"],
    "flows/train_lm.py:train_lm_flow": ["dataset", "out"],
    "flows/evaluate.py:evaluate_flow": [
        "checkpoint",
        "train_run",
        "while_training",
        "dataset",
        "out",
        "index",
    ],
    "flows/pipeline.py:pipeline_flow": [
        "out",
        "acquire",
        "train_codec",
        "tokenize",
        "train_lm",
        "evaluate",
    ],
}


def _flow(entrypoint: str) -> Any:
    path, name = entrypoint.split(":")
    return getattr(
        importlib.import_module("codecflow." + path.removesuffix(".py").replace("/", ".")), name
    )


def _schema(entrypoint: str) -> dict[str, Any]:
    """The parameter schema `prefect deploy` records for the flow (what the UI renders)."""
    schema: dict[str, Any] = parameter_schema(_flow(entrypoint)).model_dump_for_openapi()
    return schema


def _config(schema: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """The name and definition of the flow's config (its one parameter, `cfg`)."""
    name = schema["properties"]["cfg"]["$ref"].rsplit("/", 1)[-1]
    return name, schema["definitions"][name]


@pytest.mark.parametrize("entrypoint", sorted(INPUTS_FIRST))
def test_a_stage_lists_its_inputs_and_outputs_first(entrypoint: str) -> None:
    name, config = _config(_schema(entrypoint))
    model: type[BaseModel] = getattr(configs, name)
    order = list(config["properties"])
    first = INPUTS_FIRST[entrypoint]
    assert order[: len(first)] == first, order
    # Only the form is reordered: every field is there, and the model keeps its own order
    # (what YAML configs, --set and --help read).
    assert sorted(order) == sorted(model.model_fields)
    assert list(model.model_fields) != order or entrypoint.endswith("pipeline_flow")


def test_the_pipeline_sections_are_titled_by_their_key() -> None:
    _, pipeline = _config(_schema("flows/pipeline.py:pipeline_flow"))
    definitions = _schema("flows/pipeline.py:pipeline_flow")["definitions"]
    for key in ("acquire", "train_codec", "tokenize", "train_lm", "evaluate"):
        section = pipeline["properties"][key]
        ref = section.get("$ref") or section["anyOf"][0]["$ref"]
        # Pydantic leaves out a field's title equal to its model's: the model's is the label.
        assert section.get("title", definitions[ref.rsplit("/", 1)[-1]]["title"]) == key
        assert section["description"].startswith(("Stage", "Optional stage")), key
    # The tabs of the optional codec stage, instead of "TrainCodecSettings" and "None".
    branches = pipeline["properties"]["train_codec"]["anyOf"]
    assert [b["title"] for b in branches] == ["train a codec", "no codec stage"]


def _fields(definition: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The form fields of a definition that are not sections (a section is a `$ref`)."""
    return {
        name: field
        for name, field in definition["properties"].items()
        if "$ref" not in field and not any("$ref" in b for b in field.get("anyOf", []))
    }


@pytest.mark.parametrize("entrypoint", sorted(INPUTS_FIRST))
def test_every_field_shows_its_default(entrypoint: str) -> None:
    """The UI shows a JSON schema `default` only: a `default_factory` would leave a list empty
    (formats read "Select", regenerate_levels showed nothing while runs used [1])."""
    schema = _schema(entrypoint)
    for name, definition in schema["definitions"].items():
        model: type[BaseModel] = getattr(configs, name)
        for field, form in _fields(definition).items():
            default = model.model_fields[field].get_default(call_default_factory=True)
            if default is None and "anyOf" not in form:
                # An optional field: its plain control, empty (left out of the run: None).
                assert "default" not in form and form.get("type") != "null", f"{name}.{field}"
                continue
            assert "default" in form, f"{name}.{field}"
            assert form["default"] == default, f"{name}.{field}"
    tokenize = schema["definitions"].get("TokenizeSettings") or _config(schema)[1]
    if "formats" in tokenize["properties"]:
        assert tokenize["properties"]["formats"]["default"] == ["arrow"]


def test_list_defaults_are_not_shared_between_configs() -> None:
    one, two = configs.TokenizeSettings(), configs.TokenizeSettings()
    one.formats.append("webdataset")
    assert two.formats == ["arrow"] == configs.TokenizeSettings().formats
    first = configs.EvaluateSettings()
    first.regenerate_levels.clear()
    assert configs.EvaluateSettings().regenerate_levels == [1]


def _tokenizer_form() -> dict[str, Any]:
    _, tokenize = _config(_schema("flows/tokenize.py:tokenize_flow"))
    form: dict[str, Any] = tokenize["properties"]["tokenizer"]
    return form


def test_known_tokenizer_names_are_offered_beside_the_typed_forms() -> None:
    known, typed = _tokenizer_form()["anyOf"]
    assert known["enum"] == list(KNOWN_NAMES) and known["title"] == "known name"
    assert typed["type"] == "string" and "pattern" in typed
    assert _tokenizer_form()["default"] == "mu-law-256"
    for name in KNOWN_NAMES:
        parse_tokenizer_name(name)  # each one is valid


NAMES = [
    "mu-law-256",
    "mulaw",
    "mu-law-256-post",
    "codec:runs/x/codec/checkpoint",
    "codec:runs/x/codec/checkpoint@8",
    "codec:rvq-8@2",
    "codec:trained@8",
    "codec: a folder/with spaces@10",
    "codec:",
    "codec: ",
    "codec:@3",
    "codec:x@0",
    "codec:x@",
    "codec:x@01",
    "codec:x@1@2",
    "mimi_08_rvq",
    "mimi_8_rvq_semantic",
    "Mimi_8_rvq",
    "MU-LAW-256",
    "mu-law-256 ",
    " mu-law-256",
    "mu-law-512",
    "",
    *(f"mimi_{k}_rvq" for k in range(0, 40)),
    *(f"mimi_{k}_rvq_nosemantic" for k in range(0, 40)),
]


def _grammar_accepts(name: str) -> bool:
    try:
        parse_tokenizer_name(name)
    except TokenizerNameError:
        return False
    return True


def _server_accepts(schema: dict[str, Any], name: str) -> bool:
    """What the Prefect server answers a run of the tokenize deployment with this tokenizer."""
    try:
        validate({"cfg": {"tokenizer": name}}, schema, raise_on_error=True)
    except ValidationError:
        return False
    return True


def test_the_server_accepts_exactly_the_names_the_grammar_accepts() -> None:
    """The server validates a run's parameters against the form's schema before the flow runs:
    a pattern narrower than the grammar would refuse a valid name, a wider one let a bad name
    reach the worker."""
    schema = _schema("flows/tokenize.py:tokenize_flow")
    disagree = [n for n in NAMES if _server_accepts(schema, n) != _grammar_accepts(n)]
    assert not disagree
    # A refusal reads as the choice it is, not as the pattern's raw regular expression.
    with pytest.raises(ValidationError) as refused:
        validate({"cfg": {"tokenizer": "foo"}}, schema, raise_on_error=True)
    assert str(refused.value) == (
        "Validation failed for field 'cfg.tokenizer'. "
        "Failure reason: 'foo' is not valid under any of the given schemas"
    )
    assert sum(map(_grammar_accepts, NAMES)) == 8 + 32 + 31  # both sides of the line are tested
    # What the schema leaves to the config: a codec checkpoint must be a local folder, refused
    # (one line) when the flow validates its config.
    assert _server_accepts(schema, "codec:s3://bucket/codec@2")
    with pytest.raises(ValueError, match="must be a local folder"):
        configs.TokenizeConfig(tokenizer="codec:s3://bucket/codec@2")


def test_the_deployments_parameters_pass_the_servers_validation() -> None:
    """prefect.yaml's parameters, checked as the server checks a run of each deployment."""
    for deployment in yaml.safe_load((REPO / "prefect.yaml").read_text())["deployments"]:
        schema = _schema(deployment["entrypoint"])
        validate(deployment["parameters"], schema, raise_on_error=True)


@pytest.mark.parametrize("entrypoint", sorted(INPUTS_FIRST))
def test_forms_read_as_text(entrypoint: str) -> None:
    """What the UI shows of a form: no angle-bracket placeholder (the UI drops it as an HTML
    tag: "under <out>/tokens/" read "under /tokens/"), every config titled by its stage (not
    its class), no optional field as a choice of its type and "None" (only choices titled on
    purpose, such as "no codec stage")."""
    import re

    schema = _schema(entrypoint)
    stage = entrypoint.split("/")[1].split(".")[0].replace("_", "-")
    assert _config(schema)[1]["title"] == stage
    for name, definition in schema["definitions"].items():
        assert not name.endswith(("Settings", "Config")) or definition["title"] in set(
            STAGE_TITLES.values()
        ), name
        for field, form in {"": definition, **_fields(definition)}.items():
            for key in ("title", "description"):
                text = form.get(key, "")
                assert not re.search(r"<[A-Za-z/]", text), f"{name}.{field} {key}: {text}"
            branches = form.get("anyOf", [])
            if {"type": "null"} in branches:
                assert all("title" in b for b in branches), f"{name}.{field}: untitled None"
            assert not isinstance(form.get("type"), list), f"{name}.{field}: a type list"


def test_an_optional_field_still_takes_null_from_a_script() -> None:
    """The server validates a run's parameters against the form's schema: an explicit null
    (a script's `model_dump()`, a trigger) still passes for an optional number or list; a
    preset (a drop-down) is one of its choices or left out; anything else is refused before
    the flow starts."""
    schema = _schema("flows/train_lm.py:train_lm_flow")
    full = configs.TrainLMConfig().model_dump(mode="json", exclude={"preset"})
    assert full["lr_decay_steps"] is None and full["level_weights"] is None
    assert validate({"cfg": full}, schema, raise_on_error=True) == []
    assert _config(schema)[1]["properties"]["preset"]["enum"] == ["tiny", "demo", "post"]
    validate({"cfg": {"preset": "post"}}, schema, raise_on_error=True)
    with pytest.raises(ValidationError, match="preset"):
        validate({"cfg": {"preset": "large"}}, schema, raise_on_error=True)
    with pytest.raises(ValidationError, match="lr_decay_steps"):
        validate({"cfg": {"lr_decay_steps": "soon"}}, schema, raise_on_error=True)
