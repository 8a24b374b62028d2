"""The wheel as a researcher installs it: built with `uv build`, installed into fresh venvs in a
folder that is a typical research repository of its own (`models/`, `tasks/`, `utils.py`).

- the wheel holds one top-level package, `codecflow`, with the stages, the shipped configs and
  the embedded corpus inside it;
- the core install (no extra) runs the Python API guide's example, imports no Prefect, moshi,
  torchaudio or huggingface_hub, and names the missing extra in one line;
- `[all]` runs `codecflow --version`, `codecflow tokenize --help` and the whole demo pipeline
  (`codecflow demo`) from that folder;
- the user's own packages still import afterwards, and win over nothing of codecflow's.

Versions come from the lock (`uv export` as constraints) and packages from uv's cache, which
`make test`'s sync filled: the venvs are hard links, seconds each.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
import zipfile
from collections.abc import Sequence
from pathlib import Path

import pytest
from helpers import PROMPT, REPO
from test_python_api import DEMO_DATASET, guide_example

import codecflow


def _uv() -> list[str]:
    """uv as `make test` found it (CODECFLOW_UV), else on PATH, else `python3 -m uv`."""
    if os.environ.get("CODECFLOW_UV"):
        return shlex.split(os.environ["CODECFLOW_UV"])
    found = shutil.which("uv")
    return [found] if found else ["python3", "-m", "uv"]


def _run(args: Sequence[str], cwd: Path, env: dict[str, str] | None = None, timeout: float = 600):
    done = subprocess.run(
        list(args), cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )
    assert done.returncode == 0, f"{args}: {done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    _run([*_uv(), "build", "--wheel", "--out-dir", str(out)], cwd=REPO)
    (built,) = out.glob("codecflow-*.whl")
    return built


@pytest.fixture(scope="module")
def constraints(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("lock") / "constraints.txt"
    export = ["export", "--frozen", "--all-extras", "--no-dev", "--no-hashes", "--no-emit-project"]
    _run([*_uv(), *export, "--output-file", str(path)], cwd=REPO)
    return path


def _venv(root: Path, wheel: Path, constraints: Path, extras: str = "") -> Path:
    """A fresh venv under `root` with the wheel (and `extras`) installed; its bin folder."""
    venv = root / "venv"
    _run([*_uv(), "venv", "--quiet", "--python", sys.executable, str(venv)], cwd=root)
    python = venv / "bin" / "python"
    install = ["pip", "install", "--quiet", "--python", str(python), "-c", str(constraints)]
    _run([*_uv(), *install, f"{wheel}{extras}"], cwd=root)
    return venv / "bin"


def _research_repo(root: Path) -> Path:
    """A folder as a researcher's repository looks: its own models/, tasks/ and utils.py."""
    repo = root / "my-research"
    for package, module, body in (
        ("models", "transformer.py", "NAME = 'my transformer'\n"),
        ("tasks", "pretrain.py", "NAME = 'my pretraining'\n"),
    ):
        (repo / package).mkdir(parents=True)
        (repo / package / "__init__.py").write_text("")
        (repo / package / module).write_text(body)
    (repo / "utils.py").write_text("NAME = 'my utils'\n")
    return repo


#: Run in the research repository: its own packages import, codecflow's are codecflow.*.
_OWN_PACKAGES = (
    "import models.transformer, tasks.pretrain, utils, codecflow.tasks, codecflow.models\n"
    "assert tasks.pretrain.NAME == 'my pretraining' and utils.NAME == 'my utils'\n"
    "assert models.transformer.NAME == 'my transformer'\n"
    "assert codecflow.tasks.__file__ != tasks.__file__\n"
    "print('own packages ok')\n"
)


def _env(bin_dir: Path, home: Path, **extra: str) -> dict[str, str]:
    """A clean environment: the venv first on PATH, nothing of the checkout's."""
    keep = {k: v for k, v in os.environ.items() if k in ("LANG", "LC_ALL", "TMPDIR")}
    path = f"{bin_dir}:/usr/local/bin:/usr/bin:/bin"
    return {**keep, "PATH": path, "HOME": str(home), "CODECFLOW_THREADS": "1", **extra}


def test_the_wheel_installs_one_top_level_package_with_its_data(wheel: Path) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert tops == {"codecflow"}
    for shipped in (
        "codecflow/flows/pipeline.py",
        "codecflow/tasks/loaders.py",
        "codecflow/models/gpt.py",
        "codecflow/schemas/configs.py",
        "codecflow/cli/main.py",
        "codecflow/configs/demo.yaml",
        "codecflow/configs/post-mimi-8.yaml",
        "codecflow/data/librilight-tiny/librilight-tiny.tar",
        "codecflow/data/prompts/prompt_librilight_uk_4s.wav",
    ):
        assert shipped in names, shipped
    assert not [n for n in names if "__pycache__" in n or "/small/" in n]
    assert f"codecflow-{codecflow.__version__}-" in wheel.name
    license_files = [n for n in names if n.endswith(".dist-info/licenses/LICENSE")]
    assert license_files, "the MIT LICENSE ships in the wheel's metadata"


def test_the_core_install_reads_datasets_without_the_extras(
    wheel: Path, constraints: Path, tiny_dataset: Path, tmp_path: Path
) -> None:
    bin_dir = _venv(tmp_path, wheel, constraints)
    repo = _research_repo(tmp_path)
    (repo / "data" / "prompts").mkdir(parents=True)
    shutil.copy(PROMPT, repo / "data" / "prompts" / PROMPT.name)  # the user's own audio
    example = guide_example().replace(DEMO_DATASET, str(tiny_dataset))
    script = (
        example
        + "import sys\n"
        + "heavy = {'prefect', 'moshi', 'torchaudio', 'huggingface_hub'} & set(sys.modules)\n"
        + "assert not heavy, heavy\n"
        + "assert inputs.shape == (8, 256) and codes.shape[:2] == (1, 1), codes.shape\n"
        + "assert repr(codecflow.TokenDataset).startswith(\"<class 'codecflow.TokenDataset'\")\n"
        + "try:\n    codecflow.load_tokenizer('mimi_8_rvq')\nexcept ImportError as err:\n"
        + "    print(err)\n"
        + _OWN_PACKAGES
    )
    done = _run([str(bin_dir / "python"), "-c", script], cwd=repo, env=_env(bin_dir, tmp_path))
    assert "Mimi needs the mimi extra: pip install 'codecflow[mimi]'" in done.stdout
    assert "own packages ok" in done.stdout
    # The CLI of the core install: its help answers, a flow names the extra it needs.
    version = _run([str(bin_dir / "codecflow"), "--version"], repo, _env(bin_dir, tmp_path))
    assert version.stdout.strip() == f"codecflow {codecflow.__version__}"
    demo = subprocess.run(
        [str(bin_dir / "codecflow"), "demo"], cwd=repo, env=_env(bin_dir, tmp_path),
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert demo.returncode == 2, demo.stderr
    assert demo.stderr.strip().splitlines() == [
        "error: the flows need the pipeline extra: pip install 'codecflow[pipeline]'"
    ]
    assert not (repo / "runs").exists()


def test_all_extras_run_the_demo_from_a_research_repository(
    wheel: Path, constraints: Path, prefect_api_url: str, tmp_path: Path
) -> None:
    bin_dir = _venv(tmp_path, wheel, constraints, "[all]")
    repo = _research_repo(tmp_path)
    env = _env(bin_dir, tmp_path, PREFECT_API_URL=prefect_api_url)
    version = _run([str(bin_dir / "codecflow"), "--version"], repo, env)
    assert version.stdout.strip() == f"codecflow {codecflow.__version__}"
    help_text = _run([str(bin_dir / "codecflow"), "tokenize", "--help"], repo, env).stdout
    assert "tokenizer" in help_text and "manifest" in help_text
    done = _run([str(bin_dir / "codecflow"), "demo", "--set", "train_lm.steps=30"], repo, env)
    outputs = ("manifest", "dataset", "checkpoint", "report", "index")
    lines = dict(
        line.split(": ", 1) for line in done.stdout.splitlines() if line.startswith(outputs)
    )
    report = repo / "runs" / "demo" / "report"
    assert (repo / lines["report"]).resolve() == report.resolve()
    assert (report / "index.html").is_file() and (report / "summary.json").is_file()
    assert (repo / "runs" / "demo" / "tokens" / "mu-law-256" / "dataset.json").is_file()
    own = _run([str(bin_dir / "python"), "-c", _OWN_PACKAGES], repo, env)
    assert "own packages ok" in own.stdout
