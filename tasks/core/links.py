"""Links to outputs that a browser can open: `http://` through the runs folder's file server, or
the path as text.

The Prefect UI cannot open a local file: the new UI renders a `file://` link without an `href`
and the old one refuses it. `make server` (codecflow/cli/server.py) therefore serves the runs folder
read-only over HTTP and tells its worker, and so every flow run, where: `CODECFLOW_FILES_URL`
(`http://127.0.0.1:4201`) serves the folder `CODECFLOW_FILES_ROOT`. An output below that folder
gets an `http://` URL; any other one (no file server, a folder outside it, an `s3://` URL) is
named as text, which is honest about where it is rather than a link that goes nowhere.
"""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import quote

from codecflow.tasks.core.storage import is_remote, local_path

__all__ = ["FILES_ROOT_ENV", "FILES_URL_ENV", "file_url", "markdown_link", "where"]

#: The base URL of the file server (codecflow/cli/files_server.py), e.g. http://127.0.0.1:4201.
FILES_URL_ENV = "CODECFLOW_FILES_URL"
#: The local folder that URL serves (the runs folder).
FILES_ROOT_ENV = "CODECFLOW_FILES_ROOT"


def file_url(path: str | Path) -> str | None:
    """The `http://` URL of a local `path` below the served folder; None when there is no file
    server, or the path is outside its folder or not local. A folder's URL ends with `/`, so
    that the relative links of its listing (or of its index.html) resolve inside it."""
    base, root = os.environ.get(FILES_URL_ENV), os.environ.get(FILES_ROOT_ENV)
    if not base or not root or is_remote(path):
        return None
    # Resolved as the server resolves what it serves: a symlinked run folder maps to its target.
    real, top = os.path.realpath(local_path(path)), os.path.realpath(root)
    if real != top and not real.startswith(top.rstrip(os.sep) + os.sep):
        return None
    relative = Path(os.path.relpath(real, top)).as_posix()
    url = base.rstrip("/") + "/" + ("" if relative == "." else quote(relative))
    return url + "/" if os.path.isdir(real) and not url.endswith("/") else url


def where(path: str | Path) -> str:
    """`path` as text to read: an absolute local path (the worker's folder is not the reader's),
    or the URL it is."""
    return str(path) if is_remote(path) else os.path.abspath(local_path(path))


def markdown_link(path: str | Path, text: str) -> str:
    """`[text](http://...)` when the file server serves `path`, else "text: `<path>`"."""
    url = file_url(path)
    return f"[{text}]({url})" if url is not None else f"{text}: `{where(path)}`"
