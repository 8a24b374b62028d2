"""Tokenizer names, the loader by name, and Mimi's weights from a local Hugging Face cache.

No network: the Mimi tests write random Mimi weights into a temporary Hub cache, laid out as
huggingface_hub lays it out, and set HF_HUB_OFFLINE=1.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from moshi.models.loaders import get_mimi
from safetensors.torch import save_file
from torch import Tensor

from codecflow.models.codec_tokenizer import CodecTokenizer
from codecflow.models.mimi import MimiTokenizer
from codecflow.models.mulaw import MuLawTokenizer
from codecflow.models.tokenizer import AudioTokenizer
from codecflow.schemas.configs import TokenizeSettings
from codecflow.schemas.tokenizers import TokenizerNameError
from codecflow.tasks import loaders
from codecflow.tasks.core.errors import CodecflowError, user_error
from codecflow.tasks.loaders import (
    MIMI_FILE,
    MIMI_REPO,
    load_mimi,
    load_tokenizer,
    tokenizer_spec,
)
from codecflow.tasks.tokenize.sizes import describe_tokenizer, facts_from_spec

COMMIT = "0123456789abcdef0123456789abcdef01234567"


@pytest.mark.parametrize("name", ["mimi_99_rvq", "mimi_32_rvq_nosemantic", "codec:", "foo"])
def test_load_refuses_a_malformed_name_in_one_line(name: str) -> None:
    """The grammar's refusal (schemas/tokenizers.py, a ValueError), as the CLI shows it."""
    with pytest.raises(TokenizerNameError) as info:
        load_tokenizer(name)
    error = user_error(info.value)
    assert isinstance(error, CodecflowError) and str(error) == str(info.value)
    assert "\n" not in str(error) and repr(name) in str(error)


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
    assert tokenizer_spec("mu-law-256", tok)["token_dtype"] == np.dtype(dtype).name


def test_codec_names_go_to_the_codec_loader(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[str, int | None]] = []

    def load_codec_tokenizer(path: str, levels: int | None) -> AudioTokenizer:
        calls.append((path, levels))
        return MuLawTokenizer()

    monkeypatch.setattr(loaders, "load_codec_tokenizer", load_codec_tokenizer)
    assert not load_tokenizer("codec:runs/x/codec/checkpoint@4").training
    load_tokenizer("codec:other")
    assert calls == [("runs/x/codec/checkpoint", 4), ("other", None)]


# --- codec presets: untrained, the same names as `codecflow sizes` --------------------------------


def test_a_codec_preset_loads_untrained_and_deterministic() -> None:
    torch.manual_seed(123)  # the global RNG does not decide the preset's weights
    tok = load_tokenizer("codec:rvq-8@4")
    torch.manual_seed(456)
    again = load_tokenizer("codec:rvq-8@4")
    assert isinstance(tok, CodecTokenizer) and not tok.training
    assert (tok.num_levels, tok.codebook_size, tok.frame_rate) == (4, 1024, 125.0)
    for (key, a), b in zip(tok.state_dict().items(), again.state_dict().values(), strict=True):
        assert torch.equal(a, b), key
    spec = tokenizer_spec("codec:rvq-8@4", tok)
    assert spec["trained"] is False
    assert facts_from_spec(spec) == describe_tokenizer("codec:rvq-8@4")  # sizes agree
    codes = tok.encode(torch.zeros(1, 1, 16_000))
    assert codes.shape == (1, 4, 125)


def test_a_missing_codec_is_the_same_line_for_sizes_and_tokenize(tmp_path: Path) -> None:
    name = f"codec:{tmp_path / 'absent'}@2"
    with pytest.raises(CodecflowError) as loading:
        load_tokenizer(name)
    with pytest.raises(CodecflowError) as sizing:
        describe_tokenizer(name)
    assert str(loading.value) == str(sizing.value)
    assert "\n" not in str(loading.value) and str(tmp_path / "absent") in str(loading.value)
    assert "neither a checkpoint folder with a config.json nor a preset" in str(loading.value)


def test_codec_rvq8_tokenizes_and_sizes_agree(
    tiny_manifest: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """`codec:rvq-8` works in tokenize as in sizes: the untrained preset, a warning, and the
    dataset's spec saying so; what it measured is what `describe_tokenizer` projects."""
    import json

    from codecflow.tasks.tokenize.finalize import tokenize_manifest

    with caplog.at_level(logging.WARNING, logger="codecflow.tokenize"):
        record = tokenize_manifest(
            str(tiny_manifest), tmp_path / "tokens", TokenizeSettings(tokenizer="codec:rvq-8")
        )
    warnings = [r.getMessage() for r in caplog.records if "no trained weights" in r.getMessage()]
    assert warnings == [
        "codec preset rvq-8 has no trained weights: its codes carry no information; train one "
        "with `codecflow train-codec`"
    ]
    info = json.loads((Path(record.path) / "dataset.json").read_text())
    spec = info["tokenizer"]
    assert spec["name"] == "codec:rvq-8" and spec["trained"] is False
    facts = describe_tokenizer("codec:rvq-8")
    assert facts_from_spec(spec) == facts
    assert (facts.num_levels, facts.frame_rate, facts.token_bytes) == (8, 125.0, 2)


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


def _config_changed(checkpoint: Path, tmp_path: Path, **gpt: object) -> Path:
    """A copy of `checkpoint` whose config.json states other GPT fields."""
    import json
    import shutil

    copy = Path(shutil.copytree(checkpoint, tmp_path / "checkpoint"))
    config = json.loads((copy / "config.json").read_text())
    config["gpt"].update(gpt)
    (copy / "config.json").write_text(json.dumps(config))
    return copy


def test_a_config_that_does_not_fit_its_weights_names_the_field(
    tiny_checkpoint: Path, tmp_path: Path
) -> None:
    """Checked against the weights' header before any model is built (issue 23: a changed
    vocab_size was `RuntimeError ... size mismatch for lm_head.weight`)."""
    vocab = _config_changed(tiny_checkpoint, tmp_path / "v", vocab_size=300)
    with pytest.raises(CodecflowError, match=r"config\.json's vocab_size does not fit "
                       r"model\.safetensors: lm_head\.weight is \[\d+, 32\] in the weights, "
                       r"\[300, 32\] by config\.json$"):  # fmt: skip
        loaders.load_checkpoint(vocab, torch.device("cpu"))
    layers = _config_changed(tiny_checkpoint, tmp_path / "l", n_layer=3)
    with pytest.raises(CodecflowError, match=r"\(n_layer\): h\.2\..* is missing from the weights"):
        loaders.load_checkpoint(layers, torch.device("cpu"))


def test_a_crafted_config_allocates_nothing_before_it_is_refused(
    tiny_checkpoint: Path, tmp_path: Path
) -> None:
    """A config.json stating a model of ~13 TB (64 layers x 65 536 wide) is refused from the
    header, without allocating it (a real build would exhaust memory)."""
    huge = _config_changed(tiny_checkpoint, tmp_path, n_layer=64, n_embd=65536, n_head=256)
    with pytest.raises(CodecflowError, match=r"does not fit model\.safetensors"):
        loaders.load_checkpoint(huge, torch.device("cpu"))


def test_a_model_over_the_free_memory_is_refused(
    tiny_checkpoint: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(loaders, "_available_bytes", lambda device: 1000)
    with pytest.raises(CodecflowError, match=r"GiB for its weights, more than the 0\.0 GiB free"):
        loaders.load_checkpoint(tiny_checkpoint, torch.device("cpu"))
    monkeypatch.undo()
    model, _ = loaders.load_checkpoint(tiny_checkpoint, torch.device("cpu"))
    assert model.config.n_embd == 32
