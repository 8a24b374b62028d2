"""Every loader in one place (like moshi's `models/loaders.py`): tokenizers by name, trained codecs
and LM checkpoints.

`models/` holds pure torch modules; building them from a name, a checkpoint or the Hugging Face
Hub happens here, with moshi's `loaders.get_mimi` for Mimi.

The names are those of the post's code ("Neural audio codecs: how to get audio into LLMs",
Kyutai, 2025), parsed by `parse_tokenizer_name`:

- `mu-law-256` (alias `mulaw`): mu-law 256 at 16 kHz, one token per sample (torchaudio's rounding);
- `mu-law-256-post`: the same with the post's librosa quantiser (`digitize`; tokens equal the
  post's `.bin`, see models/mulaw.py);
- `codec:<checkpoint>[@<levels>]`: a codec trained by `train-codec` (its checkpoint folder or
  name), optionally truncated to its first `levels` RVQ levels;
- `mimi_<K>_rvq`: Kyutai's Mimi, its first K levels (K in 1..32);
- `mimi_<K>_rvq_nosemantic`: levels 1..K of a (K+1)-level Mimi encode (K in 1..31), the semantic
  level 0 dropped
  (K in 2..32).

Mimi's weights come from the Hub with `huggingface_hub.hf_hub_download`, so its cache applies:
`HF_HOME` / `HF_HUB_CACHE` choose the cache folder and `HF_HUB_OFFLINE=1` forbids the network
(both read when `load_mimi` runs, not only when huggingface_hub is imported). The repository and
file default to Kyutai's Moshi release and can be overridden with the environment variables
`CODECFLOW_MIMI_REPO` and `CODECFLOW_MIMI_FILE`. On a machine without internet, pre-fetch them
with `huggingface-cli download kyutai/moshiko-pytorch-bf16
tokenizer-e351c8d8-checkpoint125.safetensors` where there is internet and copy the cache (or
point `HF_HOME` at it).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from huggingface_hub import hf_hub_download
from moshi.models.compression import MimiModel
from moshi.models.loaders import get_mimi

from models.codec import RVQCodec, build_rvq_codec
from models.codec_tokenizer import CodecTokenizer
from models.gpt import GPT, GPTConfig
from models.mimi import MimiTokenizer
from models.mulaw import MuLawTokenizer
from models.tokenizer import AudioTokenizer
from tasks.core.errors import CodecflowError
from tasks.data.checkpoints import (
    load_weights,
    read_checkpoint_json,
)

__all__ = [
    "MIMI_FILE",
    "MIMI_FILE_ENV",
    "MIMI_MAX_LEVELS",
    "MIMI_REPO",
    "MIMI_REPO_ENV",
    "TOKENIZER_NAMES",
    "TokenizerName",
    "load_checkpoint",
    "load_codec",
    "load_codec_tokenizer",
    "load_mimi",
    "load_tokenizer",
    "parse_tokenizer_name",
    "tokenizer_spec",
]


#: The accepted forms of a tokenizer name (`mulaw` is an alias of `mu-law-256`).
TOKENIZER_NAMES: tuple[str, ...] = (
    "mu-law-256",
    "mulaw",
    "mu-law-256-post",
    "codec:<checkpoint>[@<levels>]",
    "mimi_<K>_rvq",
    "mimi_<K>_rvq_nosemantic",
)


#: Mimi's released checkpoint: moshi's DEFAULT_REPO and MIMI_NAME (moshi/models/loaders.py).
MIMI_REPO = "kyutai/moshiko-pytorch-bf16"


MIMI_FILE = "tokenizer-e351c8d8-checkpoint125.safetensors"


MIMI_REPO_ENV = "CODECFLOW_MIMI_REPO"


MIMI_FILE_ENV = "CODECFLOW_MIMI_FILE"


#: Mimi's RVQ depth (`_quantizer_kwargs["n_q"]` in moshi/models/loaders.py).
MIMI_MAX_LEVELS = 32


_ACCEPTED = (
    "accepted: mu-law-256 (alias mulaw), mu-law-256-post, "
    "codec:<checkpoint>[@<levels>] with levels >= 1, "
    f"mimi_<K>_rvq with K in 1..{MIMI_MAX_LEVELS}, "
    f"mimi_<K>_rvq_nosemantic with K in 1..{MIMI_MAX_LEVELS - 1}"
)


_MIMI_NAME = re.compile(r"mimi_([1-9][0-9]*)_rvq(_nosemantic)?")


_LEVELS = re.compile(r"[1-9][0-9]*")


@dataclass(frozen=True)
class TokenizerName:
    """A parsed tokenizer name.

    `levels` is the number after `@` for a codec (None: all its levels) and K for Mimi (the levels
    kept: 0..K-1, or 1..K without the semantic level, from a K+1-level encode); None for
    mu-law. `checkpoint` is the codec's checkpoint (None otherwise). `semantic` is False only for
    `mimi_<K>_rvq_nosemantic`. `post_quantizer` is True only for `mu-law-256-post` (librosa's
    `mu_compress` quantiser, as the post's data preparation).
    """

    kind: Literal["mulaw", "codec", "mimi"]
    levels: int | None = None
    checkpoint: str | None = None
    semantic: bool = True
    post_quantizer: bool = False


def _invalid(name: str, why: str) -> CodecflowError:
    return CodecflowError(f"invalid tokenizer name {name!r}: {why}; {_ACCEPTED}")


def parse_tokenizer_name(name: str) -> TokenizerName:
    """Parse a tokenizer name of the post's code; CodecflowError (one line) when malformed."""
    if name in ("mu-law-256", "mulaw"):
        return TokenizerName("mulaw")
    if name == "mu-law-256-post":
        return TokenizerName("mulaw", post_quantizer=True)
    if name.startswith("codec:"):
        checkpoint, at, levels = name.removeprefix("codec:").partition("@")
        if not checkpoint.strip():
            raise _invalid(name, "the codec checkpoint is empty")
        if at and not _LEVELS.fullmatch(levels):
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
    raise CodecflowError(f"unknown tokenizer {name!r}; {_ACCEPTED}")


def load_tokenizer(name: str, device: str | torch.device = "cpu") -> AudioTokenizer:
    """Build the tokenizer called `name`, in eval mode, on `device`."""
    parsed = parse_tokenizer_name(name)
    if parsed.kind == "mulaw":
        # mu-law 256 at 16 kHz, the post's sample-level baseline (Libri-Light is 16 kHz).
        quantizer = "post" if parsed.post_quantizer else "torchaudio"
        return MuLawTokenizer(sample_rate=16_000, quantizer=quantizer).to(device).eval()
    if parsed.kind == "codec":
        # Imported here: the codec trainer pulls in its own dependencies.

        assert parsed.checkpoint is not None
        codec: AudioTokenizer = load_codec_tokenizer(parsed.checkpoint, parsed.levels)
        return codec.to(device).eval()
    assert parsed.levels is not None
    model = load_mimi(parsed.levels + (0 if parsed.semantic else 1), device=device)
    return MimiTokenizer(model, parsed.levels, semantic=parsed.semantic).eval()


def _hf_hub_cache() -> str | None:
    """The Hub cache folder as huggingface_hub would resolve it from the environment now.

    huggingface_hub reads these variables once, at import (huggingface_hub/constants.py); reading
    them here honours a change made later (a test's monkeypatch, a caller's os.environ).
    """
    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        if os.environ.get(var):
            return os.path.expandvars(os.path.expanduser(os.environ[var]))
    if os.environ.get("HF_HOME"):
        return os.path.join(os.path.expandvars(os.path.expanduser(os.environ["HF_HOME"])), "hub")
    return None  # huggingface_hub's default (XDG_CACHE_HOME or ~/.cache)


def _hf_offline() -> bool:
    """`HF_HUB_OFFLINE` (or `TRANSFORMERS_OFFLINE`) as huggingface_hub reads it: 1/ON/YES/TRUE."""
    value = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE") or ""
    return value.upper() in {"1", "ON", "YES", "TRUE"}


def load_mimi(
    num_codebooks: int,
    *,
    repo: str | None = None,
    filename: str | None = None,
    device: str | torch.device = "cpu",
) -> MimiModel:
    """Kyutai's pretrained Mimi with `num_codebooks` active levels, in eval mode, on `device`.

    The weights are `filename` in the Hub repository `repo`; each defaults to the environment
    variable `CODECFLOW_MIMI_REPO` / `CODECFLOW_MIMI_FILE`, else to `MIMI_REPO` / `MIMI_FILE`.
    They are fetched with `hf_hub_download` (the Hub cache, `HF_HOME`, `HF_HUB_CACHE` and
    `HF_HUB_OFFLINE=1` apply) and loaded by moshi's `get_mimi`. Raises CodecflowError when they
    cannot be fetched or loaded.
    """
    assert 1 <= num_codebooks <= MIMI_MAX_LEVELS, (
        f"num_codebooks must be in [1, {MIMI_MAX_LEVELS}], got {num_codebooks}"
    )
    repo = repo or os.environ.get(MIMI_REPO_ENV) or MIMI_REPO
    filename = filename or os.environ.get(MIMI_FILE_ENV) or MIMI_FILE
    try:
        path = hf_hub_download(
            repo, filename, cache_dir=_hf_hub_cache(), local_files_only=_hf_offline()
        )
    except Exception as exc:  # offline without a cache, no network, 401/404, a full disk...
        raise CodecflowError(
            f"cannot get the Mimi weights {filename} of Hugging Face repo {repo} "
            f"({type(exc).__name__}): pre-fetch them with `huggingface-cli download {repo} "
            f"{filename}` or point HF_HOME at a cache that holds them"
        ) from exc
    try:
        return get_mimi(path, device=device, num_codebooks=num_codebooks)
    except Exception as exc:  # a truncated file, another model's weights
        first_line = (str(exc).strip().splitlines() or [""])[0][:200]
        raise CodecflowError(
            f"cannot load the Mimi weights {Path(path)} ({repo}/{filename}): "
            f"{type(exc).__name__}: {first_line}"
        ) from exc


def tokenizer_spec(name: str, tokenizer: AudioTokenizer) -> dict[str, Any]:
    """The facts about a tokenizer that a token dataset records and its readers rely on."""
    return {
        "name": name,
        "sample_rate": tokenizer.sample_rate,
        "frame_rate": tokenizer.frame_rate,
        "num_levels": tokenizer.num_levels,
        "codebook_size": tokenizer.codebook_size,
        "samples_per_frame": tokenizer.samples_per_frame,
        "token_dtype": np.dtype(tokenizer.token_dtype).name,  # "uint8", "uint16", "uint32"
    }


def load_codec(checkpoint: str | Path, device: str | torch.device = "cpu") -> RVQCodec:
    """The codec of a final checkpoint folder (safetensors: loading never unpickles)."""
    checkpoint = Path(checkpoint)
    if not (checkpoint / "metrics.json").is_file():
        raise CodecflowError(f"no complete codec checkpoint at {checkpoint}")
    config = read_checkpoint_json(checkpoint / "config.json")
    try:
        codec = build_rvq_codec(**config["codec"])
    except (KeyError, TypeError, ValueError, AssertionError) as err:
        raise CodecflowError(
            f"checkpoint {checkpoint}: config.json has no valid codec ({err!r})"
        ) from None
    try:
        codec.load_state_dict(load_weights(checkpoint / "model.safetensors"))
    except RuntimeError:  # missing or unexpected tensors, or other shapes
        raise CodecflowError(f"checkpoint {checkpoint} does not match its config.json") from None
    return codec.to(device).eval()


def load_codec_tokenizer(checkpoint: str, levels: int | None = None) -> CodecTokenizer:
    """`codec:<checkpoint>[@<levels>]`: a trained codec as a tokenizer of its first N levels."""
    codec = load_codec(checkpoint)
    max_levels = codec.quantizer.num_levels
    if levels is not None and not 1 <= levels <= max_levels:
        raise CodecflowError(f"codec {checkpoint} has {max_levels} levels; asked for {levels}")
    return CodecTokenizer(codec, levels or max_levels).eval()


def load_checkpoint(checkpoint: Path, device: torch.device) -> tuple[GPT, dict[str, Any]]:
    """The GPT of a checkpoint folder (safetensors: no unpickling) and its tokenizer spec.

    Either the final `checkpoint/` or a resumable `checkpoints/step-N/` written while training.
    """
    checkpoint = Path(checkpoint)
    complete = (checkpoint / "metrics.json").is_file() or (checkpoint / "COMPLETE").is_file()
    if not complete or not (checkpoint / "config.json").is_file():
        raise CodecflowError(f"no complete LM checkpoint at {checkpoint}")
    config = read_checkpoint_json(checkpoint / "config.json")
    try:
        model = GPT(GPTConfig(**config["gpt"]))
    except (KeyError, TypeError, ValueError, AssertionError) as err:
        raise CodecflowError(
            f"checkpoint {checkpoint}: config.json has no valid GPT ({err!r})"
        ) from None
    weights = load_weights(checkpoint / "model.safetensors")
    missing, unexpected = model.load_state_dict(weights, strict=False)
    if unexpected or set(missing) - {"wte.weight"}:
        raise CodecflowError(f"checkpoint {checkpoint} does not match its config.json")
    return model.to(device).eval(), config["tokenizer"]
