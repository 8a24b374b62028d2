"""What `codecflow <command> --help` and `codecflow tokenizers` print: read from the pydantic
configs and the tokenizer grammar, so the help cannot drift from what is validated.

Each flow's help lists every field `--set` can reach, nested sections by their dotted path
(`train_lm.steps`), with its type, its default (a `default_factory`'s value too) and its
description.
"""

from __future__ import annotations

import textwrap
import types
import typing
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel
from pydantic_core import PydanticUndefined

from codecflow.schemas.tokenizers import (
    MIMI_CODEBOOK_SIZE,
    MIMI_FRAME_RATE,
    MIMI_MAX_LEVELS,
    MULAW_SAMPLE_RATE,
)

__all__ = ["FieldHelp", "field_help", "fields_markdown", "format_fields", "format_tokenizers"]


@dataclass(frozen=True)
class FieldHelp:
    """One settable field: its dotted path, type, default and description."""

    path: str
    type: str
    default: str
    description: str


def _type_name(annotation: Any) -> str:
    """`int`, `float or null`, `one of: flatten, delay`, `list of int`, ..."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is typing.Literal:
        return "one of: " + ", ".join(str(a) for a in args)
    if origin in (typing.Union, types.UnionType):
        names = [_type_name(a) for a in args if a is not type(None)]
        return " or ".join(names) + (" or null" if type(None) in args else "")
    if origin is list:
        return f"list of {_type_name(args[0])}" if args else "list"
    return getattr(annotation, "__name__", str(annotation))


def _section(annotation: Any) -> type[BaseModel] | None:
    """The config model of a nested section (`X` or `X | None`), else None."""
    for candidate in (annotation, *typing.get_args(annotation)):
        if isinstance(candidate, type) and issubclass(candidate, BaseModel):
            return candidate
    return None


def _default(field: Any) -> Any:
    if field.default_factory is not None:
        return field.default_factory()
    return None if field.default is PydanticUndefined else field.default


def _shown(value: Any) -> str:
    if value is None:
        return "empty"
    if isinstance(value, BaseModel):
        return "(section)"
    return repr(value) if isinstance(value, str) else str(value)


def field_help(model: type[BaseModel], prefix: str = "") -> Iterator[FieldHelp]:
    """Every field of `model` that `--set` can reach, sections flattened to dotted paths."""
    for name, field in model.model_fields.items():
        path = f"{prefix}{name}"
        section = _section(field.annotation)
        if section is not None:
            default = _default(field)
            state = "a section, off unless set" if default is None else "a section"
            yield FieldHelp(path, "section", state, field.description or "")
            yield from field_help(section, f"{path}.")
            continue
        yield FieldHelp(
            path, _type_name(field.annotation), _shown(_default(field)), field.description or ""
        )


def format_fields(model: type[BaseModel], width: int = 100) -> str:
    """The fields of `model` as the epilog of its subcommand's --help."""
    lines = ["settings (--set PATH=VALUE, or the same keys in --config FILE.yaml):"]
    for item in field_help(model):
        kind = item.default if item.type == "section" else f"{item.type}; default {item.default}"
        lines.append(f"  {item.path}  ({kind})")
        if item.description:
            lines += textwrap.wrap(
                item.description,
                width,
                initial_indent=" " * 6,
                subsequent_indent=" " * 6,
                break_on_hyphens=False,  # names such as mu-law-256 stay whole
                break_long_words=False,
            )
    return "\n".join(lines)


def format_tokenizers() -> str:
    """`codecflow tokenizers`: every valid tokenizer name and pattern, with its rates."""
    from codecflow.models.codec import CODEC_PRESETS  # torch: only for `codecflow tokenizers`

    presets = ", ".join(sorted(CODEC_PRESETS))
    # The post's codec halves the rate n_blocks times (models/codec.py): 16 000 / 2**7 = 125 Hz.
    post_rate = MULAW_SAMPLE_RATE / 2 ** int(CODEC_PRESETS["post"]["n_blocks"])
    rows = [
        ("mu-law-256", "mu-law 256 at 16 kHz, one token per sample (alias mulaw)", "16 000"),
        ("mu-law-256-post", "the same with the post's librosa quantiser", "16 000"),
        (
            "codec:CHECKPOINT[@N]",
            "the post's RVQ codec trained by train-codec, its first N levels (all without @N)",
            f"{post_rate:g} x N (post)",
        ),
        (
            "codec:PRESET[@N]",
            f"a codec preset, untrained (sizes and rates only): {presets}",
            f"{post_rate:g} x N (post)",
        ),
        (
            "mimi_K_rvq",
            f"Kyutai's Mimi, its first K levels, K in 1..{MIMI_MAX_LEVELS} "
            f"({MIMI_CODEBOOK_SIZE} codes per level)",
            f"{MIMI_FRAME_RATE:g} x K",
        ),
        (
            "mimi_K_rvq_nosemantic",
            f"Mimi levels 1..K, the semantic level dropped, K in 1..{MIMI_MAX_LEVELS - 1}",
            f"{MIMI_FRAME_RATE:g} x K",
        ),
    ]
    width = max(len(r[0]) for r in rows)
    lines = [f"{'name':<{width}}  {'tokens/s':<14}  what"]
    lines += [f"{name:<{width}}  {rate:<14}  {what}" for name, what, rate in rows]
    return "\n".join(lines)


def _cell(text: str) -> str:
    """Text safe inside one markdown table cell."""
    return text.replace("|", "\\|").replace("\n", " ")


def fields_markdown(model: type[BaseModel]) -> str:
    """The fields of `model` as a markdown table: the documentation's CLI reference, from the
    same source as `--help` (`field_help`)."""
    rows = ["| setting | type | default | description |", "|---|---|---|---|"]
    for item in field_help(model):
        default = item.default if item.type == "section" else f"`{_cell(item.default)}`"
        rows.append(
            f"| `{item.path}` | {_cell(item.type)} | {default} | {_cell(item.description)} |"
        )
    return "\n".join(rows)
