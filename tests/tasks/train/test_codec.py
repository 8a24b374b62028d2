"""Codec training on the tiny corpus: the loss falls, checkpoints resume after a kill with the
same result as an uninterrupted run, and the evaluation tabulates losses by levels."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import soundfile as sf
import torch
from helpers import REPO
from safetensors.torch import load_file
from tracking_files import tensorboard_scalars

from codecflow.models.codec import PostEncoder
from codecflow.models.layouts import LAYOUT_NAMES
from codecflow.schemas.configs import EvalCodecSettings, TrainCodecSettings
from codecflow.tasks.core.errors import CodecflowError
from codecflow.tasks.data.checkpoints import latest_checkpoint
from codecflow.tasks.evaluate.codec import default_levels, eval_codec
from codecflow.tasks.loaders import load_codec, load_codec_tokenizer, load_tokenizer
from codecflow.tasks.train.codec import train_codec

TINY = {
    "arch": "jukebox",  # latent_dim 8 < channels 16; the post's codec has its own test below
    "num_levels": 8,
    "codebook_size": 64,
    "channels": 16,
    "latent_dim": 8,
    "res_depth": 1,
    "n_blocks": 3,  # 8x down-sampling: a codec small enough to learn in seconds on a CPU
    "crop_seconds": 0.256,
    "batch_size": 4,
    "warmup_steps": 5,
    "learning_rate": 3e-3,
    "device": "cpu",
}


def _settings(**overrides: object) -> TrainCodecSettings:
    return TrainCodecSettings(**{**TINY, **overrides})


@pytest.fixture(scope="module")
def trained(tiny_manifest: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("codec")
    train_codec(str(tiny_manifest), out, _settings(steps=400, checkpoint_every=200))
    return out


def test_loss_falls_and_the_checkpoint_loads(trained: Path) -> None:
    metrics = json.loads((trained / "checkpoint" / "metrics.json").read_text())
    assert metrics["train_loss_last"] < 0.7 * metrics["train_loss_first"]
    log = [
        json.loads(x) for x in (trained / "checkpoint" / "train_log.jsonl").read_text().splitlines()
    ]
    assert [r["step"] for r in log] == list(range(1, 401))
    assert len({r["levels_used"] for r in log}) > 1  # quantizer dropout varies the levels
    codec = load_codec(trained / "checkpoint")
    assert codec.quantizer.num_levels == 8
    tokenizer = load_codec_tokenizer(str(trained / "checkpoint"), 4)
    codes = tokenizer.encode(torch.zeros(1, 1, 1000))
    assert codes.shape == (1, 4, 125) and codes.dtype == torch.int64  # ceil(1000 / 8) frames
    with pytest.raises(CodecflowError, match="has 8 levels; asked for 9"):
        load_codec_tokenizer(str(trained / "checkpoint"), 9)


def test_more_levels_lower_spectral_loss_on_speech(
    trained: Path, tiny_manifest: Path, tmp_path: Path
) -> None:
    record = eval_codec(
        trained / "checkpoint",
        str(tiny_manifest),
        tmp_path / "eval",
        EvalCodecSettings(n_wavs=1, device="cpu"),
    )
    assert record.levels == (1, 2, 4, 8)
    losses = record.spectral_loss
    assert all(a > b for a, b in zip(losses, losses[1:], strict=False)), (
        losses
    )  # the post's finding
    rows = json.loads(record.table.read_text())
    # levels x log2(64) bits x 2 000 frames/s (16 kHz / 8)
    assert [r["bitrate_bps"] for r in rows] == [k * 6 * 2000 for k in (1, 2, 4, 8)]
    assert all(abs(r["si_sdr_db"]) < 100 and r["mel_l1"] > 0 for r in rows)
    wavs = sorted(p.name for p in record.path.glob("*.wav"))
    assert len(wavs) == 5 and any(w.endswith("_original.wav") for w in wavs)
    assert (record.path / "loss_vs_levels.png").is_file() and (record.path / "index.html").is_file()


def test_eval_codec_returns_a_committed_report_without_recomputing(
    trained: Path, tiny_manifest: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No Prefect here at all (as with an empty Prefect database): the marker decides."""
    out, settings = (
        tmp_path / "eval",
        EvalCodecSettings(levels=[1, 2], max_segments=1, device="cpu"),
    )
    first = eval_codec(trained / "checkpoint", str(tiny_manifest), out, settings)
    written = (out / "index.html").stat().st_mtime_ns

    def fail(*_: object, **__: object) -> None:
        raise AssertionError("recomputed a finished codec report")

    monkeypatch.setattr("codecflow.tasks.evaluate.codec.load_split_audio", fail)
    again = eval_codec(trained / "checkpoint", str(tiny_manifest), out, settings)
    assert again == first and (out / "index.html").stat().st_mtime_ns == written
    # Other settings are another report: computed (and here the patched loader says so).
    with pytest.raises(AssertionError, match="recomputed"):
        eval_codec(
            trained / "checkpoint",
            str(tiny_manifest),
            out,
            settings.model_copy(update={"levels": [1]}),
        )
    # A report without its marker (index.html written last) is not done either.
    (out / "index.html").unlink()
    with pytest.raises(AssertionError, match="recomputed"):
        eval_codec(trained / "checkpoint", str(tiny_manifest), out, settings)


def test_post_codec_checkpoint_serves_codec_at_n(tiny_manifest: Path, tmp_path: Path) -> None:
    """`codec:<checkpoint>@N` with the post's architecture (the fixture above is the Jukebox-like
    one): trained, saved, reloaded with its arch from config.json."""
    settings = _settings(arch="post", latent_dim=16, steps=4, checkpoint_every=2)
    record = train_codec(str(tiny_manifest), tmp_path, settings)
    config = json.loads((tmp_path / "checkpoint" / "config.json").read_text())
    assert config["codec"]["arch"] == "post"
    assert isinstance(load_codec(record.path).encoder, PostEncoder)
    tokenizer = load_tokenizer(f"codec:{record.path}@2")
    assert tokenizer.encode(torch.zeros(1, 1, 80)).shape == (1, 2, 10)  # 8x, ceil(80 / 8)
    # The Jukebox-like checkpoint of the fixture serves codec:<checkpoint>@N the same way
    # (test_loss_falls_and_the_checkpoint_loads).


def test_default_levels() -> None:
    assert default_levels(8) == [1, 2, 4, 8]
    assert default_levels(12) == [1, 2, 4, 8, 12]
    assert default_levels(16) == [1, 2, 4, 8, 16]


def _train_in_subprocess(
    manifest: Path, out: Path, settings: TrainCodecSettings
) -> subprocess.Popen[bytes]:
    code = (
        "import sys; from codecflow.schemas.configs import TrainCodecSettings; "
        "from codecflow.tasks.train.codec import train_codec; "
        "train_codec(sys.argv[1], sys.argv[2], TrainCodecSettings.model_validate_json(sys.argv[3]))"
    )
    return subprocess.Popen(
        [sys.executable, "-c", code, str(manifest), str(out), settings.model_dump_json()],
        cwd=REPO,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )


def test_resume_after_kill_matches_an_uninterrupted_run(
    tiny_manifest: Path, tmp_path: Path
) -> None:
    settings = _settings(steps=40, checkpoint_every=10)
    killed = tmp_path / "killed"
    process = _train_in_subprocess(tiny_manifest, killed, settings)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and (
        latest_checkpoint(killed) is None or latest_checkpoint(killed).name < "step-000020"
    ):  # type: ignore[union-attr]
        assert process.poll() is None, "training ended before it could be killed"
        time.sleep(0.2)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not (killed / "checkpoint").exists()
    resumed_at = int(latest_checkpoint(killed).name.split("-")[1])  # type: ignore[union-attr]
    assert 20 <= resumed_at < 40

    # Resumed in the same kind of process as the uninterrupted run (one thread each), so that
    # the two can be compared number for number.
    assert _train_in_subprocess(tiny_manifest, killed, settings).wait(timeout=600) == 0
    metrics = json.loads((killed / "checkpoint" / "metrics.json").read_text())
    assert metrics["resumed_from"] == resumed_at
    log = [
        json.loads(x) for x in (killed / "checkpoint" / "train_log.jsonl").read_text().splitlines()
    ]
    assert [r["step"] for r in log] == list(range(1, 41))  # the curve continues, no gap, no repeat

    straight = tmp_path / "straight"
    process = _train_in_subprocess(tiny_manifest, straight, settings)
    assert process.wait(timeout=600) == 0
    a = load_file(str(killed / "checkpoint" / "model.safetensors"))
    b = load_file(str(straight / "checkpoint" / "model.safetensors"))
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=1e-4, atol=1e-5, msg=name)


def test_levels_is_an_alias_of_num_levels() -> None:
    old = {k: v for k, v in TINY.items() if k != "num_levels"}
    assert TrainCodecSettings(**old, levels=4) == _settings(num_levels=4)
    assert TrainCodecSettings.model_validate({"levels": 2}).num_levels == 2
    assert "levels" not in _settings().model_dump()  # records are written with the new name


def _rename_to_levels(identity: dict[str, object]) -> dict[str, object]:
    """A run identity as train-codec wrote it before `levels` was renamed `num_levels`."""
    settings = dict(identity["settings"])  # type: ignore[call-overload]
    settings["levels"] = settings.pop("num_levels")
    return {**identity, "settings": settings}


def test_a_run_written_with_levels_still_resumes(tiny_manifest: Path, tmp_path: Path) -> None:
    settings = _settings(steps=4, checkpoint_every=2)
    first = train_codec(str(tiny_manifest), tmp_path, settings)
    metrics_path, identity_path = (
        tmp_path / "checkpoint" / "metrics.json",
        tmp_path / "identity.json",
    )
    metrics = json.loads(metrics_path.read_text())
    assert "num_levels" in metrics["identity"]["settings"]
    metrics["identity"] = _rename_to_levels(metrics["identity"])
    metrics_path.write_text(json.dumps(metrics))
    identity_path.write_text(json.dumps(_rename_to_levels(json.loads(identity_path.read_text()))))
    # The committed codec of the old spelling is this run's: returned, not refused.
    assert train_codec(str(tiny_manifest), tmp_path, settings) == first
    # An unfinished run of the old spelling resumes from its checkpoint.
    shutil.rmtree(tmp_path / "checkpoint")
    resumed = train_codec(str(tiny_manifest), tmp_path, settings)
    assert resumed.resumed_from == 2 and resumed.steps == 4
    # Other settings are still another run.
    identity_path.write_text(json.dumps(_rename_to_levels(json.loads(identity_path.read_text()))))
    shutil.rmtree(tmp_path / "checkpoint")
    with pytest.raises(CodecflowError, match="unfinished codec run of another manifest"):
        train_codec(str(tiny_manifest), tmp_path, _settings(steps=4, checkpoint_every=2, seed=1))


def test_a_different_run_in_the_same_folder_is_refused(trained: Path, tiny_manifest: Path) -> None:
    with pytest.raises(CodecflowError, match="holds a codec of another manifest or settings"):
        train_codec(str(tiny_manifest), trained, _settings(steps=401))


def test_refusals_name_the_fields_that_differ(
    trained: Path, tiny_manifest: Path, tmp_path: Path
) -> None:
    with pytest.raises(CodecflowError, match="steps 400 in the checkpoint, 401 asked for"):
        train_codec(str(tiny_manifest), trained, _settings(steps=401))
    # An unfinished run: its identity.json (written before the first step) is what counts.
    out = tmp_path / "run"
    train_codec(str(tiny_manifest), out, _settings(steps=2, checkpoint_every=1))
    recorded = json.loads((out / "identity.json").read_text())
    assert list(recorded) == ["manifest", "settings"] and recorded["settings"]["steps"] == 2
    import shutil

    shutil.rmtree(out / "checkpoint")  # what a kill before the final checkpoint leaves
    with pytest.raises(CodecflowError) as refused:
        train_codec(str(tiny_manifest), out, _settings(steps=2, checkpoint_every=1, seed=1))
    assert str(refused.value) == (
        f"{out} holds an unfinished codec run of another manifest or settings: "
        "seed 0 in the checkpoint, 1 asked for; resume with the same ones or choose another out"
    )
    record = train_codec(str(tiny_manifest), out, _settings(steps=2, checkpoint_every=1))
    assert record.resumed_from == 1


@pytest.fixture(scope="module")
def codec_dataset(
    trained: Path, tiny_manifest: Path, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """The tiny corpus tokenized with the first 4 levels of the trained codec."""
    from codecflow.schemas.configs import TokenizeSettings
    from codecflow.tasks.tokenize.finalize import tokenize_manifest

    name = f"codec:{trained / 'checkpoint'}@4"
    out = tmp_path_factory.mktemp("codec-tokens") / "tokens"
    return tokenize_manifest(str(tiny_manifest), out, TokenizeSettings(tokenizer=name)).path


@pytest.mark.parametrize("layout", LAYOUT_NAMES)
def test_codec_tokens_train_sample_and_regenerate(
    codec_dataset: Path, tmp_path: Path, layout: str
) -> None:
    """The DAG with multi-level codes in every token layout: tokens of `codec:<checkpoint>@4`,
    an LM with per-level weights (a semantic-style 100x on level 0), continuations, and the
    regeneration of the prompt from its first 1 and 3 levels (keeping 4 of 4 is skipped)."""
    from helpers import PROMPT

    from codecflow.schemas.configs import EvaluateSettings, TrainLMSettings
    from codecflow.tasks.data.token_dataset import TokenReader, read_dataset_info
    from codecflow.tasks.evaluate.lm import evaluate
    from codecflow.tasks.train.lm import train_lm

    dataset = codec_dataset
    info = read_dataset_info(dataset)
    assert info.num_levels == 4 and info.tokenizer["frame_rate"] == 2000
    assert info.dtype == "uint8"  # a 64-entry codebook
    assert info.totals.tokens == 4 * info.totals.frames
    with TokenReader(dataset, "train") as reader:
        assert reader.num_levels == 4 and reader.n_tokens == 4 * reader.n_frames
    lm = TrainLMSettings(
        n_layer=1,
        n_head=2,
        n_embd=32,
        block_size=64,
        batch_size=4,
        steps=5,
        device="cpu",
        layout=layout,
        level_weights=[100.0, 1.0, 1.0, 1.0],
    )
    checkpoint = train_lm(dataset, tmp_path / "lm", lm).path
    metrics = json.loads((checkpoint / "metrics.json").read_text())
    assert len(metrics["val_loss_per_level"]) == 4 and all(
        x > 0 for x in metrics["val_loss_per_level"]
    )
    vocab = json.loads((checkpoint / "config.json").read_text())["gpt"]["vocab_size"]
    expected_vocab = {"flatten": 64, "flatten-offsets": 4 * 64, "delay": 65, "delay-offsets": 257}
    assert vocab == expected_vocab[layout]  # offsets: a block per level; delay: + PAD
    report = evaluate(
        checkpoint,
        dataset,
        tmp_path / "report",
        EvaluateSettings(
            prompt=str(PROMPT),
            seconds=0.05,
            num_samples=2,
            regenerate_levels=[1, 3, 4],
            regenerate_seconds=0.1,
            speech_metrics=False,
            device="cpu",
        ),
    )
    summary = json.loads(report.summary.read_text())
    assert summary["generated_tokens"] == 2 * 4 * 100  # 2 x 0.05 s x 2 000 frames/s x 4 levels
    assert summary["context_seconds"] == pytest.approx(64 / (2000 * 4))
    # The delay pattern needs K - 1 steps to complete a frame: 3 fewer decodable frames.
    delayed = layout.startswith("delay")
    assert summary["generated_seconds"] == pytest.approx((97 if delayed else 100) / 2000)
    # The same validation numbers as training reported: same windows, same weights.
    assert summary["val_loss"] == pytest.approx(metrics["val_loss"], rel=1e-5)
    assert summary["val_loss_per_level"] == pytest.approx(metrics["val_loss_per_level"], rel=1e-5)
    assert summary["layout"] == layout and summary["level_weights"] == [100.0, 1.0, 1.0, 1.0]
    runs = {r["keep_levels"]: r for r in summary["regeneration"]["runs"]}
    assert runs[4]["skipped"] == "keeping 4 of 4 levels leaves nothing to generate"
    for keep in (1, 3):
        assert runs[keep]["skipped"] is None
        for name in runs[keep]["files"]:
            wav, rate = sf.read(report.path / name)
            assert rate == 16_000 and len(wav) == 200 * 8  # 0.1 s = 200 frames of 8 samples
    original, _ = sf.read(report.path / "regen" / "original.wav")
    assert len(original) == 1600


def test_users_folders_are_neither_trained_nor_evaluated_into(
    trained: Path, tiny_manifest: Path, tmp_path: Path
) -> None:
    from codecflow.tasks.core import outputs

    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "index.html").write_text("<p>my page</p>\n")  # a name both reports write too
    with pytest.raises(
        CodecflowError, match=f"^{mine} is not empty and is not a codecflow codec run$"
    ):
        train_codec(str(tiny_manifest), mine, _settings(steps=2))
    with pytest.raises(
        CodecflowError, match=f"^{mine} is not empty and is not a codecflow codec evaluation$"
    ):
        eval_codec(trained / "checkpoint", str(tiny_manifest), mine, EvalCodecSettings(n_wavs=0))
    assert [p.name for p in mine.iterdir()] == ["index.html"]
    assert (mine / "index.html").read_text() == "<p>my page</p>\n"
    # The codec run and a report written whole (atomic_dir) carry their markers.
    assert json.loads((trained / outputs.OWNER_MARKER).read_text())["kind"] == "codec run"
    report = eval_codec(
        trained / "checkpoint", str(tiny_manifest), tmp_path / "eval", EvalCodecSettings(n_wavs=0)
    )
    assert (
        json.loads((report.path / outputs.OWNER_MARKER).read_text())["kind"] == "codec evaluation"
    )
    assert not (tmp_path / "eval.lock").exists()


def test_codec_training_logs_progress_at_a_cadence(
    tiny_manifest: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    import logging
    import re

    line = re.compile(
        r"^train-codec step (\d+)/6 \((\d+)%\): loss (\d+\.\d{4}), ([\d,.]+) samples/s, "
        r"ETA (\d+:\d\d)$"
    )
    with caplog.at_level(logging.INFO, logger="codecflow.train-codec"):
        train_codec(str(tiny_manifest), tmp_path / "codec", _settings(steps=6))
    lines = [r.getMessage() for r in caplog.records if r.name == "codecflow.train-codec"]
    # Seconds of training under the 30 s default: the first step and the last, nothing between.
    matches = [line.match(text) for text in lines]
    assert len(matches) == 2 and all(matches), lines
    first, last = matches
    assert first is not None and last is not None
    assert (first.group(1), last.group(1), last.group(5)) == ("1", "6", "0:00")
    assert float(last.group(4).replace(",", "")) > 0


def test_log_to_tensorboard_receives_the_logs_scalars(
    tiny_manifest: Path, tmp_path: Path, tracking_home: Path
) -> None:
    out = tmp_path / "codec"
    settings = _settings(steps=6, checkpoint_every=3, loader_workers=0, log_to=["tensorboard"])
    record = train_codec(str(tiny_manifest), out, settings)
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    metrics = json.loads((record.path / "metrics.json").read_text())
    board = tensorboard_scalars(out / "tensorboard")
    for key in ("loss", "mse", "spectral", "commitment", "lr", "grad_norm", "levels_used"):
        assert board[key] == {r["step"]: pytest.approx(r[key], rel=1e-6) for r in log}, key
    assert sorted(board["crops_per_s"]) == list(range(1, 7))
    assert board["run/crops_per_s"] == {6: pytest.approx(metrics["crops_per_s"], rel=1e-6)}
    assert not (out / "wandb").exists()  # only what log_to names
