"""The batch-invariance audit on real speech (the shipped prompt cut into five lengths): as
`tokenize` encodes them, no tokenizer's codes depend on the batch; inside one zero-padded batch,
the non-causal codec's do (its encoder looks ahead into the padding)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from helpers import REPO

from codecflow.cli.audit import audit_tokenizer
from codecflow.models.codec import build_rvq_codec
from codecflow.models.codec_tokenizer import CodecTokenizer
from codecflow.models.mimi import MimiTokenizer
from codecflow.tasks.tokenize.audit import batch_invariance


def _prompt_cuts(rate: int) -> list:
    import numpy as np
    import soundfile as sf
    import torchaudio

    audio, source = sf.read(
        REPO / "data" / "prompts" / "prompt_librilight_uk_4s.wav", dtype="float32"
    )
    if source != rate:
        audio = torchaudio.functional.resample(torch.from_numpy(audio), source, rate).numpy()
    return [np.ascontiguousarray(audio[: int(s * rate)]) for s in (0.9, 1.7, 2.45, 3.3, 4.0)]


def test_mu_law_is_batch_invariant_either_way() -> None:
    result = audit_tokenizer("mu-law-256")
    assert result.naive_share == 0.0 and result.as_tokenized_share == 0.0
    assert result.segments == 5 and result.codes == int(16_000 * (0.9 + 1.7 + 2.45 + 3.3 + 4.0))


def test_the_post_codec_looks_ahead_so_tokenize_encodes_it_alone() -> None:
    torch.manual_seed(0)
    codec = build_rvq_codec(
        arch="post", num_levels=2, channels=8, latent_dim=8, n_blocks=3, res_depth=2,
        codebook_size=16, codebooks="post",
    ).eval()  # fmt: skip
    tokenizer = CodecTokenizer(codec, 2)
    result = batch_invariance("codec", tokenizer, _prompt_cuts(tokenizer.sample_rate))
    print(f"post codec: naive {result.naive_share:.4f}, as tokenized {result.as_tokenized_share}")
    assert not result.causal and result.naive_share > 0.0
    assert result.as_tokenized_share == 0.0


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_mimi_as_tokenized_is_batch_invariant() -> None:
    """The real Mimi architecture (random weights, codebooks randomised so codes are not all 0)."""
    from random_mimi import random_codebook_mimi

    tokenizer = MimiTokenizer(random_codebook_mimi(4), 4)
    result = batch_invariance("mimi_4_rvq", tokenizer, _prompt_cuts(tokenizer.sample_rate))
    print(f"mimi: naive {result.naive_share:.4f}, as tokenized {result.as_tokenized_share}")
    assert result.causal and result.as_tokenized_share == 0.0


def test_the_cli_prints_json_and_refuses_a_bad_name() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "codecflow", "audit-tokenizer", "mu-law-256", "--json"],
        capture_output=True, text=True, timeout=300, cwd=REPO,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["as_tokenized_share"] == 0.0
    bad = subprocess.run(
        [sys.executable, "-m", "codecflow", "audit-tokenizer", "mu-law-999"],
        capture_output=True, text=True, timeout=300, cwd=REPO,
    )  # fmt: skip
    assert bad.returncode == 2 and bad.stderr.strip().splitlines()[-1].startswith("error: ")
