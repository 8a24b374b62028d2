"""The files that ship inside the package: the configs (`configs/`) and the embedded data
(`data/`: the demo corpus, the post's prompt).

In the repository they are configs/ and data/ at the root; in the wheel they are
`codecflow/configs` and `codecflow/data` (`codecflow/configs` links to `../configs` in the
checkout, see pyproject.toml), so `PACKAGE_ROOT / "data"` names them in both.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["PACKAGE_ROOT", "packaged_path"]

#: The installed `codecflow` package folder (its configs/ and data/ are the repository's).
PACKAGE_ROOT = Path(__file__).absolute().parent.parent


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
