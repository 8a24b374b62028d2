"""Tokenizer names, the loader by name, and Mimi's weights from a local Hugging Face cache.

No network: the Mimi tests write random Mimi weights into a temporary Hub cache, laid out as
huggingface_hub lays it out, and set HF_HUB_OFFLINE=1.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch
from moshi.models.loaders import get_mimi
from safetensors.torch import save_file
from torch import Tensor

from models.mimi import MimiTokenizer
from models.mulaw import MuLawTokenizer
from models.tokenizer import AudioTokenizer
from schemas.configs import TOKENIZER_NAME_PATTERN
from tasks import loaders
from tasks.core.errors import CodecflowError
from tasks.loaders import (
    MIMI_FILE,
    MIMI_REPO,
    TOKENIZER_NAMES,
    TokenizerName,
    load_mimi,
    load_tokenizer,
    parse_tokenizer_name,
    tokenizer_spec,
)

COMMIT = "0123456789abcdef0123456789abcdef01234567"

ACCEPTED = {
    "mu-law-256": TokenizerName("mulaw"),
    "mulaw": TokenizerName("mulaw"),
    "mu-law-256-post": TokenizerName("mulaw", post_quantizer=True),
    "codec:runs/x/codec/checkpoint@4": TokenizerName("codec", 4, "runs/x/codec/checkpoint"),
    "codec:runs/x/codec/checkpoint": TokenizerName("codec", None, "runs/x/codec/checkpoint"),
    "codec:my-codec@12": TokenizerName("codec", 12, "my-codec"),
    "mimi_1_rvq": TokenizerName("mimi", 1),
    "mimi_8_rvq": TokenizerName("mimi", 8),
    "mimi_32_rvq": TokenizerName("mimi", 32),
    "mimi_1_rvq_nosemantic": TokenizerName("mimi", 1, semantic=False),
    "mimi_31_rvq_nosemantic": TokenizerName("mimi", 31, semantic=False),
}


@pytest.mark.parametrize("name", sorted(ACCEPTED))
def test_parse_accepts_every_form(name: str) -> None:
    assert parse_tokenizer_name(name) == ACCEPTED[name]
    # The config schema lets the same names through.
    assert re.fullmatch(TOKENIZER_NAME_PATTERN, name)


@pytest.mark.parametrize(
    "name",
    [
        "mimi_0_rvq",
        "mimi_33_rvq",
        "mimi_0_rvq_nosemantic",
        "mimi_32_rvq_nosemantic",  # levels 1..32 would need a 33-level encode
        "mimi_08_rvq",
        "mimi_8_rvq_semantic",
        "mimi_8",
        "codec:",
        "codec:x@0",
        "codec:x@",
        "codec:@3",
        "codec:x@two",
        "codec:a@b@3",
        "foo",
        "MULAW",
        "",
    ],
)
def test_parse_rejects_malformed_names_in_one_line(name: str) -> None:
    with pytest.raises(CodecflowError) as info:
        parse_tokenizer_name(name)
    message = str(info.value)
    assert "\n" not in message
    assert repr(name) in message
    for form in ("mu-law-256", "codec:<checkpoint>[@<levels>]", "mimi_<K>_rvq_nosemantic"):
        assert form in message
    with pytest.raises(CodecflowError):
        load_tokenizer(name)


def test_names_list_the_accepted_forms() -> None:
    assert "mu-law-256" in TOKENIZER_NAMES and "mulaw" in TOKENIZER_NAMES
    assert any(n.startswith("codec:") for n in TOKENIZER_NAMES)
    assert {"mimi_<K>_rvq", "mimi_<K>_rvq_nosemantic"} <= set(TOKENIZER_NAMES)


@pytest.mark.parametrize("name", ["mu-law-256", "mulaw", "mu-law-256-post"])
def test_load_mulaw_and_its_alias(name: str) -> None:
    tok = load_tokenizer(name)
    assert isinstance(tok, MuLawTokenizer) and not tok.training
    assert tok.quantizer == ("post" if name.endswith("-post") else "torchaudio")
    assert (tok.sample_rate, tok.num_levels, tok.codebook_size) == (16_000, 1, 256)
    assert tok.token_dtype is np.uint8
    spec = tokenizer_spec(name, tok)
    assert spec == {
        "name": name,
        "sample_rate": 16_000,
        "frame_rate": 16_000.0,
        "num_levels": 1,
        "codebook_size": 256,
        "samples_per_frame": 1,
        "token_dtype": "uint8",
    }


class _Codes(AudioTokenizer):
    """A tokenizer double with a chosen codebook size (only the properties are used)."""

    def __init__(self, codebook_size: int) -> None:
        super().__init__()
        self._size = codebook_size

    sample_rate = property(lambda self: 8)  # type: ignore[assignment]
    frame_rate = property(lambda self: 2.0)  # type: ignore[assignment]
    num_levels = property(lambda self: 3)  # type: ignore[assignment]
    codebook_size = property(lambda self: self._size)  # type: ignore[assignment]

    def encode(self, wav: Tensor) -> Tensor:
        raise NotImplementedError

    def decode(self, codes: Tensor) -> Tensor:
        raise NotImplementedError


@pytest.mark.parametrize(
    ("size", "dtype"),
    [(2, np.uint8), (256, np.uint8), (257, np.uint16), (1024, np.uint16), (2048, np.uint16)]
    + [(1 << 16, np.uint16), ((1 << 16) + 1, np.uint32), (1 << 32, np.uint32)],
)
def test_token_dtype_is_the_smallest_unsigned(size: int, dtype: type) -> None:
    tok = _Codes(size)
    assert tok.token_dtype is dtype
    assert tokenizer_spec("x", tok)["token_dtype"] == np.dtype(dtype).name


def test_codec_names_go_to_the_codec_loader(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[str, int | None]] = []

    def load_codec_tokenizer(path: str, levels: int | None) -> AudioTokenizer:
        calls.append((path, levels))
        return MuLawTokenizer()

    monkeypatch.setattr(loaders, "load_codec_tokenizer", load_codec_tokenizer)
    assert not load_tokenizer("codec:runs/x/codec/checkpoint@4").training
    load_tokenizer("codec:other")
    assert calls == [("runs/x/codec/checkpoint", 4), ("other", None)]


# --- Mimi from a local Hub cache -----------------------------------------------------------------


@pytest.fixture(scope="module")
def mimi_weights() -> dict[str, Tensor]:
    """The state of an untrained Mimi (random weights), as a checkpoint would hold it."""
    with torch.random.fork_rng():
        torch.manual_seed(1)
        state = get_mimi(None, device="cpu", num_codebooks=8).state_dict()
    # Codebooks are zeros when untrained: give them values so that equality means something.
    for key, value in state.items():
        if key.endswith("embedding_sum"):
            state[key] = torch.randn(value.shape, generator=torch.Generator().manual_seed(2))
    return {k: v.contiguous() for k, v in state.items()}


@pytest.fixture(scope="module")
def hub_cache(tmp_path_factory: pytest.TempPathFactory, mimi_weights: dict[str, Tensor]) -> Path:
    """A Hub cache holding Mimi's file, in huggingface_hub's layout (a real cache has blobs/ and
    snapshot symlinks to them; a plain file in the snapshot resolves the same)."""
    cache = tmp_path_factory.mktemp("hf") / "hub"
    repo_dir = cache / f"models--{MIMI_REPO.replace('/', '--')}"
    snapshot = repo_dir / "snapshots" / COMMIT
    snapshot.mkdir(parents=True)
    save_file(mimi_weights, str(snapshot / MIMI_FILE))
    (repo_dir / "refs").mkdir()
    (repo_dir / "refs" / "main").write_text(COMMIT)
    return cache


def _use_cache(monkeypatch: pytest.MonkeyPatch, cache: Path) -> None:
    monkeypatch.setenv("HF_HOME", str(cache.parent / "home"))
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("CODECFLOW_MIMI_REPO", raising=False)
    monkeypatch.delenv("CODECFLOW_MIMI_FILE", raising=False)


def test_load_mimi_from_a_local_cache_offline(
    monkeypatch: pytest.MonkeyPatch, hub_cache: Path, mimi_weights: dict[str, Tensor]
) -> None:
    _use_cache(monkeypatch, hub_cache)
    model = load_mimi(8)
    assert model.num_codebooks == 8 and not model.training
    loaded = model.state_dict()
    assert loaded.keys() == mimi_weights.keys()
    for key, value in mimi_weights.items():
        assert torch.equal(loaded[key], value), key


def test_load_tokenizer_builds_mimi_nosemantic(
    monkeypatch: pytest.MonkeyPatch, hub_cache: Path
) -> None:
    _use_cache(monkeypatch, hub_cache)
    tok = load_tokenizer("mimi_4_rvq_nosemantic")
    assert isinstance(tok, MimiTokenizer) and not tok.training
    assert (tok.num_levels, tok.encode_depth, tok.semantic) == (4, 5, False)  # levels 1..4
    spec = tokenizer_spec("mimi_4_rvq_nosemantic", tok)
    assert spec["codebook_size"] == 2048 and spec["token_dtype"] == "uint16"
    assert (spec["sample_rate"], spec["frame_rate"], spec["samples_per_frame"]) == (
        24_000,
        12.5,
        1920,
    )
    assert tok.encode(torch.zeros(1, 1, 1920)).shape == (1, 4, 1)


def test_missing_cache_offline_is_one_line(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    _use_cache(monkeypatch, tmp_path / "empty")
    with pytest.raises(CodecflowError) as info:
        load_mimi(8)
    message = str(info.value)
    assert "\n" not in message
    assert MIMI_REPO in message and MIMI_FILE in message
    assert f"huggingface-cli download {MIMI_REPO} {MIMI_FILE}" in message and "HF_HOME" in message
    with pytest.raises(CodecflowError, match=re.escape(MIMI_FILE)):
        load_tokenizer("mimi_8_rvq")
    # The repository and file can be overridden from the environment.
    monkeypatch.setenv("CODECFLOW_MIMI_REPO", "someone/mimi-fork")
    monkeypatch.setenv("CODECFLOW_MIMI_FILE", "mimi-elsewhere.safetensors")
    with pytest.raises(CodecflowError, match="mimi-elsewhere.safetensors.*someone/mimi-fork"):
        load_tokenizer("mimi_8_rvq")


def test_corrupt_weights_are_one_line(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    cache = tmp_path / "hub"
    repo_dir = cache / "models--someone--broken"
    (repo_dir / "snapshots" / COMMIT).mkdir(parents=True)
    (repo_dir / "snapshots" / COMMIT / "mimi.safetensors").write_bytes(b"not safetensors")
    (repo_dir / "refs").mkdir()
    (repo_dir / "refs" / "main").write_text(COMMIT)
    _use_cache(monkeypatch, cache)
    with pytest.raises(CodecflowError, match="cannot load the Mimi weights") as info:
        load_mimi(2, repo="someone/broken", filename="mimi.safetensors")
    assert "\n" not in str(info.value)
