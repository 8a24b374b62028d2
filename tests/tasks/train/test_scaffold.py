"""The trainers' shared scaffolding on a two-layer model and real files: identities refused by
field, resume from the newest complete checkpoint, the learning-rate loop, the final folder."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from codecflow.schemas.configs import TrainCodecSettings
from codecflow.tasks.core.errors import CodecflowError
from codecflow.tasks.core.runtime import learning_rate_at
from codecflow.tasks.core.storage import fingerprint
from codecflow.tasks.data.checkpoints import latest_checkpoint
from codecflow.tasks.train.scaffold import (
    RunIdentity,
    RunLog,
    checkpoint_due,
    json_text,
    plot_log,
    read_identity,
    read_record,
    resume,
    save_checkpoint,
    schedule,
    write_final,
)

SHA_A, SHA_B = "a" * 64, "b" * 64


def _identity(**settings: object) -> RunIdentity:
    return RunIdentity("toy run", "toy", "dataset", SHA_A, {"lr": 0.1, "steps": 4, **settings})


def _model() -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 2))
    return model, torch.optim.AdamW(model.parameters(), lr=0.01)


def _train_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> None:
    optimizer.zero_grad()
    model(torch.randn(5, 3)).square().mean().backward()
    optimizer.step()


def _weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}


# --------------------------------------------------------------------------------------------
# RunIdentity
# --------------------------------------------------------------------------------------------


def test_differences_name_every_field_and_shorten_fingerprints() -> None:
    recorded = {"dataset": SHA_B, "settings": {"lr": 0.3, "steps": 4, "old": 1}}
    assert _identity().differences(recorded) == [
        f"dataset fingerprint {SHA_B[:12]} in the checkpoint, fingerprint {SHA_A[:12]} asked for",
        "lr 0.3 in the checkpoint, 0.1 asked for",
        "old 1 in the checkpoint, None asked for",
    ]
    assert _identity().differences(_identity().to_json()) == []


def test_an_unfinished_run_of_other_settings_is_refused_by_field(tmp_path: Path) -> None:
    identity = _identity()
    identity.check_resumable(tmp_path, None)  # nothing recorded: a fresh run
    identity.check_resumable(tmp_path, identity.to_json())
    with pytest.raises(CodecflowError) as refused:
        identity.check_resumable(tmp_path, _identity(lr=0.2, steps=5).to_json(), "step-000002")
    assert str(refused.value) == (
        f"{tmp_path} holds an unfinished toy run (step-000002) of another dataset or settings: "
        "lr 0.2 in the checkpoint, 0.1 asked for; steps 5 in the checkpoint, 4 asked for; "
        "resume with the same ones or choose another out"
    )
    with pytest.raises(CodecflowError, match=r"unfinished toy run of another dataset or settings"):
        identity.check_resumable(tmp_path, _identity(lr=0.2).to_json())


def test_the_identity_file_round_trips_sorted(tmp_path: Path) -> None:
    identity = _identity()
    assert read_identity(tmp_path / "identity.json") is None
    (tmp_path / "identity.json").write_text(identity.text())
    assert read_identity(tmp_path / "identity.json") == identity.to_json()
    assert identity.text() == json.dumps(identity.to_json(), indent=2, sort_keys=True) + "\n"


@dataclass(frozen=True)
class _Record:
    path: Path
    fingerprint: str
    steps: int
    loss_last: float


def test_a_finished_run_is_returned_and_another_refused(tmp_path: Path) -> None:
    identity = _identity()
    assert identity.committed(tmp_path) is None
    model, _ = _model()
    metrics = {"identity": identity.to_json(), "steps": 4.0, "loss_last": 1}
    final = write_final(
        tmp_path,
        _weights(model),
        {"shape": [3, 2]},
        metrics,
        RunLog(tmp_path / "l"),
        lambda _: None,
    )
    assert identity.committed(tmp_path) == metrics
    record = read_record(_Record, final, metrics)
    assert record == _Record(final, fingerprint(final / "model.safetensors"), 4, 1.0)
    assert type(record.steps) is int and type(record.loss_last) is float
    # A checkpoint of an older release, which wrote the field under another name, reads the same.
    older = {"identity": metrics["identity"], "steps": 4, "loss_at_end": 1}
    assert read_record(_Record, final, older, {"loss_at_end": "loss_last"}) == record
    with pytest.raises(CodecflowError) as refused:
        _identity(steps=5).committed(tmp_path)
    assert str(refused.value) == (
        f"{final} holds a toy of another dataset or settings (steps 4 in the checkpoint, 5 asked "
        "for); choose another out"
    )


# --------------------------------------------------------------------------------------------
# resume, save_checkpoint, RunLog
# --------------------------------------------------------------------------------------------


def test_a_fresh_run_starts_at_step_0_with_an_empty_log(tmp_path: Path) -> None:
    model, optimizer = _model()
    out = tmp_path / "run"
    resumed = resume(out, model, optimizer)
    assert (resumed.step, resumed.state, resumed.checkpoint, resumed.log.rows) == (0, {}, None, [])
    assert (out / "train_log.jsonl").read_text() == ""


def test_resume_restores_weights_optimizer_rng_and_cuts_the_log(tmp_path: Path) -> None:
    model, optimizer = _model()
    log = resume(tmp_path, model, optimizer).log
    for step in range(1, 4):
        _train_step(model, optimizer)
        log.append({"step": step, "loss": float(step)})
        if step == 2:
            save_checkpoint(tmp_path, 2, _weights(model), optimizer, {"sampler": 7}, {"a.txt": "x"})
            weights, moments = (
                _weights(model),
                optimizer.state_dict()["state"][0]["exp_avg"].clone(),
            )
            expected_draw = torch.rand(3)  # what the RNG gives right after the checkpoint
    assert (tmp_path / "checkpoints/step-000002/a.txt").read_text() == "x"

    fresh, fresh_optimizer = _model()
    torch.manual_seed(123)
    resumed = resume(tmp_path, fresh, fresh_optimizer)
    assert resumed.step == 2 and resumed.checkpoint == latest_checkpoint(tmp_path)
    assert resumed.state["sampler"] == 7
    for name, tensor in fresh.state_dict().items():
        torch.testing.assert_close(tensor, weights[name], rtol=0, atol=0)
    torch.testing.assert_close(fresh_optimizer.state_dict()["state"][0]["exp_avg"], moments)
    assert torch.equal(torch.rand(3), expected_draw)
    # Step 3 was logged after the checkpoint: cut, in memory and in the file.
    assert [r["step"] for r in resumed.log.rows] == [1, 2]
    lines = (tmp_path / "train_log.jsonl").read_text().splitlines()
    assert [json.loads(x)["step"] for x in lines] == [1, 2]
    resumed.log.append({"step": 3, "loss": 3.0})
    assert len((tmp_path / "train_log.jsonl").read_text().splitlines()) == 3


def test_tied_weights_may_be_missing_others_may_not(tmp_path: Path) -> None:
    model, optimizer = _model()
    weights = _weights(model)
    weights.pop("1.bias")
    save_checkpoint(tmp_path, 1, weights, optimizer)
    assert resume(tmp_path, *_model(), tied={"1.bias"}).step == 1
    with pytest.raises(RuntimeError, match=r"missing \['1.bias'\]"):
        resume(tmp_path, *_model())


def test_a_rank_that_does_not_write_leaves_the_log_alone(tmp_path: Path) -> None:
    (tmp_path / "train_log.jsonl").write_text('{"step": 1}\n{"step": 2}\n')
    resumed = resume(tmp_path, *_model(), write_log=False)
    resumed.log.append({"step": 1})
    assert resumed.log.rows == []
    assert (tmp_path / "train_log.jsonl").read_text() == '{"step": 1}\n{"step": 2}\n'


# --------------------------------------------------------------------------------------------
# schedule, checkpoint_due, write_final, plot_log
# --------------------------------------------------------------------------------------------


def test_schedule_sets_the_learning_rate_of_every_group_from_the_start_step() -> None:
    settings = TrainCodecSettings(steps=10, warmup_steps=3, learning_rate=1.0, checkpoint_every=4)
    model, _ = _model()
    optimizer = torch.optim.SGD(
        [{"params": model[0].parameters()}, {"params": model[1].parameters()}], lr=5.0
    )
    seen = []
    for step, lr in schedule(optimizer, 6, settings):
        assert lr == learning_rate_at(step, settings)
        assert [g["lr"] for g in optimizer.param_groups] == [lr, lr]
        seen.append(step)
    assert seen == [6, 7, 8, 9]
    # After 4 and 8 steps, not after the 10th (the final checkpoint follows it).
    assert [n for n in range(1, 11) if checkpoint_due(n, settings)] == [4, 8]


def test_write_final_writes_the_folder_whole_metrics_last(tmp_path: Path) -> None:
    model, _ = _model()
    log = RunLog(tmp_path / "log.jsonl", [{"step": 1, "loss": 2.0}, {"step": 2, "loss": 1.0}])

    def plot(path: Path) -> None:
        assert not (path.parent / "metrics.json").exists()  # written after everything else
        plot_log(log.rows, path, {"loss": "train"}, ylabel="nats", reference=(1.5, "val"))

    final = write_final(tmp_path, _weights(model), {"k": 1}, {"m": 2}, log, plot)
    assert final == tmp_path / "checkpoint"
    assert sorted(p.name for p in final.iterdir()) == [
        "config.json", "loss.png", "metrics.json", "model.safetensors", "train_log.jsonl",
    ]  # fmt: skip
    assert (final / "config.json").read_text() == json_text({"k": 1})
    assert (final / "metrics.json").read_text() == '{\n  "m": 2\n}\n'
    assert (final / "train_log.jsonl").read_text() == log.text()
    assert (final / "loss.png").read_bytes()[:4] == b"\x89PNG"


def test_a_failed_final_write_leaves_no_checkpoint(tmp_path: Path) -> None:
    model, _ = _model()

    def plot(path: Path) -> None:
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        write_final(tmp_path, _weights(model), {}, {}, RunLog(tmp_path / "l"), plot)
    assert not (tmp_path / "checkpoint").exists()
    assert _identity().committed(tmp_path) is None
    # The log-scale variant (the codec's curves) draws too.
    rows = [{"step": 1, "loss": 2.0, "mse": 1.0}]
    plot_log(rows, tmp_path / "c.png", {"loss": "loss", "mse": "mse"}, log_scale=True)
    assert (tmp_path / "c.png").is_file()


def test_a_setting_added_since_reads_as_the_value_older_runs_had() -> None:
    """A run recorded before `window_offsets` existed is the aligned run it was: it resumes
    under `aligned`, and is another run under `any`."""
    older = {"dataset": SHA_A, "settings": {"lr": 0.1, "steps": 4}}
    now = RunIdentity(
        "toy run", "toy", "dataset", SHA_A, {"lr": 0.1, "steps": 4, "window_offsets": "aligned"},
        added={"window_offsets": "aligned"},
    )  # fmt: skip
    assert now.recorded_as_now(older) == now.to_json() and now.differences(older) == []
    other = RunIdentity(
        "toy run", "toy", "dataset", SHA_A, {"lr": 0.1, "steps": 4, "window_offsets": "any"},
        added={"window_offsets": "aligned"},
    )  # fmt: skip
    assert other.differences(older) == ["window_offsets aligned in the checkpoint, any asked for"]
