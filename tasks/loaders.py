"""Every loader in one place (like moshi's `models/loaders.py`): tokenizers by name, trained codecs
and LM checkpoints.

`models/` holds pure torch modules; building them from a name, a checkpoint or the Hugging Face
Hub happens here, with moshi's `loaders.get_mimi` for Mimi.

The names are those of the post's code, parsed by `schemas.tokenizers.parse_tokenizer_name` (the
one grammar, which the configs and `codecflow sizes` use too): `mu-law-256` (alias `mulaw`),
`mu-law-256-post`, `codec:<checkpoint>[@<levels>]` (a train-codec checkpoint folder, or an
untrained preset of `models.codec.CODEC_PRESETS`), `mimi_<K>_rvq` and `mimi_<K>_rvq_nosemantic`.

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

import functools
import math
import os
import warnings
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from codecflow.models.codec import CODEC_PRESETS, RVQCodec, build_rvq_codec
from codecflow.models.codec_tokenizer import CodecTokenizer
from codecflow.models.extras import require
from codecflow.models.gpt import GPT, GPTConfig
from codecflow.models.mimi import MimiTokenizer
from codecflow.models.mulaw import MuLawTokenizer
from codecflow.models.tokenizer import AudioTokenizer
from codecflow.schemas.tokenizers import MIMI_MAX_LEVELS, parse_tokenizer_name
from codecflow.tasks.core.errors import CodecflowError
from codecflow.tasks.data.checkpoints import (
    load_weights,
    read_checkpoint_json,
    weight_shapes,
)

if TYPE_CHECKING:
    from moshi.models.compression import MimiModel

__all__ = [
    "MIMI_FILE",
    "MIMI_FILE_ENV",
    "MIMI_REPO",
    "MIMI_REPO_ENV",
    "codec_preset",
    "load_checkpoint",
    "load_codec",
    "load_codec_tokenizer",
    "load_mimi",
    "load_tokenizer",
    "tokenizer_spec",
]

#: Mimi's released checkpoint: moshi's DEFAULT_REPO and MIMI_NAME (moshi/models/loaders.py).
MIMI_REPO = "kyutai/moshiko-pytorch-bf16"

MIMI_FILE = "tokenizer-e351c8d8-checkpoint125.safetensors"

MIMI_REPO_ENV = "CODECFLOW_MIMI_REPO"

MIMI_FILE_ENV = "CODECFLOW_MIMI_FILE"


def load_tokenizer(name: str, device: str | torch.device = "cpu") -> AudioTokenizer:
    """Build the tokenizer called `name`, in eval mode, on `device`.

    A malformed name raises `schemas.tokenizers.TokenizerNameError` (a ValueError, which
    `tasks.core.errors.user_error` makes a one-line CodecflowError); a codec checkpoint that is
    neither a folder nor a preset raises CodecflowError.

    Example:
        ```python
        tokenizer = codecflow.load_tokenizer("mimi_8_rvq")  # or "mu-law-256", "codec:<dir>@8"
        codes = tokenizer.encode_audio(wav, sample_rate)  # float [T] at any rate -> int64 [1, K, F]
        audio = tokenizer.decode(codes)  # float32 [1, 1, F * samples_per_frame]
        ```
    """
    parsed = parse_tokenizer_name(name)
    if parsed.kind == "mulaw":
        # mu-law 256 at 16 kHz, the post's sample-level baseline (Libri-Light is 16 kHz).
        quantizer = "post" if parsed.post_quantizer else "torchaudio"
        return MuLawTokenizer(sample_rate=16_000, quantizer=quantizer).to(device).eval()
    if parsed.kind == "codec":
        # Imported here: the codec trainer pulls in its own dependencies.

        assert parsed.checkpoint is not None
        codec: AudioTokenizer = load_codec_tokenizer(parsed.checkpoint, parsed.num_levels)
        return codec.to(device).eval()
    assert parsed.num_levels is not None
    model = load_mimi(parsed.num_levels + (0 if parsed.semantic else 1), device=device)
    return MimiTokenizer(model, parsed.num_levels, semantic=parsed.semantic).eval()


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
    # moshi and huggingface_hub come with the mimi extra: imported here, not with the module.
    get_mimi = require("moshi.models.loaders", "Mimi", "mimi").get_mimi
    hf_hub_download = require("huggingface_hub", "Mimi", "mimi").hf_hub_download
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
    """The facts about a tokenizer that a token dataset records and its readers rely on.

    A codec preset (`codec:rvq-8`: no trained weights) adds `"trained": false`; no other name
    has the key, so the datasets written before it keep their fingerprints.
    """
    spec: dict[str, Any] = {
        "name": name,
        "sample_rate": tokenizer.sample_rate,
        "frame_rate": tokenizer.frame_rate,
        "num_levels": tokenizer.num_levels,
        "codebook_size": tokenizer.codebook_size,
        "samples_per_frame": tokenizer.samples_per_frame,
        "token_dtype": np.dtype(tokenizer.token_dtype).name,  # "uint8", "uint16", "uint32"
    }
    parsed = parse_tokenizer_name(name)
    if parsed.kind == "codec" and parsed.checkpoint is not None:
        if codec_preset(parsed.checkpoint) is not None:
            spec["trained"] = False
    return spec


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


def codec_preset(checkpoint: str) -> dict[str, Any] | None:
    """What `codec:<checkpoint>` names: None for a train-codec checkpoint folder (it holds a
    `config.json`), else the `build_rvq_codec` arguments of the preset `<checkpoint>` of
    `models.codec.CODEC_PRESETS` (untrained). CodecflowError (one line, the same for `sizes`
    and `tokenize`) when it is neither."""
    if (Path(checkpoint) / "config.json").is_file():
        return None
    if checkpoint not in CODEC_PRESETS:
        raise CodecflowError(
            f"codec {checkpoint!r} is neither a checkpoint folder with a config.json nor a "
            f"preset ({', '.join(sorted(CODEC_PRESETS))})"
        )
    return dict(CODEC_PRESETS[checkpoint])


def load_codec_tokenizer(checkpoint: str, num_levels: int | None = None) -> CodecTokenizer:
    """`codec:<checkpoint>[@<levels>]`: a trained codec as a tokenizer of its first N levels.

    A `<checkpoint>` that is no folder but a preset of `models.codec.CODEC_PRESETS`
    (`codec_preset`) builds that codec untrained, from a fixed seed (the same weights on every
    worker): its codes carry no information (tokenize warns).
    """
    preset = codec_preset(checkpoint)
    if preset is None:
        codec = load_codec(checkpoint)
    else:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            codec = build_rvq_codec(**preset).eval()
    max_levels = codec.quantizer.num_levels
    if num_levels is not None and not 1 <= num_levels <= max_levels:
        raise CodecflowError(f"codec {checkpoint} has {max_levels} levels; asked for {num_levels}")
    return CodecTokenizer(codec, num_levels or max_levels).eval()


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
        gpt_config = GPTConfig(**config["gpt"])
        with torch.device("meta"):  # shapes only: a crafted config.json allocates nothing
            expected = {k: tuple(v.shape) for k, v in GPT(gpt_config).state_dict().items()}
    except (KeyError, TypeError, ValueError, AssertionError) as err:
        raise CodecflowError(
            f"checkpoint {checkpoint}: config.json has no valid GPT ({err!r})"
        ) from None
    # The weights' own header says their shapes: checked before anything is built or loaded.
    _check_shapes(checkpoint, expected, weight_shapes(checkpoint / "model.safetensors"))
    _check_memory(checkpoint, expected, device)
    model = GPT(gpt_config)
    weights = load_weights(checkpoint / "model.safetensors")
    missing, unexpected = model.load_state_dict(weights, strict=False)
    if unexpected or set(missing) - {"wte.weight"}:
        raise CodecflowError(f"checkpoint {checkpoint} does not match its config.json")
    return model.to(device).eval(), config["tokenizer"]


#: The GPTConfig field each dimension of a weight follows, by weight name (the others: n_embd).
_SHAPE_FIELDS = {"wte.weight": ("vocab_size", "n_embd"), "lm_head.weight": ("vocab_size", "n_embd"),
                 "wpe.weight": ("block_size", "n_embd")}  # fmt: skip


def _check_shapes(
    checkpoint: Path, expected: dict[str, tuple[int, ...]], found: dict[str, tuple[int, ...]]
) -> None:
    """CodecflowError naming the config.json field that the weights contradict."""
    tied = {"wte.weight"}  # tied to lm_head.weight: stored once
    missing = sorted(set(expected) - set(found) - tied)
    unexpected = sorted(set(found) - set(expected))
    if missing or unexpected:
        name = (missing or unexpected)[0]
        field = "n_layer" if name.startswith("h.") else "the model's layout"
        raise CodecflowError(
            f"checkpoint {checkpoint}: config.json does not fit model.safetensors ({field}): "
            f"{name} is {'missing from' if missing else 'not expected in'} the weights"
        )
    for name, shape in found.items():
        if shape != expected[name]:
            fields = _SHAPE_FIELDS.get(name, ("n_embd",) * len(shape))
            pairs = list(zip(shape, expected[name], strict=False))
            dim = next((i for i, (a, b) in enumerate(pairs) if a != b), len(pairs))
            raise CodecflowError(
                f"checkpoint {checkpoint}: config.json's {fields[min(dim, len(fields) - 1)]} "
                f"does not fit model.safetensors: {name} is {list(shape)} in the weights, "
                f"{list(expected[name])} by config.json"
            )


def _available_bytes(device: torch.device) -> int | None:
    """Memory a model could take on `device`: free GPU memory, or MemAvailable on the CPU."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _check_memory(
    checkpoint: Path, expected: dict[str, tuple[int, ...]], device: torch.device
) -> None:
    """Refuse a model whose fp32 weights alone exceed the memory `device` has free."""
    need = 4 * sum(math.prod(shape) for shape in expected.values())
    free = _available_bytes(device)
    if free is not None and need > free:
        raise CodecflowError(
            f"checkpoint {checkpoint} needs {need / 2**30:.1f} GiB for its weights, more than "
            f"the {free / 2**30:.1f} GiB free on {device.type}"
        )


#: Both speech models work at 16 kHz: GE2E was trained on 16 kHz mels, pocketsphinx's en-us on
#: 16 kHz.
SPEECH_MODEL_RATE = 16_000


@dataclass(frozen=True)
class Skipped:
    """Why a metric could not be computed (a loader returns this instead of a model)."""

    metric: str
    reason: str  # one line, e.g. "resemblyzer is not installed: No module named 'resemblyzer'"


def _one_line(exc: BaseException) -> str:
    # Reasons end up in one line of a report; some messages (pocketsphinx, torch) span several.
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def import_reason(package: str, exc: BaseException) -> str:
    if isinstance(exc, ModuleNotFoundError):
        return f"{package} is not installed: {' '.join(str(exc).split())}"
    return f"{package} could not be imported: {_one_line(exc)}"


def model_name(distribution: str, suffix: str) -> str:
    # The version makes reports comparable across environments; the name stays even when the
    # package is missing, so a skipped metric still says which model it would have used.
    try:
        return f"{distribution} {metadata.version(distribution)} {suffix}"
    except metadata.PackageNotFoundError:
        return f"{distribution} {suffix}"


@functools.lru_cache(maxsize=1)
def load_voice_encoder() -> Any:
    """resemblyzer's GE2E `VoiceEncoder` on CPU, loaded once per process; `Skipped` if it cannot
    be imported or loaded (the failure is cached too: clear with `load_voice_encoder.cache_clear`).
    """
    try:
        # Importing resemblyzer warns twice about its dependencies, not about anything we do:
        # scipy.ndimage.morphology (resemblyzer) and pkg_resources (webrtcvad).
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*binary_dilation", category=Warning)
            warnings.filterwarnings("ignore", message="pkg_resources is deprecated")
            from resemblyzer import VoiceEncoder
    except Exception as exc:  # any import failure means "skip the metric"
        return Skipped("voice_similarity", import_reason("resemblyzer", exc))
    try:
        return VoiceEncoder(device="cpu", verbose=False)
    except Exception as exc:
        return Skipped(
            "voice_similarity", f"resemblyzer's GE2E model failed to load: {_one_line(exc)}"
        )


@functools.lru_cache(maxsize=1)
def load_recognizer() -> Any:
    """pocketsphinx's `Decoder` with its bundled en-us model at 16 kHz, loaded once per process;
    `Skipped` if it cannot be imported or loaded (cached too: `load_recognizer.cache_clear`)."""
    try:
        from pocketsphinx import Decoder
    except Exception as exc:
        return Skipped("words", import_reason("pocketsphinx", exc))
    try:
        # Its log goes to stderr and says "ERROR" on harmless things (an utterance of a few
        # milliseconds); a failed load still raises, with a generic message.
        return Decoder(samprate=SPEECH_MODEL_RATE, logfn=os.devnull)
    except Exception as exc:
        return Skipped("words", f"pocketsphinx's en-us model failed to load: {_one_line(exc)}")
