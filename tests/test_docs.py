"""The documentation as a reader meets it: the site builds strictly (a broken link, a missing
page or an undocumented parameter fails), and every `bash` and `python` block of the README and
the site is an example that runs or is checked.

Each block is preceded by a marker:

- `<!-- example: run (...) -->`: executed here (Python blocks on the tiny corpus, from a folder
  laid out as the checkout after `make demo`), or by the test the marker names (the README's
  quick start: tests/test_readme.py; the Python API guide: tests/test_python_api.py);
- `<!-- example: check (why) -->`: it needs real data, a GPU or a server: bash blocks are parsed
  by `bash -n` and every `codecflow` line is checked against the CLI (the subcommand exists,
  every `--set` path is a field of its config, a `--config` under configs/ exists), `make`
  targets against the Makefile, `bench/` scripts against the folder; Python blocks compile and
  use only names `codecflow` exports.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from helpers import REPO
from pydantic import BaseModel
from speech_fixture import mixed_folder

import codecflow
from codecflow.cli.help import _section
from codecflow.cli.main import COMMANDS

PAGES = [REPO / "README.md", *sorted((REPO / "docs").rglob("*.md"))]
MARKER = re.compile(r"<!-- example: (run|check) \(([^)]*)\) -->\n```(bash|python)\n(.*?)```", re.S)
FENCE = re.compile(r"^```(bash|python)\n", re.M)
#: Subcommands that are not flows (codecflow/cli/main.py).
OTHER_COMMANDS = {"sizes", "plan", "tokenizers", "threads", "server", "demo", "audit-tokenizer"}
#: The marker of an example this file runs; any other `run` marker names the test that does.
RUN_HERE_MARK = "tests/test_docs.py"


@dataclass(frozen=True)
class Example:
    page: str
    mode: str  # "run" or "check"
    why: str
    language: str
    code: str

    def __str__(self) -> str:
        return f"{self.page}: {self.language} ({self.mode}: {self.why})"


def examples() -> list[Example]:
    found = []
    for page in PAGES:
        text = page.read_text()
        name = page.relative_to(REPO).as_posix()
        found += [Example(name, *m.groups()) for m in MARKER.finditer(text)]
    return found


def quick_start_blocks() -> int:
    return (REPO / "README.md").read_text().count("<!-- quick-start:")


def test_every_code_block_is_a_marked_example() -> None:
    for page in PAGES:
        text = page.read_text()
        fences = len(FENCE.findall(text))
        marked = len(MARKER.findall(text)) + (
            quick_start_blocks() if page.name == "README.md" else 0
        )
        assert fences == marked, f"{page.relative_to(REPO)}: {fences - marked} unmarked block(s)"
    assert len(examples()) >= 15


def test_the_getting_started_page_shows_the_readmes_quick_start() -> None:
    def block(text: str, marker: str) -> str:
        return text.split(marker, 1)[1].split("```bash\n", 1)[1].split("```", 1)[0]

    readme = block((REPO / "README.md").read_text(), "<!-- quick-start:")
    index = block((REPO / "docs" / "index.md").read_text(), "the README's quick start")
    assert index == readme


def test_the_site_builds_strictly(tmp_path: Path) -> None:
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    done = subprocess.run(
        [str(Path(sys.executable).parent / "mkdocs"), "build", "--strict", "-d", str(tmp_path)],
        cwd=REPO, capture_output=True, text=True, timeout=600, env=env, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    for page in ("index.html", "reference/cli.html", "reference/api.html", "benchmarks.html"):
        assert (tmp_path / page).is_file(), page
    cli = (tmp_path / "reference" / "cli.html").read_text()
    # Generated from the configs: a field added to a config appears without editing the page.
    assert "train_codec.spectral_loss" in cli and "level_weights_normalized" in cli
    api = (tmp_path / "reference" / "api.html").read_text()
    assert "codecflow.open_dataset" in api and "TokenReader" in api


# --- check: what does not run here is parsed and its names are checked -------------------------


def _field_exists(model: type[BaseModel], path: str) -> bool:
    head, _, rest = path.partition(".")
    aliases = {
        alias
        for name, field in model.model_fields.items()
        for alias in [name, *getattr(field.validation_alias, "choices", [])]
        if isinstance(alias, str)
    }
    if head not in aliases:
        return False
    if not rest:
        return True
    section = _section(model.model_fields[head].annotation)
    return section is not None and _field_exists(section, rest)


def check_command(words: list[str]) -> list[str]:
    """What is wrong with one command line of a bash example (empty: nothing)."""
    problems = []
    if words[0].endswith("codecflow"):
        command = words[1] if len(words) > 1 else ""
        if command.startswith("-"):
            return []
        if command not in COMMANDS and command not in OTHER_COMMANDS:
            return [f"no subcommand {command!r}"]
        config = COMMANDS[command].config if command in COMMANDS else None
        for flag, value in zip(words, words[1:], strict=False):
            if flag == "--set" and config is not None:
                key = value.split("=", 1)[0]
                if not _field_exists(config, key):
                    problems.append(f"{command}: no setting {key!r}")
            if flag == "--config" and value.startswith("configs/") and not (REPO / value).exists():
                problems.append(f"no config {value}")
    elif words[0] == "make":
        targets = re.findall(r"^([\w-]+):", (REPO / "Makefile").read_text(), re.M)
        problems += [f"no make target {t!r}" for t in words[1:] if t not in targets]
    elif words[0].endswith("python") and len(words) > 1 and words[1].startswith("bench/"):
        if not (REPO / words[1]).is_file():
            problems.append(f"no script {words[1]}")
    return problems


def _command_lines(code: str) -> list[list[str]]:
    """Each command of a bash block as its words: continued lines joined, a quote left open
    carried to the next line, comments dropped, `<placeholders>` kept as words."""
    lines, pending = [], ""
    for line in code.replace("\\\n", " ").replace("<", "").replace(">", "").splitlines():
        pending = f"{pending} {line}" if pending else line
        try:
            words = shlex.split(pending, comments=True)
        except ValueError:  # an open quote: the command goes on
            continue
        pending = ""
        if words:
            lines.append(words)
    assert not pending, f"unclosed quote in {pending!r}"
    return lines


@pytest.mark.parametrize("example", examples(), ids=str)
def test_each_example_parses_and_names_what_exists(example: Example) -> None:
    if example.language == "python":
        compile(example.code, example.page, "exec")
        for name in re.findall(r"(?<![\w\"'.])codecflow\.([A-Za-z_]\w*)", example.code):
            assert name in codecflow.__all__, f"codecflow.{name} is not exported"
        return
    done = subprocess.run(["bash", "-n"], input=example.code, text=True, capture_output=True)
    assert done.returncode == 0, done.stderr
    problems = [p for words in _command_lines(example.code) for p in check_command(words)]
    assert not problems, problems


def test_the_checker_finds_what_does_not_exist() -> None:
    assert check_command(["codecflow", "train-lm", "--set", "stpes=3"]) == [
        "train-lm: no setting 'stpes'"
    ]
    assert check_command(["codecflow", "pipeline", "--set", "train_lm.steps=3"]) == []
    assert check_command(["codecflow", "pipeline", "--set", "train_lm.nope=3"])
    assert check_command(["codecflow", "fly"]) == ["no subcommand 'fly'"]
    assert check_command(["make", "dmeo"]) == ["no make target 'dmeo'"]


# --- run: the Python examples on the tiny corpus ------------------------------------------------


@pytest.fixture(scope="module")
def after_demo(tiny_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder laid out as the checkout after `make demo`: data/, configs/ and the demo's
    mu-law dataset (the tiny corpus's) at runs/demo/tokens/mu-law-256; and a user's folder of
    recordings."""
    folder = tmp_path_factory.mktemp("reader")
    for name in ("data", "configs"):
        (folder / name).symlink_to(REPO / name)
    (folder / "runs" / "demo" / "tokens").mkdir(parents=True)
    (folder / "runs" / "demo" / "tokens" / "mu-law-256").symlink_to(tiny_dataset)
    # "Your own audio": a folder of mixed formats, rates and speakers (tests/speech_fixture.py).
    (folder / "my_recordings").symlink_to(mixed_folder(tmp_path_factory.mktemp("speech")))
    return folder


RUN_HERE = [e for e in examples() if e.mode == "run" and e.why.startswith(RUN_HERE_MARK)]


def test_each_example_run_elsewhere_names_a_test_that_reads_it() -> None:
    for example in examples():
        if example.mode != "run" or example.why.startswith(RUN_HERE_MARK):
            continue
        test = REPO / example.why.split(",", 1)[0]
        assert test.is_file(), f"{example}: no test {test}"
        page = Path(example.page)
        # The test reads the page the example is on (the README's quick start: README.md).
        assert page.name in test.read_text() or "the same lines" in example.why, str(example)


@pytest.mark.parametrize("example", RUN_HERE, ids=str)
def test_each_run_example_runs(example: Example, after_demo: Path) -> None:
    assert example.language == "python", "bash examples run through tests/test_readme.py"
    done = subprocess.run(
        [sys.executable, "-c", example.code], cwd=after_demo, capture_output=True, text=True,
        timeout=600, env={**os.environ, "CODECFLOW_THREADS": "1"}, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Traceback" not in done.stderr
