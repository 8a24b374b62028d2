"""Size accounting: the post's three dataset sizes reproduced, ours beside them, a measured
report on hand-made shards, tokenizer facts from names and checkpoint folders, the CLI."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import REPO
from safetensors.torch import save_file

from codecflow.models.codec import CODEC_PRESETS, build_rvq_codec, codec_config_dict
from codecflow.schemas.tokenizers import TokenizerNameError
from codecflow.tasks.core.errors import CodecflowError, user_error
from codecflow.tasks.loaders import load_tokenizer, tokenizer_spec
from codecflow.tasks.tokenize.sizes import (
    TokenizerFacts,
    describe_tokenizer,
    facts_from_spec,
    format_size_report,
    format_sizes,
    project_sizes,
    size_report,
    smallest_token_bytes,
)

# (tokenizer, hours, the post's figure in GiB, ours / the post's): 1 000 h of mu-law stored as
# uint8 in the post, 10 000 h of its 8-level codec and of 32-level Mimi stored as int32.
POST_FIGURES = [
    ("mu-law-256", 1_000, 53.6, 1.0),
    ("codec:rvq-8", 10_000, 134.1, 0.5),
    ("mimi_32_rvq", 10_000, 53.6, 0.5),
]


@pytest.mark.parametrize(("name", "hours", "post_gib", "ratio"), POST_FIGURES)
def test_the_posts_three_figures_are_reproduced(
    name: str, hours: float, post_gib: float, ratio: float
) -> None:
    p = project_sizes(describe_tokenizer(name), hours)
    assert p["reference_gib"] == pytest.approx(post_gib, abs=0.1)
    assert p["bytes_int32_reference"] == p["tokens"] * p["reference_token_bytes"]
    # Ours: uint16 halves the codec and Mimi figures, mu-law's uint8 is the post's own layout.
    assert p["bytes"] == p["tokens"] * p["token_bytes"]
    assert p["ratio_vs_reference"] == pytest.approx(ratio)
    assert p["gib"] == pytest.approx(post_gib * ratio, abs=0.1)
    table = format_sizes(p)
    assert f"{p['bytes']:,}" in table and f"{p['bytes_int32_reference']:,}" in table
    assert f"{p['reference_gib']:.1f} GiB" in table and f"{p['gib']:.1f} GiB" in table


def test_projection_numbers_by_hand() -> None:
    p = project_sizes(describe_tokenizer("codec:rvq-8"), 10_000)
    assert p["frames"] == 10_000 * 3600 * 125 == 4_500_000_000
    assert p["tokens"] == 36_000_000_000
    assert p["bytes"] == 72_000_000_000 and p["bytes_int32_reference"] == 144_000_000_000
    assert p["token_bitrate_bps"] == 8 * 10 * 125  # 10 kbit/s
    assert p["tokens_per_second"] == 1000
    assert p["compression_vs_pcm16"] == pytest.approx(32_000 / 2_000)  # 2 000 B/s of tokens
    mulaw = project_sizes(describe_tokenizer("mulaw"), 1_000)
    assert mulaw["tokens"] == mulaw["bytes"] == mulaw["bytes_int32_reference"] == 57_600_000_000
    assert mulaw["token_bitrate_bps"] == 128_000 and mulaw["compression_vs_pcm16"] == 2.0
    # Arrow's measured overhead is added per hour to ours only.
    with_overhead = project_sizes(describe_tokenizer("mimi_8_rvq"), 2, overhead_bytes_per_hour=50)
    assert with_overhead["bytes"] == 2 * 3600 * 12.5 * 8 * 2 + 100
    assert with_overhead["bytes_int32_reference"] == 2 * 3600 * 12.5 * 8 * 4
    assert project_sizes(describe_tokenizer("mulaw"), 0)["bytes"] == 0


def test_describe_tokenizer_by_name() -> None:
    assert describe_tokenizer("mu-law-256") == TokenizerFacts(
        "mu-law-256", 16_000, 16_000, 1, 256, 1
    )
    assert describe_tokenizer("mimi_8_rvq") == TokenizerFacts(
        "mimi_8_rvq", 24_000, 12.5, 8, 2048, 2
    )
    assert describe_tokenizer("mu-law-256-post") == TokenizerFacts(
        "mu-law-256-post", 16_000, 16_000, 1, 256, 1
    )
    nosemantic = describe_tokenizer("mimi_8_rvq_nosemantic")
    assert nosemantic.num_levels == 8 and nosemantic.codebook_size == 2048  # levels 1..8
    assert describe_tokenizer("mimi_31_rvq_nosemantic").num_levels == 31
    assert describe_tokenizer("codec:rvq-16@4") == TokenizerFacts(
        "codec:rvq-16@4", 16_000, 125.0, 4, 1024, 2
    )
    assert describe_tokenizer("codec:post@4") == TokenizerFacts(  # the post's codec preset
        "codec:post@4", 16_000, 125.0, 4, 1024, 2
    )
    assert describe_tokenizer("codec:tiny-8").codebook_size == 64
    assert describe_tokenizer("codec:tiny-8").token_bytes == 1
    assert [smallest_token_bytes(n) for n in (2, 256, 257, 65_536, 65_537)] == [1, 1, 2, 2, 4]


def test_describe_tokenizer_reads_a_checkpoint_config(tmp_path: Path) -> None:
    checkpoint = tmp_path / "ckpt"
    checkpoint.mkdir()
    codec = {"num_levels": 16, "codebook_size": 4096, "n_blocks": 6, "channels": 32}
    (checkpoint / "config.json").write_text(json.dumps({"codec": codec, "sample_rate": 16_000}))
    facts = describe_tokenizer(f"codec:{checkpoint}@3")
    assert facts == TokenizerFacts(f"codec:{checkpoint}@3", 16_000, 250.0, 3, 4096, 2)
    assert describe_tokenizer(f"codec:{checkpoint}").num_levels == 16
    # A folder named like a preset wins over the preset.
    (tmp_path / "rvq-8").mkdir()
    (tmp_path / "rvq-8" / "config.json").write_text(json.dumps({"codec": codec}))
    assert describe_tokenizer(f"codec:{tmp_path / 'rvq-8'}").num_levels == 16


def test_describe_matches_the_loaded_tokenizer(tmp_path: Path) -> None:
    """The facts from the name equal those a loaded tokenizer records in its dataset spec."""
    torch.manual_seed(0)
    codec = build_rvq_codec(**CODEC_PRESETS["tiny-8"])
    checkpoint = tmp_path / "checkpoint"
    checkpoint.mkdir()
    save_file(
        {k: v.contiguous() for k, v in codec.state_dict().items()},
        str(checkpoint / "model.safetensors"),
    )
    config = {"codec": codec_config_dict(codec), "sample_rate": 16_000}
    (checkpoint / "config.json").write_text(json.dumps(config))
    (checkpoint / "metrics.json").write_text("{}")
    for name in ("mu-law-256", f"codec:{checkpoint}", f"codec:{checkpoint}@2"):
        spec = tokenizer_spec(name, load_tokenizer(name))
        assert facts_from_spec(spec) == describe_tokenizer(name)


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("wav2vec", "unknown tokenizer 'wav2vec'"),
        ("mimi_33_rvq", "K must be in 1..32"),
        ("mimi_99_rvq", "K must be in 1..32"),
        ("codec:x@0", "levels after '@' must be an integer >= 1"),
        ("codec:no-such-codec", "neither a checkpoint folder with a config.json nor a preset"),
        ("codec:rvq-4@5", "codec rvq-4 has 4 levels; asked for 5"),
    ],
)
def test_describe_tokenizer_errors(name: str, message: str) -> None:
    """A malformed name is the grammar's ValueError (schemas/ cannot raise CodecflowError), which
    `user_error` makes the CodecflowError the CLI prints; an unknown codec is one already."""
    with pytest.raises((CodecflowError, TokenizerNameError)) as info:
        describe_tokenizer(name)
    error = user_error(info.value)
    assert isinstance(error, CodecflowError) and re.search(message, str(error))
    assert "\n" not in str(error)


def test_errors_on_a_broken_config_and_bad_hours(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"sample_rate": 16_000}))
    with pytest.raises(CodecflowError, match="is not a train-codec config.json"):
        describe_tokenizer(f"codec:{tmp_path}")
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(CodecflowError, match="is not a train-codec config.json"):
        describe_tokenizer(f"codec:{tmp_path}")
    for hours in (-1.0, float("nan"), float("inf")):
        with pytest.raises(CodecflowError, match="hours must be"):
            project_sizes(describe_tokenizer("mulaw"), hours)


SPEC = {
    "name": "codec:runs/x/checkpoint@2",
    "sample_rate": 16_000,
    "frame_rate": 125.0,
    "num_levels": 2,
    "codebook_size": 1024,
    "samples_per_frame": 128,
    "token_dtype": "uint16",
}
SHARDS = [
    # 2 bytes per token plus an overhead of 400 (train) and 200 (val) bytes per shard.
    {"name": "train-00000", "split": "train", "rows": 3, "frames": 1000, "tokens": 2000,
     "bytes": 4400, "audio_seconds": 8.0, "webdataset_bytes": 9000},
    {"name": "train-00001", "split": "train", "rows": 2, "frames": 500, "tokens": 1000,
     "bytes": 2600, "audio_seconds": 4.0},
    {"name": "val-00000", "split": "val", "rows": 1, "frames": 250, "tokens": 500,
     "bytes": 1200, "audio_seconds": 2.0},
]  # fmt: skip
OLD_KEYS = {
    "segments",
    "audio_hours",
    "frames",
    "tokens",
    "bytes",
    "bytes_per_audio_hour",
    "tokens_per_second",
    "compression_vs_pcm16",
}


def test_size_report_by_hand() -> None:
    report = size_report(SHARDS, SPEC, source_audio_bytes=41_000)
    assert set(report) == {"tokenizer", "train", "val", "total"}
    assert report["tokenizer"] == SPEC
    train, val, total = report["train"], report["val"], report["total"]
    for summary in (train, val, total):
        assert OLD_KEYS <= set(summary)
    assert (train["segments"], train["frames"], train["tokens"], train["bytes"]) == (
        5,
        1500,
        3000,
        7000,
    )
    assert train["audio_hours"] == pytest.approx(12 / 3600)
    assert train["bytes_per_audio_hour"] == pytest.approx(7000 * 300)
    assert train["tokens_per_second"] == pytest.approx(250)  # 125 frames/s x 2 levels
    assert train["compression_vs_pcm16"] == pytest.approx(12 * 32_000 / 7000)
    assert train["token_bitrate_bps"] == pytest.approx(2500)  # 250 tokens/s x 10 bits
    assert train["int32_reference_bytes"] == 12_000
    assert train["ratio_vs_int32_reference"] == pytest.approx(7000 / 12_000)
    assert train["webdataset_bytes"] == 9000 and val["webdataset_bytes"] == 0
    assert "compression_vs_source_flac" not in train
    assert (val["segments"], val["tokens"], val["bytes"], val["int32_reference_bytes"]) == (
        1,
        500,
        1200,
        2000,
    )
    assert (total["segments"], total["frames"], total["tokens"], total["bytes"]) == (
        6,
        1750,
        3500,
        8200,
    )
    assert total["webdataset_bytes"] == 9000
    assert total["int32_reference_bytes"] == 14_000
    assert total["compression_vs_source_flac"] == pytest.approx(41_000 / 8200)
    projections = {p["hours"]: p for p in total["projections"]}
    assert sorted(projections) == [1_000, 10_000, 60_000]
    # Ours at the measured 8 200 B per 14 s; the post's at 250 tokens/s x 4 B = 3.6 MB per hour.
    assert projections[1_000]["bytes"] == round(8200 / 14 * 3600 * 1000)
    assert projections[1_000]["int32_reference_bytes"] == 3_600_000_000
    assert projections[60_000]["int32_reference_gib"] == pytest.approx(216e9 / 2**30)
    json.dumps(report)  # JSON-friendly


def test_size_report_without_optional_figures_and_for_mulaw() -> None:
    spec = {**SPEC, "name": "mu-law-256", "frame_rate": 16_000.0, "num_levels": 1}
    spec.update(codebook_size=256, samples_per_frame=1, token_dtype="uint8")
    shards = [{**s, "tokens": s["frames"]} for s in SHARDS]
    for s in shards:
        s.pop("webdataset_bytes", None)
    report = size_report(shards, spec)
    total = report["total"]
    assert "webdataset_bytes" not in total and "compression_vs_source_flac" not in total
    # The post stored mu-law as uint8: its layout is one byte per token, like ours.
    assert total["int32_reference_bytes"] == total["tokens"] == 1750
    empty = size_report([], spec)
    assert empty["total"]["bytes"] == 0 and empty["total"]["ratio_vs_int32_reference"] == 0.0
    assert empty["total"]["projections"][0]["bytes"] == 0


def test_format_size_report_is_one_screen() -> None:
    text = format_size_report(size_report(SHARDS, SPEC, source_audio_bytes=41_000))
    lines = text.splitlines()
    assert len(lines) < 25
    assert any(line.startswith("train ") for line in lines)
    assert any(line.startswith("total ") for line in lines)
    assert "post" in lines[1] and "ours" in lines[1]
    assert "webdataset" in text and "source FLAC" in text
    assert "60,000 h" in text and "201.2 GiB" in text  # 60 000 h at 3.6 MB/h in int32


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "codecflow", "sizes", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_cli_sizes_json_and_table() -> None:
    done = _cli("--tokenizer", "codec:rvq-8", "--hours", "10000", "--json")
    assert done.returncode == 0, done.stderr
    projection = json.loads(done.stdout)
    assert projection["bytes"] == 72_000_000_000
    assert projection["bytes_int32_reference"] == 144_000_000_000
    assert projection["reference_gib"] == pytest.approx(134.1, abs=0.1)
    table = _cli("--tokenizer", "mimi_32_rvq", "--hours", "10000")
    assert table.returncode == 0, table.stderr
    assert "53.6 GiB" in table.stdout and "26.8 GiB" in table.stdout


def test_cli_sizes_bad_name_is_one_error_line() -> None:
    done = _cli("--tokenizer", "codec:no-such-codec", "--hours", "1")
    assert done.returncode == 2
    assert done.stdout == ""
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: codec 'no-such-codec'")
