"""How fast the CLI and the Python API answer: this checkout against the last release (0.1.0),
measured side by side in one run, with the same virtual environment and machine.

    .venv/bin/python bench/cli_speed.py               # 5 repeats of each fast command
    .venv/bin/python bench/cli_speed.py --repeats 3 --json out.json

Measured (median wall seconds of whole processes, each from an empty folder):

- `codecflow --help` and `codecflow tokenize --help`;
- a bad input: `codecflow tokenize --set manifest=<missing file>`, and an `s3://` manifest with
  no credentials (0.1.0 started Prefect's ephemeral server first: one run of each, by default);
- `import codecflow`, `import codecflow.api` (the names a training script uses) and, for
  reference, `import torch` alone: the API's cost beyond torch is their difference.

The release is checked out with `git worktree` at `--baseline` (0.1.0's last commit) into a
temporary folder and run as it ran then (`python -m flows.cli` from its checkout, whose
pyproject.toml held its Prefect settings); this checkout runs `.venv/bin/codecflow`. Nothing
else should run on the machine meanwhile: the numbers are wall times.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PYTHON = REPO / ".venv" / "bin" / "python"
#: 0.1.0's last commit (the release before one top-level package).
BASELINE = "a1ffa69"


def _time(command: Sequence[str], cwd: Path, env: dict[str, str], timeout: float) -> float:
    started = time.perf_counter()
    subprocess.run(list(command), cwd=cwd, env=env, capture_output=True, timeout=timeout)
    return time.perf_counter() - started


def _median(command: Sequence[str], cwd: Path, env: dict[str, str], repeats: int) -> float:
    return statistics.median(_time(command, cwd, env, 600) for _ in range(repeats))


def _env(home: Path) -> dict[str, str]:
    keep = ("PATH", "LANG", "LC_ALL", "TMPDIR")
    env = {k: v for k, v in os.environ.items() if k in keep}
    # No credentials anywhere: the s3:// case must find none.
    return {**env, "HOME": str(home), "AWS_SHARED_CREDENTIALS_FILE": str(home / "none")}


def _cases(cli: list[str], missing: str) -> dict[str, list[str]]:
    return {
        "codecflow --help": [*cli, "--help"],
        "codecflow tokenize --help": [*cli, "tokenize", "--help"],
        "bad input: a missing manifest": [*cli, "tokenize", "--set", f"manifest={missing}"],
        "bad input: s3:// without credentials": [
            *cli,
            "tokenize",
            "--set",
            "manifest=s3://bucket/segments.parquet",
        ],  # fmt: skip
    }


def _slow(name: str) -> bool:
    return name.startswith("bad input")


def measure(repeats: int, slow_repeats: int) -> dict[str, dict[str, float]]:
    results: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory(prefix="cli-speed-") as tmp:
        root = Path(tmp)
        old, empty, home = root / "v0.1.0", root / "empty", root / "home"
        empty.mkdir()
        home.mkdir()
        subprocess.run(
            ["git", "worktree", "add", "--detach", str(old), BASELINE],
            cwd=REPO, check=True, capture_output=True,
        )  # fmt: skip
        try:
            env = _env(home)
            missing = str(empty / "missing.parquet")
            new_cases = _cases([str(REPO / ".venv" / "bin" / "codecflow")], missing)
            old_cases = _cases([str(PYTHON), "-m", "flows.cli"], missing)
            for name in new_cases:
                n = slow_repeats if _slow(name) else repeats
                results[name] = {
                    "0.1.0": _median(old_cases[name], old, env, n),
                    "0.2.0": _median(new_cases[name], empty, env, repeats),
                }
            imports = {
                "import torch": ("import torch", "import torch"),
                "import codecflow": ("import codecflow", "import codecflow"),
                "import codecflow.api (its names)": ("import codecflow", "import codecflow.api"),
            }
            for name, (old_code, new_code) in imports.items():
                results[name] = {
                    "0.1.0": _median([str(PYTHON), "-c", old_code], old, env, repeats),
                    "0.2.0": _median([str(PYTHON), "-c", new_code], empty, env, repeats),
                }
        finally:
            subprocess.run(
                ["git", "worktree", "remove", "--force", str(old)], cwd=REPO, capture_output=True
            )
    return results


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=5, help="runs of each fast command")
    parser.add_argument("--slow-repeats", type=int, default=1, help="runs of 0.1.0's bad inputs")
    parser.add_argument("--json", type=Path, help="also write the numbers here")
    args = parser.parse_args(argv)
    results = measure(args.repeats, args.slow_repeats)
    print(f"{'median wall seconds, whole process':42} {'0.1.0':>8} {'0.2.0':>8} {'0.1/0.2':>8}")
    for name, row in results.items():
        ratio = row["0.1.0"] / row["0.2.0"]
        print(f"{name:42} {row['0.1.0']:8.2f} {row['0.2.0']:8.2f} {ratio:7.1f}x")
    torch_new = results["import torch"]["0.2.0"]
    beyond = results["import codecflow.api (its names)"]["0.2.0"] - torch_new
    print(f"import codecflow.api beyond import torch (0.2.0): {beyond:.2f} s")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
