"""Output folders through the flows and the CLI: a user's folder is refused with one line, a
locked output at once, and a second run into codecflow's own folders is a cache hit."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import REPO, lock_held_by_another_process

from codecflow.flows.acquire import acquire_flow
from codecflow.flows.train_lm import train_lm_flow
from codecflow.schemas.configs import AcquireConfig, TrainLMConfig
from codecflow.tasks.core.errors import CodecflowError


def test_the_cli_refuses_a_users_folder_in_one_line(
    prefect_api_url: str, tiny_manifest: Path, tmp_path: Path
) -> None:
    out = tmp_path / "mine"
    out.mkdir()
    (out / "plan.parquet").write_bytes(b"my own plan")  # today: an ArrowInvalid traceback
    result = subprocess.run(
        [sys.executable, "-m", "codecflow", "tokenize"]
        + ["--set", f"manifest={tiny_manifest}", "--set", f"out={out}"],
        cwd=REPO,
        env={**os.environ, "PREFECT_API_URL": prefect_api_url},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 2, result.stderr[-2000:]
    last = result.stderr.strip().splitlines()[-1]
    assert last == f"error: {out} is not empty and is not a codecflow token dataset"
    assert [p.name for p in out.iterdir()] == ["plan.parquet"]
    assert (out / "plan.parquet").read_bytes() == b"my own plan"
    assert not (tmp_path / "mine.lock").exists()


def test_acquire_refuses_a_root_that_is_not_its_own(prefect_api_url: str, tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    (root / "download").mkdir()
    (root / "download" / "thesis.pdf").write_bytes(b"%PDF")
    with pytest.raises(
        CodecflowError, match=f"^{root} is not empty and is not a codecflow acquire"
    ):
        acquire_flow(AcquireConfig(root=str(root)))
    assert sorted(p.relative_to(root).as_posix() for p in root.rglob("*")) == [
        "download",
        "download/thesis.pdf",
    ]
    assert not (tmp_path / "root.lock").exists()


def test_train_lm_flow_into_a_locked_out_is_refused(
    prefect_api_url: str, tiny_dataset: Path, tmp_path: Path
) -> None:
    out = tmp_path / "lm"
    cfg = TrainLMConfig(
        dataset=str(tiny_dataset), out=str(out), n_layer=1, n_head=2, n_embd=16, block_size=32,
        batch_size=2, steps=2, warmup_steps=1, eval_batches=1, device="cpu",
    )  # fmt: skip
    with lock_held_by_another_process(out, "train-lm") as pid:
        with pytest.raises(
            CodecflowError, match=rf"being written by another run \(train-lm, pid {pid}"
        ):
            train_lm_flow(cfg)
    first = train_lm_flow(cfg)
    assert train_lm_flow(cfg) == first  # ours now: the second run is a cache hit, not refused
    assert not (tmp_path / "lm.lock").exists()
