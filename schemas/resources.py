"""The files that ship inside the package: the configs (`configs/`) and the embedded data
(`data/`: the demo corpus, the post's prompt).

In the repository they are configs/ and data/ at the root; in the wheel they are
`codecflow/configs` and `codecflow/data` (`codecflow/configs` links to `../configs` in the
checkout, see pyproject.toml), so `PACKAGE_ROOT / "data"` names them in both.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["BUILT_SITE", "DOCS_SOURCE_URL", "PACKAGE_ROOT", "docs_url", "packaged_path"]

#: The installed `codecflow` package folder (its configs/ and data/ are the repository's).
PACKAGE_ROOT = Path(__file__).absolute().parent.parent
#: The documentation site `make docs` builds in a checkout (an installed wheel has none).
BUILT_SITE = PACKAGE_ROOT.parent / "site"
#: The documentation's pages where no site is built here: their sources, as GitHub renders them.
DOCS_SOURCE_URL = "https://github.com/codecflow/codecflow/blob/main/docs"


def docs_url(page: str, from_folder: str | os.PathLike[str] | None = None) -> str:
    """The link to documentation page `page` ("guides/evaluation") for a file written in
    `from_folder`: a relative path into the locally built site when there is one (so a report
    opened from the disk opens the page beside it), else the page's source on GitHub."""
    built = BUILT_SITE / f"{page}.html"
    if from_folder is not None and "://" not in os.fspath(from_folder) and built.is_file():
        return Path(os.path.relpath(built, Path(from_folder).absolute())).as_posix()
    return f"{DOCS_SOURCE_URL}/{page}.md"


def packaged_path(path: str) -> str:
    """`path` itself, unless it is a relative path that names nothing in the current folder
    but a file that ships with codecflow (`data/prompts/prompt_librilight_uk_4s.wav`): then that
    file's absolute path. So the defaults and the packaged configs work from any folder, while
    a user's own `data/...` in the current folder always wins."""
    if not path or "://" in path or os.path.isabs(path) or os.path.lexists(path):
        return path
    shipped = PACKAGE_ROOT / path
    parts = Path(path).parts
    if parts and parts[0] in ("data", "configs") and ".." not in parts and shipped.is_file():
        return str(shipped)
    return path
