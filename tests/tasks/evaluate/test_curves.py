"""Loss curves of the training behind a checkpoint (`tasks.evaluate.curves`): drawn from the
log's lines, per level when there are several levels, nothing without a log."""

from __future__ import annotations

import json
from pathlib import Path

from codecflow.tasks.evaluate.curves import curve_names, training_log, write_loss_curves

PNG = b"\x89PNG\r\n\x1a\n"


def _log(steps: int, levels: int) -> list[dict]:
    rows = []
    for step in range(1, steps + 1):
        row = {"step": step, "loss": 5.0 / step, "loss_per_level": [5.0 / step] * levels}
        if step % 5 == 0:
            row |= {"val_loss": 6.0 / step, "val_loss_per_level": [6.0 / step] * levels}
        rows.append(row)
    return rows


def test_two_levels_draw_the_total_and_the_per_level_curves(tmp_path: Path) -> None:
    validation = {"val_loss": 0.5, "val_loss_per_level": [0.4, 0.6]}
    names = write_loss_curves(_log(12, 2), 12, validation, tmp_path, 2)
    assert names == {"total": "loss.png", "per_level": "loss_per_level.png"}
    for name in names.values():
        assert (tmp_path / name).read_bytes()[:8] == PNG
    assert curve_names(_log(3, 1), 1) == {"total": "loss.png"}
    assert write_loss_curves([], 0, validation, tmp_path / "none", 2) == {}


def test_a_mid_training_checkpoint_reads_the_runs_log_up_to_its_step(tmp_path: Path) -> None:
    run = tmp_path / "lm"
    (run / "checkpoints" / "step-000005").mkdir(parents=True)
    (run / "train_log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in _log(8, 1)))
    log = training_log(run / "checkpoints" / "step-000005", 5)
    assert [r["step"] for r in log] == [1, 2, 3, 4, 5]
    (run / "checkpoint").mkdir()  # the final one keeps its own copy
    (run / "checkpoint" / "train_log.jsonl").write_text(json.dumps(_log(1, 1)[0]) + "\n")
    assert [r["step"] for r in training_log(run / "checkpoint", 8)] == [1]
