"""Every failure the user can cause ends in one `error: ...` line naming the thing, exit 2: config
files and overrides, checkpoints, a full disk or a read-only mount (never retried), an `out` that
is a file, a torchrun rank's reason and a Dask worker's error. Real files, real mounts (tmpfs,
as root), real subprocesses of the `codecflow` command."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from helpers import TINY_TAR, run_codecflow, tiny_tar_md5

from codecflow.cli.config import CliError, load_config
from codecflow.schemas.configs import EvaluateConfig, PipelineConfig, TrainLMConfig
from codecflow.tasks.core.errors import CodecflowError
from codecflow.tasks.data.checkpoints import load_training_state
from codecflow.tasks.loaders import load_checkpoint

ROOT = os.geteuid() == 0
needs_root = pytest.mark.skipif(not ROOT, reason="mounting a tmpfs needs root (CI runs as root)")


def _error_line(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 2, result.stdout[-3000:] + result.stderr[-3000:]
    line = result.stderr.strip().splitlines()[-1]
    assert line.startswith("error: "), result.stderr[-3000:]
    return line


@contextlib.contextmanager
def _tmpfs(where: Path, size: str = "64k", readonly: bool = False) -> Iterator[Path]:
    where.mkdir(parents=True, exist_ok=True)
    options = f"size={size}" + (",ro" if readonly else "")
    subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(where)], check=True)
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


# --------------------------------------------------------------------------------------------
# Config files and overrides
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"train_lm: [steps: 3\n", r"is not valid YAML: line 2, column 1: expected ','"),
        (b"\x00\x01\x02\xff\xfe binary", r"is not UTF-8 text"),
        (b"steps: 3\n\x00\n", r"is not text: it holds NUL bytes"),
        (b"- a\n- b\n", r"must hold a mapping, not list"),
    ],
)
def test_a_config_file_that_is_not_a_yaml_mapping_is_one_line(
    tmp_path: Path, content: bytes, message: str
) -> None:
    config = tmp_path / "bad.yaml"
    config.write_bytes(content)
    with pytest.raises(CliError, match=message) as raised:
        load_config(TrainLMConfig, str(config), [])
    assert "\n" not in str(raised.value) and str(config) in str(raised.value)


def test_a_python_tag_is_refused_and_never_run(tmp_path: Path) -> None:
    planted = tmp_path / "planted"
    config = tmp_path / "evil.yaml"
    config.write_text(f'steps: !!python/object/apply:os.system ["touch {planted}"]\n')
    result = run_codecflow(None, "train-lm", "--config", str(config))
    line = _error_line(result)
    assert "is not valid YAML" in line and "python/object/apply:os.system" in line
    assert not planted.exists()
    assert "Traceback" not in result.stderr


def test_text_overrides_that_look_like_yaml_stay_text() -> None:
    cfg = load_config(EvaluateConfig, None, ["prompt_text=Note: this", "out=a: b: c"])
    assert isinstance(cfg, EvaluateConfig)
    assert cfg.prompt_text == "Note: this" and cfg.out == "a: b: c"
    nested = load_config(PipelineConfig, None, ["evaluate.prompt_text=Note: this: and [that"])
    assert isinstance(nested, PipelineConfig)
    assert nested.evaluate.prompt_text == "Note: this: and [that"


def test_an_override_that_is_not_yaml_names_the_key() -> None:
    with pytest.raises(CliError, match=r"--set steps: value '\[3' is not valid YAML"):
        load_config(TrainLMConfig, None, ["steps=[3"])


# --------------------------------------------------------------------------------------------
# Checkpoints
# --------------------------------------------------------------------------------------------


def _copy_checkpoint(tiny_checkpoint: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "checkpoint"
    shutil.copytree(tiny_checkpoint, copy)
    return copy


def test_a_pickle_posing_as_safetensors_is_refused(tiny_checkpoint: Path, tmp_path: Path) -> None:
    checkpoint = _copy_checkpoint(tiny_checkpoint, tmp_path)
    torch.save({"w": torch.zeros(2)}, checkpoint / "model.safetensors")
    with pytest.raises(CodecflowError, match=r"unreadable checkpoint .*not a safetensors file"):
        load_checkpoint(checkpoint, torch.device("cpu"))
    (checkpoint / "model.safetensors").write_bytes(b"")
    with pytest.raises(CodecflowError, match=r"not a safetensors file"):
        load_checkpoint(checkpoint, torch.device("cpu"))
    (checkpoint / "config.json").write_text("{not json")
    with pytest.raises(CodecflowError, match=r"unreadable checkpoint file .*config.json"):
        load_checkpoint(checkpoint, torch.device("cpu"))


class _NotATensor:
    pass


def test_a_training_state_with_objects_is_refused_without_weights_only_advice(
    tmp_path: Path,
) -> None:
    state = tmp_path / "training_state.pt"
    torch.save({"step": 3, "thing": _NotATensor()}, state)
    with pytest.raises(CodecflowError) as raised:
        load_training_state(state)
    assert "holds objects other than tensors" in str(raised.value)
    assert "weights_only" not in str(raised.value) and "\n" not in str(raised.value)
    state.write_bytes(b"\x80\x04truncated")
    with pytest.raises(CodecflowError, match="is damaged"):
        load_training_state(state)


def test_evaluate_of_a_damaged_checkpoint_is_one_line(
    prefect_api_url: str, tiny_checkpoint: Path, tiny_dataset: Path, tmp_path: Path
) -> None:
    checkpoint = _copy_checkpoint(tiny_checkpoint, tmp_path)
    (checkpoint / "model.safetensors").write_bytes(b"PK\x03\x04 a zip, not safetensors")
    result = run_codecflow(
        prefect_api_url,
        "evaluate",
        "--set",
        f"checkpoint={checkpoint}",
        "--set",
        f"dataset={tiny_dataset}",
        "--set",
        f"out={tmp_path / 'report'}",
    )
    line = _error_line(result)
    assert line.startswith(f"error: unreadable checkpoint {checkpoint / 'model.safetensors'}")
    assert "weights_only" not in result.stderr


# --------------------------------------------------------------------------------------------
# Storage: a full disk, a read-only mount, a file where the folder should be
# --------------------------------------------------------------------------------------------


@needs_root
def test_a_full_disk_is_one_line_and_not_retried(
    prefect_api_url: str, tiny_manifest: Path, tmp_path: Path
) -> None:
    with _tmpfs(tmp_path / "full", size="64k") as mount:
        out = mount / "tokens"
        started = time.monotonic()
        result = run_codecflow(
            prefect_api_url, "tokenize", "--set", f"manifest={tiny_manifest}", "--set", f"out={out}"
        )
        elapsed = time.monotonic() - started
        line = _error_line(result)
        assert line.startswith("error: no space left on device: ") and str(mount) in line
        assert "AwaitingRetry" not in result.stderr and "Retrying" not in result.stderr
        assert not (out / "dataset.json").exists()
        assert not [p for p in out.rglob("*.tmp")] if out.exists() else True
    assert elapsed < 300  # 3 retries with their 2 + 10 + 30 s back-off are gone


@needs_root
def test_a_full_disk_during_train_lm_is_one_line(
    prefect_api_url: str, tiny_dataset: Path, tmp_path: Path
) -> None:
    """torch.save on a full disk raised `RuntimeError: [enforce fail at inline_container.cc]`,
    a traceback (issue 23): the checkpoint's save now fails as ENOSPC naming the file."""
    with _tmpfs(tmp_path / "full", size="192k") as mount:
        result = run_codecflow(
            prefect_api_url, "train-lm", "--set", f"dataset={tiny_dataset}",
            "--set", f"out={mount / 'lm'}", "--set", "device=cpu", "--set", "n_layer=2",
            "--set", "n_head=2", "--set", "n_embd=32", "--set", "block_size=64",
            "--set", "batch_size=4", "--set", "steps=4", "--set", "checkpoint_every=2",
        )  # fmt: skip
        line = _error_line(result)  # the last line; Prefect's task log above keeps its trace
        assert line.startswith(f"error: no space left on device: {mount / 'lm'}"), line
        assert line.endswith("training_state.pt") and "inline_container" not in line


@needs_root
def test_a_read_only_mount_and_a_file_as_out_are_one_line(
    prefect_api_url: str, tiny_manifest: Path, tmp_path: Path
) -> None:
    with _tmpfs(tmp_path / "ro", readonly=True) as mount:
        result = run_codecflow(
            prefect_api_url,
            "tokenize",
            "--set",
            f"manifest={tiny_manifest}",
            "--set",
            f"out={mount / 'tokens'}",
        )
        line = _error_line(result)
        assert line.startswith("error: read-only file system: ") and str(mount) in line
    a_file = tmp_path / "notes.txt"
    a_file.write_text("the user's notes\n")
    result = run_codecflow(
        prefect_api_url, "tokenize", "--set", f"manifest={tiny_manifest}", "--set", f"out={a_file}"
    )
    assert str(a_file) in _error_line(result)
    assert a_file.read_text() == "the user's notes\n"


# --------------------------------------------------------------------------------------------
# Workers: torchrun ranks and Dask workers
# --------------------------------------------------------------------------------------------


def test_a_torchrun_ranks_reason_is_the_one_line(
    prefect_api_url: str, tiny_dataset: Path, tmp_path: Path
) -> None:
    result = run_codecflow(
        prefect_api_url,
        "train-lm",
        "--set",
        f"dataset={tiny_dataset}",
        "--set",
        f"out={tmp_path / 'lm'}",
        "--set",
        "nproc_per_node=2",
        "--set",
        "device=cpu",
        "--set",
        "block_size=400000",
        "--set",
        "steps=2",
    )
    line = _error_line(result)
    # Both ranks fail alike; which one's line arrives first depends on the machine's load.
    assert re.match(r"error: train-lm rank [01] failed: the train split of ", line), line
    assert "fewer than one window of block_size=400000" in line


@needs_root
def test_a_dask_workers_error_comes_back_as_one_line(prefect_api_url: str, tmp_path: Path) -> None:
    # Room for the streamed extraction (0.8 MB, no tar kept) but not for the FLAC segments that
    # the two Dask worker processes write next: ENOSPC is raised in a worker, pickled back.
    with _tmpfs(tmp_path / "small", size="1100k") as mount:
        root = mount / "acq"
        result = run_codecflow(
            prefect_api_url,
            "acquire",
            "--set",
            f"source={TINY_TAR}",
            "--set",
            f"md5={tiny_tar_md5()}",
            "--set",
            f"root={root}",
            "--set",
            "keep_archive=false",
            "--set",
            "segments_as=flac",
            "--set",
            "target_len_sec=5",
            "--set",
            "workers=2",
        )
        line = _error_line(result)
        assert line.startswith(f"error: no space left on device: {root / 'segments'}")
        assert not (root / "manifest" / "segments.parquet").exists()
