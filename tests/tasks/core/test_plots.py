"""The figures' helpers: TensorBoard's smoothing, and what a page's stamp says of the checkout."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from codecflow.tasks.core.plots import smoothed
from codecflow.tasks.core.provenance import git_commit, provenance


def test_smoothing_is_tensorboards_debiased_average() -> None:
    # By hand, weight 0.5: EMA 0.5, 1.75 / (1 - 0.25) ... debiased by 1 - 0.5**n.
    values = [1.0, 3.0, 3.0]
    ema = [0.5, 0.5 * 0.5 + 1.5, (0.5 * 0.5 + 1.5) * 0.5 + 1.5]
    expected = [e / (1 - 0.5 ** (n + 1)) for n, e in enumerate(ema)]
    assert smoothed(values, 0.5) == pytest.approx(expected)
    assert smoothed(values, 0.5)[0] == 1.0  # debiased: the first point is the first value
    assert smoothed([2.0] * 50) == pytest.approx([2.0] * 50)  # a flat curve stays flat
    noisy = [1.0 + (-1) ** i * 0.5 for i in range(400)]
    assert max(smoothed(noisy)[100:]) - min(smoothed(noisy)[100:]) < 0.2  # the noise damped


def test_the_commit_is_the_checkouts_own(tmp_path: Path) -> None:
    repo = Path(__file__).resolve().parents[3]
    if (repo / ".git").exists():  # a clone (CI's, a developer's): its HEAD, maybe with a "+"
        head = subprocess.run(
            ["git", "rev-parse", "--short=12", "HEAD"], cwd=repo, capture_output=True, text=True
        ).stdout.strip()
        assert (git_commit(repo) or "").removesuffix("+") == head
    # A folder inside a checkout, but not its root (an installed package in a user's own
    # repository): no commit of someone else's project.
    inner = tmp_path / "project" / "site-packages" / "codecflow"
    inner.mkdir(parents=True)
    subprocess.run(["git", "init", "-q", str(tmp_path / "project")], check=True)
    assert git_commit(inner) is None
    assert git_commit(tmp_path) is None  # no checkout at all
    assert provenance().date.endswith(" UTC")
