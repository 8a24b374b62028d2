"""The `codecflow` command: overrides, output lines, and one-line errors that lose nothing."""

from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path

import pytest
from helpers import TINY_TAR, run_codecflow, tiny_tar_md5

from codecflow.cli.config import CliError, apply_override, load_config
from codecflow.cli.help import field_help
from codecflow.cli.main import COMMANDS, main
from codecflow.schemas.configs import CompareCodecsConfig, PipelineConfig, TrainLMConfig


def test_overrides_are_parsed_as_yaml_and_validated(tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text("out: runs/x\ntrain_lm:\n  steps: 10\n")
    cfg = load_config(
        PipelineConfig, str(config), ["train_lm.learning_rate=1e-4", "evaluate.top_k=null"]
    )
    assert isinstance(cfg, PipelineConfig)
    assert cfg.train_lm.steps == 10 and cfg.train_lm.learning_rate == 1e-4
    assert cfg.evaluate.top_k is None and cfg.out == "runs/x"
    data: dict = {}
    apply_override(data, "a.b.c=3")
    assert data == {"a": {"b": {"c": 3}}}


def test_text_fields_keep_the_characters_as_typed() -> None:
    digits = "0" * 32
    cfg = load_config(
        PipelineConfig, None, [f"acquire.md5={digits}", "acquire.source=123", "out=007"]
    )
    assert isinstance(cfg, PipelineConfig)
    assert cfg.acquire.md5 == digits and cfg.acquire.source == "123" and cfg.out == "007"
    cleared = load_config(PipelineConfig, None, [f"acquire.md5={digits}", "acquire.md5=null"])
    assert isinstance(cleared, PipelineConfig) and cleared.acquire.md5 is None


def test_a_list_of_text_is_read_as_a_yaml_list() -> None:
    cfg = load_config(CompareCodecsConfig, None, ['tokenizers=[mu-law-256, "codec:rvq-8@2"]'])
    assert isinstance(cfg, CompareCodecsConfig)
    assert cfg.tokenizers == ["mu-law-256", "codec:rvq-8@2"]


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            ["steps=0"],
            r"invalid TrainLMConfig: steps: Input should be greater than or equal to 1 \(got 0\)",
        ),
        (["stpes=3"], r"unknown field 'stpes'; did you mean 'steps'\?"),
        (["zzz=3"], r"unknown field 'zzz'$"),
        (["lr=1", "warmup_stps=3"], r"unknown field 'warmup_stps'; did you mean 'warmup_steps'\?"),
        (["device=tpu"], r"device: Input should be 'auto', 'cpu' or 'cuda'"),
        (["steps"], r"--set 'steps': expected key.path=value"),
    ],
)
def test_bad_config_is_one_clear_line(overrides: list[str], message: str) -> None:
    with pytest.raises(CliError, match=message):
        load_config(TrainLMConfig, None, overrides)


def test_missing_config_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(CliError, match=r"config file not found: .*absent.yaml"):
        load_config(TrainLMConfig, str(tmp_path / "absent.yaml"), [])


def _last_line(result: subprocess.CompletedProcess[str]) -> str:
    return result.stderr.strip().splitlines()[-1]


def test_acquire_prints_the_manifest_line_and_no_traceback(tmp_path: Path) -> None:
    out = tmp_path / "acq"
    result = run_codecflow(
        None,  # Prefect's ephemeral server, started and stopped by the run, as on a user's machine
        "acquire",
        "--set",
        f"source={TINY_TAR}",
        "--set",
        f"md5={tiny_tar_md5()}",
        "--set",
        f"root={out}",
        "--set",
        "target_len_sec=5",
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-2:] == [
        f"manifest: {out / 'manifest' / 'segments.parquet'}",
        f"rejects: {out / 'manifest' / 'rejects.parquet'}",
    ]
    assert "files seen" in result.stdout  # the one-screen summary
    # Quiet success: the server's shutdown prints nothing but its one INFO line.
    assert "Traceback" not in result.stderr and "Error" not in result.stderr, result.stderr
    assert "Stopping temporary server on http://" in result.stderr.strip().splitlines()[-1]


def test_md5_mismatch_corrupt_tar_and_missing_source_fail_cleanly(
    prefect_api_url: str, tmp_path: Path
) -> None:
    wrong = "0" * 32
    actual = hashlib.md5(TINY_TAR.read_bytes()).hexdigest()
    out = tmp_path / "md5"
    result = run_codecflow(
        prefect_api_url,
        "acquire",
        "--set",
        f"source={TINY_TAR}",
        "--set",
        f"md5={wrong}",
        "--set",
        f"root={out}",
    )
    assert result.returncode == 2
    line = _last_line(result)
    assert line.startswith("error: md5 mismatch for ") and TINY_TAR.name in line
    assert f"expected {wrong}, actual {actual}" in line
    assert not list(out.rglob("*.part")) and not (out / "librilight").exists()
    assert not (out / "manifest").exists()
    # The mismatching bytes are kept aside for inspection, under a name no step reads.
    assert [p.name for p in (out / "download").iterdir()] == [f"{TINY_TAR.name}.md5-mismatch"]

    corrupt = tmp_path / "corrupt.tar"
    corrupt.write_bytes(TINY_TAR.read_bytes()[: TINY_TAR.stat().st_size // 2])
    out = tmp_path / "corrupt"
    result = run_codecflow(
        prefect_api_url, "acquire", "--set", f"source={corrupt}", "--set", f"root={out}"
    )
    assert result.returncode == 2
    assert _last_line(result).startswith("error: corrupt archive ") and "corrupt.tar" in _last_line(
        result
    )
    # Nothing extracted and no temporary folder: no file or folder left beyond the download.
    # (The root's ownership marker stays: the root is codecflow's from its first write.)
    leftovers = [
        p
        for p in out.rglob("*")
        if "download" not in p.relative_to(out).parts and p.name != ".codecflow-owner.json"
    ]
    assert leftovers in ([], [out / "librilight"])

    missing = tmp_path / "nowhere.tar"
    result = run_codecflow(
        prefect_api_url, "acquire", "--set", f"source={missing}", "--set", f"root={tmp_path / 'm'}"
    )
    assert result.returncode == 2
    assert _last_line(result).startswith(
        "error: source not found: "
    ) and "nowhere.tar" in _last_line(result)


@pytest.mark.parametrize("name", ["mimi_99_rvq", "codec:x@0"])
def test_a_bad_tokenizer_name_is_one_error_line_in_sizes_and_tokenize(name: str) -> None:
    """The one grammar: `sizes` and `tokenize` refuse the same name, one `error:` line, exit 2
    (tokenize at config validation, before any Prefect run)."""
    sizes = run_codecflow(None, "sizes", "--tokenizer", name, "--hours", "1")
    tokenize = run_codecflow(None, "tokenize", "--set", f"tokenizer={name}")
    for result in (sizes, tokenize):
        assert result.returncode == 2, result.stderr[-2000:]
        assert result.stdout == ""
        (line,) = result.stderr.strip().splitlines()
        assert line.startswith("error: ") and repr(name) in line
        assert "mimi_K_rvq with K in 1..32" in line
    assert sizes.stderr.strip().startswith(f"error: invalid tokenizer name {name!r}: ")
    assert tokenize.stderr.strip().startswith("error: invalid TokenizeConfig: tokenizer: ")


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_help_lists_every_field_with_type_default_and_description(
    name: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as stop:
        main([name, "--help"])
    assert stop.value.code == 0
    text = " ".join(capsys.readouterr().out.split())  # unwrapped
    model = COMMANDS[name].config
    fields = list(field_help(model))
    assert len(fields) >= len(model.model_fields)
    for item in fields:
        kind = item.default if item.type == "section" else f"{item.type}; default {item.default}"
        assert f"{item.path} ({kind})" in text, item.path
        assert " ".join(item.description.split()) in text, item.path


def test_help_shows_default_factories_and_choices(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["pipeline", "--help"])
    text = capsys.readouterr().out
    assert "tokenize.formats  (list of one of: arrow, webdataset; default ['arrow'])" in text
    assert "evaluate.regenerate_levels  (list of int; default [1])" in text
    assert "train_codec  (a section, off unless set)" in text
    assert "train_lm.preset  (one of: tiny, demo, post or null; default empty)" in text


def test_tokenizers_lists_names_that_validate(capsys: pytest.CaptureFixture[str]) -> None:
    from codecflow.models.codec import CODEC_PRESETS
    from codecflow.schemas.tokenizers import parse_tokenizer_name

    assert main(["tokenizers"]) == 0
    rows = capsys.readouterr().out.splitlines()[1:]
    patterns = [row.split()[0] for row in rows]
    assert patterns[:2] == ["mu-law-256", "mu-law-256-post"]
    examples = {"CHECKPOINT": "runs/x/codec/checkpoint", "PRESET": "rvq-8", "_K_": "_8_"}
    for pattern in patterns:
        for placeholder, value in examples.items():
            pattern = pattern.replace(placeholder, value)
        parse_tokenizer_name(pattern.replace("[@N]", "@2"))  # a malformed one raises
        parse_tokenizer_name(pattern.replace("[@N]", ""))
    assert all(preset in "\n".join(rows) for preset in CODEC_PRESETS)


def test_output_lines_show_one_kind_of_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`report:` and `index:` alike: below the current folder relative, elsewhere absolute,
    whichever way the flow returned them; URLs as they are."""
    from codecflow.cli.main import shown_path

    monkeypatch.chdir(tmp_path)
    assert shown_path("runs/demo/report") == "runs/demo/report"
    assert shown_path(tmp_path / "runs" / "index.html") == "runs/index.html"
    assert shown_path(tmp_path / "runs" / ".." / "runs" / "x") == "runs/x"
    assert shown_path("../elsewhere") == str(tmp_path.parent / "elsewhere")
    assert shown_path("/var/data") == "/var/data"
    assert shown_path("s3://bucket/tokens") == "s3://bucket/tokens"
