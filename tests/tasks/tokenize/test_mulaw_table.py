"""The mu-law lookup table of the tokenize stage against the model's formula, on every int16 value
and on real audio, and the torch-free spec against the loaded tokenizer's."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.ipc as ipc
import pyarrow.parquet as pq
import pytest
import torch

from codecflow.models.mulaw import MuLawTokenizer, mulaw_encode, mulaw_encode_post
from codecflow.schemas.configs import TokenizeSettings
from codecflow.schemas.tables import MANIFEST_AUDIO_ROOT_KEY
from codecflow.tasks.data.manifest import read_segment_audio, read_segment_pcm16
from codecflow.tasks.data.token_dataset import read_dataset_info
from codecflow.tasks.loaders import load_tokenizer, tokenizer_spec
from codecflow.tasks.tokenize.finalize import tokenize_manifest
from codecflow.tasks.tokenize.mulaw_table import PCM16_SCALE, encode_pcm16, mulaw_spec, pcm16_table

ALL_INT16 = np.arange(-32768, 32768, dtype=np.int32).astype(np.int16)  # [65536]


@pytest.mark.parametrize(
    ("name", "formula"), [("mu-law-256", mulaw_encode), ("mu-law-256-post", mulaw_encode_post)]
)
def test_the_table_is_the_models_formula_on_every_int16_value(name: str, formula) -> None:
    x = torch.from_numpy(ALL_INT16.astype(np.float32) / np.float32(PCM16_SCALE))  # what sf reads
    expected = formula(x).numpy()  # [65536] int64, the model's float32 tokens
    got = encode_pcm16(ALL_INT16, pcm16_table(name))[0]
    np.testing.assert_array_equal(got, expected)
    # In any order and at any offset (vectorised kernels and their scalar tails alike).
    order = np.random.default_rng(0).permutation(ALL_INT16.size)
    np.testing.assert_array_equal(formula(x[order]).numpy(), got[order])
    np.testing.assert_array_equal(formula(x[3:]).numpy(), got[3:])
    assert set(np.unique(got)) == set(range(256))  # every token is reached


def test_the_quantisers_differ_where_the_module_says() -> None:
    """The post's token is torchaudio's + 1 on about half the samples, never anything else: the
    two tables are not one table twice."""
    ours, post = pcm16_table("mu-law-256"), pcm16_table("mu-law-256-post")
    diff = post.astype(int) - ours.astype(int)
    assert set(np.unique(diff)) == {0, 1}
    assert 0.3 < np.mean(diff) < 0.7
    assert pcm16_table("mulaw") is pcm16_table("mulaw")  # cached, read-only
    assert not pcm16_table("mulaw").flags.writeable


@pytest.mark.parametrize("name", ["mu-law-256", "mulaw", "mu-law-256-post"])
def test_the_torch_free_spec_is_the_loaded_tokenizers(name: str) -> None:
    spec = mulaw_spec(name)
    expected = tokenizer_spec(name, load_tokenizer(name))
    assert spec == expected
    assert json.dumps(spec, sort_keys=True) == json.dumps(expected, sort_keys=True)  # types too


def test_pcm16_reads_are_the_float_reads_times_32768(tiny_manifest: Path) -> None:
    table = pq.read_table(tiny_manifest)
    root = str(tiny_manifest.parent / table.schema.metadata[MANIFEST_AUDIO_ROOT_KEY].decode())
    rows = table.to_pylist()
    for row in rows:
        pcm = read_segment_pcm16(root, row)
        assert pcm is not None and pcm.dtype == np.int16
        audio = read_segment_audio(root, row)
        np.testing.assert_array_equal(pcm.astype(np.float32) / np.float32(PCM16_SCALE), audio)


def test_dataset_codes_equal_the_models_codes_on_real_audio(
    tiny_manifest: Path, tiny_dataset: Path
) -> None:
    """Every stored code of the tokenize stage's dataset (the table path) is the code
    MuLawTokenizer gives the segment's float audio."""
    table = pq.read_table(tiny_manifest)
    root = str(tiny_manifest.parent / table.schema.metadata[MANIFEST_AUDIO_ROOT_KEY].decode())
    rows = {r["segment_id"]: r for r in table.to_pylist()}
    tokenizer = MuLawTokenizer(16_000)
    info = read_dataset_info(tiny_dataset)
    seen = 0
    for shard in info.shards:
        with pa.memory_map(str(tiny_dataset / shard.file)) as source:
            for stored in ipc.open_stream(source).read_all().to_pylist():
                audio = torch.from_numpy(read_segment_audio(root, rows[stored["segment_id"]]))
                expected = tokenizer.encode(audio.view(1, 1, -1))[0].numpy()  # [K=1, F]
                np.testing.assert_array_equal(np.asarray(stored["codes"]), expected)
                seen += 1
    assert seen == len(rows)


def test_a_24_bit_file_takes_the_models_path(tmp_path: Path, tiny_manifest: Path) -> None:
    """Not 16-bit PCM: no table (it would truncate), the float read and the model, same codes."""
    import soundfile as sf

    table = pq.read_table(tiny_manifest)
    root = tiny_manifest.parent / table.schema.metadata[MANIFEST_AUDIO_ROOT_KEY].decode()
    row = table.slice(0, 1).to_pylist()[0]
    audio, rate = sf.read(root / row["source_path"], dtype="float32")
    noise = np.random.default_rng(0).standard_normal(audio.size).astype(np.float32) * 1e-4
    copy = tmp_path / "audio" / row["source_path"]
    copy.parent.mkdir(parents=True)
    sf.write(copy, audio + noise, rate, subtype="PCM_24")
    assert read_segment_pcm16(str(tmp_path / "audio"), row) is None
    metadata = {MANIFEST_AUDIO_ROOT_KEY: b"audio"}
    pq.write_table(table.slice(0, 1).replace_schema_metadata(metadata), tmp_path / "m.parquet")
    record = tokenize_manifest(tmp_path / "m.parquet", tmp_path / "ds", TokenizeSettings())
    info = read_dataset_info(record.path)
    with pa.memory_map(str(tmp_path / "ds" / info.shards[0].file)) as source:
        stored = ipc.open_stream(source).read_all().to_pylist()[0]["codes"]  # [K=1][F]
    wav = torch.from_numpy(read_segment_audio(str(tmp_path / "audio"), row)).view(1, 1, -1)
    expected = MuLawTokenizer(16_000).encode(wav)[0, 0].numpy()
    np.testing.assert_array_equal(np.asarray(stored[0]), expected)
    table16 = encode_pcm16((wav[0, 0].numpy() * PCM16_SCALE).astype(np.int16), pcm16_table("mulaw"))
    assert not np.array_equal(table16[0], expected)  # the 24-bit detail matters: the test bites


def test_a_mulaw_run_imports_no_torch(tiny_manifest: Path, tmp_path: Path) -> None:
    """Start-up: a mu-law tokenize of 16-bit PCM never imports torch (seconds on a busy
    machine)."""
    code = (
        "import sys; from codecflow.schemas.configs import TokenizeSettings; "
        "from codecflow.tasks.tokenize.finalize import tokenize_manifest; "
        "tokenize_manifest(sys.argv[1], sys.argv[2], TokenizeSettings()); "
        "print(sorted(m for m in ('torch', 'torchaudio', 'moshi') if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(tiny_manifest), str(tmp_path / "ds")],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    ).stdout
    assert out.strip().splitlines()[-1] == "[]"
    assert (tmp_path / "ds" / "dataset.json").exists()
