"""The one tokenizer-name grammar: every accepted form, every refusal in one line, round trips,
and the config field that validates with it (no torch, no tasks/)."""

from __future__ import annotations

import subprocess
import sys

import pytest
from helpers import REPO
from pydantic import ValidationError

from codecflow.schemas.configs import PipelineConfig, TokenizeConfig, TokenizeSettings
from codecflow.schemas.tokenizers import (
    ACCEPTED_FORMS,
    KNOWN_NAMES,
    MIMI_MAX_LEVELS,
    MULAW_NAMES,
    NAME_PATTERN,
    TokenizerName,
    TokenizerNameError,
    parse_tokenizer_name,
)

ACCEPTED = {
    "mu-law-256": TokenizerName("mulaw"),
    "mulaw": TokenizerName("mulaw"),
    "mu-law-256-post": TokenizerName("mulaw", post_quantizer=True),
    "codec:runs/x/codec/checkpoint@4": TokenizerName("codec", 4, "runs/x/codec/checkpoint"),
    "codec:runs/x/codec/checkpoint": TokenizerName("codec", None, "runs/x/codec/checkpoint"),
    "codec:my-codec@12": TokenizerName("codec", 12, "my-codec"),
    "codec:rvq-8": TokenizerName("codec", None, "rvq-8"),  # a preset: the grammar can't tell
    "codec:s3://bucket/codec/checkpoint@2": TokenizerName(
        "codec", 2, "s3://bucket/codec/checkpoint"
    ),
    "codec:trained@8": TokenizerName("codec", 8, "trained"),
    "mimi_1_rvq": TokenizerName("mimi", 1),
    "mimi_8_rvq": TokenizerName("mimi", 8),
    "mimi_32_rvq": TokenizerName("mimi", 32),
    "mimi_1_rvq_nosemantic": TokenizerName("mimi", 1, semantic=False),
    "mimi_31_rvq_nosemantic": TokenizerName("mimi", 31, semantic=False),
}

REFUSED = {
    "mimi_0_rvq": "K must be in 1..32, got 0",
    "mimi_33_rvq": "K must be in 1..32, got 33",
    "mimi_99_rvq": "K must be in 1..32, got 99",  # the old config regex let it through
    "mimi_0_rvq_nosemantic": "K must be in 1..31, got 0",
    "mimi_32_rvq_nosemantic": "K must be in 1..31, got 32",  # needs a 33-level encode
    "mimi_08_rvq": "unknown tokenizer",
    "mimi_8_rvq_semantic": "unknown tokenizer",
    "mimi_8": "unknown tokenizer",
    "codec:": "the codec checkpoint is empty",
    "codec: ": "the codec checkpoint is empty",
    "codec:@3": "the codec checkpoint is empty",
    "codec:x@0": "levels after '@' must be an integer >= 1, got '0'",
    "codec:x@a": "levels after '@' must be an integer >= 1, got 'a'",
    "codec:x@": "levels after '@' must be an integer >= 1, got ''",
    "codec:x@two": "levels after '@' must be an integer >= 1",
    "codec:x@-1": "levels after '@' must be an integer >= 1",
    "codec:x@03": "levels after '@' must be an integer >= 1",
    "codec:a@b@3": "levels after '@' must be an integer >= 1, got 'b@3'",
    "codec": "unknown tokenizer",
    "mu-law-512": "unknown tokenizer",
    "foo": "unknown tokenizer",
    "MULAW": "unknown tokenizer",
    " mulaw": "unknown tokenizer",
    "": "unknown tokenizer",
}


@pytest.mark.parametrize("name", sorted(ACCEPTED))
def test_every_accepted_form(name: str) -> None:
    parsed = parse_tokenizer_name(name)
    assert parsed == ACCEPTED[name]
    # The round trip: the canonical spelling parses back to the same name, and is its own
    # canonical spelling; only the alias `mulaw` is spelled otherwise.
    assert str(parsed) == parsed.canonical
    assert parse_tokenizer_name(parsed.canonical) == parsed
    assert parse_tokenizer_name(parsed.canonical).canonical == parsed.canonical
    assert parsed.canonical == ("mu-law-256" if name == "mulaw" else name)
    # The config field takes the same names, as written (but a codec checkpoint URL: below).
    if parsed.checkpoint is None or "://" not in parsed.checkpoint:
        assert TokenizeSettings(tokenizer=name).tokenizer == name


def test_the_config_field_refuses_a_codec_checkpoint_url() -> None:
    """The grammar reads `codec:s3://...`, but checkpoints load from a local folder: refused in
    one line naming it, rather than read from `s3:/...`."""
    with pytest.raises(ValidationError) as info:
        TokenizeSettings(tokenizer="codec:s3://bucket/codec/checkpoint@2")
    message = str(info.value)
    assert "codec checkpoint 's3://bucket/codec/checkpoint' must be a local folder" in message


@pytest.mark.parametrize("name", sorted(REFUSED))
def test_every_refusal_is_one_line_naming_the_name_and_the_forms(name: str) -> None:
    with pytest.raises(TokenizerNameError) as info:
        parse_tokenizer_name(name)
    message = str(info.value)
    assert isinstance(info.value, ValueError)
    assert "\n" not in message
    assert repr(name) in message and REFUSED[name] in message
    assert message.endswith(ACCEPTED_FORMS)
    for form in ("mu-law-256", "codec:CHECKPOINT[@LEVELS]", "mimi_K_rvq_nosemantic"):
        assert form in message


@pytest.mark.parametrize("name", ["mimi_99_rvq", "mimi_32_rvq_nosemantic", "codec:x@0", "foo"])
def test_the_config_field_refuses_what_the_grammar_refuses(name: str) -> None:
    with pytest.raises(ValidationError) as info:
        TokenizeConfig(tokenizer=name)
    (error,) = info.value.errors()
    assert error["loc"] == ("tokenizer",)
    assert "\n" not in error["msg"] and repr(name) in error["msg"]
    with pytest.raises(ValidationError):
        PipelineConfig.model_validate({"tokenize": {"tokenizer": name}})


def test_the_config_field_keeps_its_form() -> None:
    """The Prefect UI renders the field from its JSON schema: the default and the description
    stay, and the value is a known name or one typed (tests/flows/test_forms.py: the typed
    form's pattern accepts exactly what the grammar does, the validator still decides)."""
    field = TokenizeSettings.model_json_schema()["properties"]["tokenizer"]
    assert field["default"] == "mu-law-256" and "type" not in field
    assert "codec:CHECKPOINT[@LEVELS]" in field["description"]
    known, typed = field["anyOf"]
    assert known == {"type": "string", "enum": list(KNOWN_NAMES), "title": "known name"}
    assert typed["type"] == "string" and typed["pattern"] == NAME_PATTERN


def test_constants() -> None:
    assert MIMI_MAX_LEVELS == 32
    assert MULAW_NAMES == ("mu-law-256", "mulaw", "mu-law-256-post")
    assert all(parse_tokenizer_name(n).kind == "mulaw" for n in MULAW_NAMES)
    assert f"1..{MIMI_MAX_LEVELS}" in ACCEPTED_FORMS and "\n" not in ACCEPTED_FORMS
    assert TokenizerName("codec", 4, "c").canonical == "codec:c@4"
    assert str(TokenizerName("mimi", 3, semantic=False)) == "mimi_3_rvq_nosemantic"


def test_the_grammar_is_pure() -> None:
    """The module alone loads nothing but the standard library; with the configs, no torch,
    models/ or tasks/ (numpy comes with pyarrow, for schemas/tables.py)."""
    alone = (
        "import importlib.util, sys; "
        "spec = importlib.util.spec_from_file_location('grammar', 'schemas/tokenizers.py'); "
        "module = sys.modules['grammar'] = importlib.util.module_from_spec(spec); "
        "spec.loader.exec_module(module); "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in "
        "{'torch', 'numpy', 'pydantic', 'codecflow'}))"
    )
    configs = (
        "import sys; import codecflow.schemas.configs; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'torch' "
        "or m.startswith(('codecflow.models', 'codecflow.tasks'))))"
    )
    for code in (alone, configs):
        done = subprocess.run(
            [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True
        )
        assert done.stdout.strip() == "[]"


def test_mimi_facts_are_moshis() -> None:
    """schemas/ may not import moshi (sizes run without torch models): its copies of Mimi's facts
    must stay moshi's own."""
    from moshi.models import loaders

    from codecflow.schemas.tokenizers import (
        MIMI_CODEBOOK_SIZE,
        MIMI_FRAME_RATE,
        MIMI_MAX_LEVELS,
        MIMI_SAMPLE_RATE,
    )

    assert MIMI_SAMPLE_RATE == loaders.SAMPLE_RATE
    assert MIMI_FRAME_RATE == loaders.FRAME_RATE
    assert MIMI_CODEBOOK_SIZE == loaders._quantizer_kwargs["bins"]
    assert MIMI_MAX_LEVELS == loaders._quantizer_kwargs["n_q"]
