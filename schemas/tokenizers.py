"""The one grammar of tokenizer names: parsed here, for the configs, the sizes and the loaders.

The names are those of the post's code ("Neural audio codecs: how to get audio into LLMs",
Kyutai, 2025):

- `mu-law-256` (alias `mulaw`): mu-law 256 at 16 kHz, one token per sample (torchaudio's rounding);
- `mu-law-256-post`: the same with the post's librosa quantiser (`digitize`; tokens equal the
  post's `.bin`, see models/mulaw.py);
- `codec:<checkpoint>[@<levels>]`: the post's RVQ codec, its first `levels` levels (all without
  `@`). `<checkpoint>` is a folder written by `train-codec` (it holds a `config.json`), or else the
  name of a preset of `models.codec.CODEC_PRESETS` (`codec:rvq-8`), which has no trained weights;
  which of the two it is, is for `tasks/` to find out: the grammar only reads the name;
- `mimi_<K>_rvq`: Kyutai's Mimi, its first K levels (K in 1..32);
- `mimi_<K>_rvq_nosemantic`: levels 1..K of a (K+1)-level Mimi encode (K in 1..31), the semantic
  level 0 dropped.

Pure: the standard library only (no torch, no `tasks/` or `models/`), so that a config validates
the name without importing a model. A malformed name raises `TokenizerNameError`, a `ValueError`
(so a pydantic validator reports it as the field's error) whose message is one line naming the
name and listing the accepted forms; `tasks.core.errors.user_error` makes it a `CodecflowError`.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import Any, Literal

__all__ = [
    "dataset_folder_name",
    "ACCEPTED_FORMS",
    "KNOWN_NAMES",
    "NAME_PATTERN",
    "MIMI_CODEBOOK_SIZE",
    "MIMI_FRAME_RATE",
    "MIMI_MAX_LEVELS",
    "MIMI_SAMPLE_RATE",
    "MULAW_CODEBOOK_SIZE",
    "MULAW_SAMPLE_RATE",
    "MULAW_NAMES",
    "TokenizerKind",
    "TokenizerName",
    "TokenizerNameError",
    "parse_tokenizer_name",
    "tokenizer_json_schema",
]

#: Mimi's RVQ depth: `_quantizer_kwargs["n_q"]` in moshi/models/loaders.py (moshi 0.2).
MIMI_MAX_LEVELS = 32
#: Mimi's rates and codebook (moshi/models/loaders.py: SAMPLE_RATE 24 000, FRAME_RATE 12.5,
#: `_quantizer_kwargs["bins"]` 2048): what sizes need without loading the model.
MIMI_SAMPLE_RATE, MIMI_FRAME_RATE, MIMI_CODEBOOK_SIZE = 24_000, 12.5, 2048
#: mu-law 256 at Libri-Light's 16 kHz: one token per sample.
MULAW_SAMPLE_RATE, MULAW_CODEBOOK_SIZE = 16_000, 256

#: Every mu-law name: `mu-law-256`, its alias `mulaw`, and `mu-law-256-post`.
MULAW_NAMES: tuple[str, ...] = ("mu-law-256", "mulaw", "mu-law-256-post")

#: The accepted forms, as every refusal lists them.
ACCEPTED_FORMS = (
    "accepted: mu-law-256 (alias mulaw), mu-law-256-post, "
    "codec:CHECKPOINT[@LEVELS] with LEVELS >= 1 (a train-codec checkpoint folder or a codec "
    f"preset), mimi_K_rvq with K in 1..{MIMI_MAX_LEVELS}, "
    f"mimi_K_rvq_nosemantic with K in 1..{MIMI_MAX_LEVELS - 1}"
)

#: The names a form offers as choices: those that need no checkpoint of one's own (mu-law, and
#: the Mimi depths of the post's experiments). Any other valid name is typed.
KNOWN_NAMES: tuple[str, ...] = (
    "mu-law-256",
    "mu-law-256-post",
    "mimi_1_rvq",
    "mimi_2_rvq",
    "mimi_4_rvq",
    "mimi_8_rvq",
    "mimi_16_rvq",
    "mimi_32_rvq",
    "mimi_8_rvq_nosemantic",
    "mimi_31_rvq_nosemantic",
)

#: Every valid name as one regular expression, for a JSON schema (the Prefect server validates a
#: run's parameters with it before any flow code runs): `parse_tokenizer_name`'s grammar,
#: including the ranges of K (1..32, 1..31 without the semantic level); a test holds the two
#: to the same answers.
NAME_PATTERN = (
    r"^(mu-law-256|mulaw|mu-law-256-post"
    r"|codec:[^@]*[^@\s][^@]*(@[1-9][0-9]*)?"
    r"|mimi_([1-9]|[12][0-9]|3[0-2])_rvq"
    r"|mimi_([1-9]|[12][0-9]|3[01])_rvq_nosemantic)$"
)

TokenizerKind = Literal["mulaw", "codec", "mimi"]

_CODEC_PREFIX = "codec:"
_MIMI_NAME = re.compile(r"mimi_(0|[1-9][0-9]*)_rvq(_nosemantic)?")
_POSITIVE = re.compile(r"[1-9][0-9]*")


class TokenizerNameError(ValueError):
    """A malformed tokenizer name; the message is one line naming it and the accepted forms."""


@dataclass(frozen=True)
class TokenizerName:
    """A parsed tokenizer name; `str()` gives its canonical spelling, which parses back to it.

    `num_levels` is K, the levels kept: the number after `@` for a codec (None: all of the
    codec's levels), K for Mimi (0..K-1, or 1..K without the semantic level, from a K+1-level
    encode), None for mu-law. `checkpoint` is the codec's checkpoint folder or preset name (None
    otherwise). `semantic` is False only for `mimi_<K>_rvq_nosemantic`. `post_quantizer` is True
    only for `mu-law-256-post` (librosa's `mu_compress` quantiser, as the post's data preparation).
    """

    kind: TokenizerKind
    num_levels: int | None = None
    checkpoint: str | None = None
    semantic: bool = True
    post_quantizer: bool = False

    @property
    def canonical(self) -> str:
        """The name's one spelling: `mulaw` is `mu-law-256`; every other name is its own."""
        if self.kind == "mulaw":
            return "mu-law-256-post" if self.post_quantizer else "mu-law-256"
        if self.kind == "codec":
            levels = "" if self.num_levels is None else f"@{self.num_levels}"
            return f"{_CODEC_PREFIX}{self.checkpoint}{levels}"
        return f"mimi_{self.num_levels}_rvq{'' if self.semantic else '_nosemantic'}"

    def __str__(self) -> str:
        return self.canonical


def _invalid(name: str, why: str) -> TokenizerNameError:
    return TokenizerNameError(f"invalid tokenizer name {name!r}: {why}; {ACCEPTED_FORMS}")


def parse_tokenizer_name(name: str) -> TokenizerName:
    """Parse a tokenizer name; `TokenizerNameError` (one line) when it is malformed."""
    if name in ("mu-law-256", "mulaw"):
        return TokenizerName("mulaw")
    if name == "mu-law-256-post":
        return TokenizerName("mulaw", post_quantizer=True)
    if name.startswith(_CODEC_PREFIX):
        checkpoint, at, levels = name.removeprefix(_CODEC_PREFIX).partition("@")
        if not checkpoint.strip():
            raise _invalid(name, "the codec checkpoint is empty")
        if at and not _POSITIVE.fullmatch(levels):
            raise _invalid(name, f"levels after '@' must be an integer >= 1, got {levels!r}")
        return TokenizerName("codec", int(levels) if at else None, checkpoint)
    match = _MIMI_NAME.fullmatch(name)
    if match:
        k, semantic = int(match.group(1)), match.group(2) is None
        # Without level 0, levels 1..K take a K+1-level encode: K <= 31 of Mimi's 32.
        top = MIMI_MAX_LEVELS if semantic else MIMI_MAX_LEVELS - 1
        if not 1 <= k <= top:
            raise _invalid(name, f"K must be in 1..{top}, got {k}")
        return TokenizerName("mimi", k, semantic=semantic)
    raise TokenizerNameError(f"unknown tokenizer {name!r}; {ACCEPTED_FORMS}")


def tokenizer_json_schema(schema: dict[str, Any]) -> None:
    """A tokenizer field's JSON schema as a choice of known names or a typed one (pydantic's
    `json_schema_extra`): the Prefect UI renders `anyOf` as two tabs, a drop-down of
    `KNOWN_NAMES` and a text box, and opens the tab that the current value matches."""
    schema.pop("type", None)
    schema["anyOf"] = [
        {"type": "string", "enum": list(KNOWN_NAMES), "title": "known name"},
        {"type": "string", "pattern": NAME_PATTERN, "title": "codec:CHECKPOINT[@LEVELS] or other"},
    ]


def dataset_folder_name(tokenizer: str) -> str:
    """A folder name for a tokenizer's dataset: the name itself when it is one already
    (`mu-law-256`, `mimi_8_rvq`), else a readable slug plus a short hash of the full name
    (`codec:runs/x/codec/checkpoint@4` -> `codec-checkpoint-4-<hash>`)."""
    if re.fullmatch(r"[A-Za-z0-9_.-]+", tokenizer):
        return tokenizer
    slug = "-".join(p for p in re.split(r"[^A-Za-z0-9]+", tokenizer.split("/")[-1]) if p)
    digest = hashlib.sha256(tokenizer.encode()).hexdigest()[:8]
    return f"{parse_tokenizer_name(tokenizer).kind}-{slug}-{digest}"
