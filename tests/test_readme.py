"""The README's quick start as a newcomer types it after `make demo`: each command line of the
block after `<!-- quick-start -->`, run as written from a fresh shell (`env -i`, a PATH without
`~/.local/bin`, so no `uv`), in a folder laid out as the checkout (its `.venv`, `configs/` and
`data/`) so that what the lines write stays out of the repository."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from helpers import REPO

MARKER = "<!-- quick-start: each line is run from a fresh shell by tests/test_readme.py -->"


def quick_start_lines() -> list[str]:
    text = (REPO / "README.md").read_text()
    block = text.split(MARKER, 1)[1].split("```bash\n", 1)[1].split("```", 1)[0]
    return [line for line in block.splitlines() if line.strip() and not line.startswith("#")]


def test_the_quick_start_is_commands_of_the_installed_cli() -> None:
    lines = quick_start_lines()
    assert len(lines) >= 4
    assert all(line.startswith(".venv/bin/codecflow ") for line in lines)


@pytest.fixture(scope="module")
def checkout_like(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("newcomer")
    for name in (".venv", "configs", "data"):
        (folder / name).symlink_to(REPO / name)
    return folder


@pytest.mark.parametrize("line", quick_start_lines())
def test_each_quick_start_line_runs_from_a_fresh_shell(
    line: str, checkout_like: Path, prefect_api_url: str, tmp_path: Path
) -> None:
    # A fresh login's PATH (no ~/.local/bin), and nothing else of this process's environment but
    # the session's Prefect server (else each run would start its own, ~25 s).
    env = {
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "HOME": str(tmp_path),
        "PREFECT_API_URL": prefect_api_url,
        "CODECFLOW_THREADS": "1",
        "HF_HUB_OFFLINE": "1",
    }
    done = subprocess.run(
        ["env", "-i", *(f"{k}={v}" for k, v in env.items()), "bash", "-c", line],
        cwd=checkout_like, capture_output=True, text=True, timeout=900, check=False,
    )  # fmt: skip
    assert done.returncode == 0, f"{line}\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}"
    assert "Traceback" not in done.stderr
    assert os.path.exists(checkout_like / ".venv")
