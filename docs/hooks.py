"""MkDocs hooks: the pages generated from the code, so that they cannot drift from it.

- `<!-- codecflow:cli -->` becomes every subcommand's settings, from the pydantic configs
  (`codecflow.cli.help.fields_markdown`, the same source as `codecflow <command> --help`);
- `<!-- codecflow:configs -->` becomes the shipped configs, each with the first lines of its
  header comment.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from codecflow.cli.help import fields_markdown
from codecflow.cli.main import COMMANDS

ROOT = Path(__file__).resolve().parent.parent


def cli_reference() -> str:
    parts = []
    for name, command in COMMANDS.items():
        parts.append(f"## codecflow {name}\n\n{command.help}.\n")
        parts.append(fields_markdown(command.config))
        parts.append("")
    return "\n".join(parts)


def _header(path: Path) -> str:
    """The first paragraph of a config's header comment, as one line."""
    words = []
    for line in path.read_text().splitlines():
        if not line.startswith("#"):
            break
        text = line.lstrip("#").strip()
        if not text:
            break
        words.append(text)
    return " ".join(words).replace("|", "\\|")


def configs_reference() -> str:
    rows = ["| config | what it runs |", "|---|---|"]
    for path in sorted((ROOT / "configs").rglob("*.yaml")):
        name = path.relative_to(ROOT / "configs").with_suffix("").as_posix()
        rows.append(f"| `{name}` | {_header(path)} |")
    return "\n".join(rows)


def on_page_markdown(markdown: str, **_: Any) -> str:
    return markdown.replace("<!-- codecflow:cli -->", cli_reference()).replace(
        "<!-- codecflow:configs -->", configs_reference()
    )
