"""A config's inputs and outputs checked before any Prefect server starts: one line, at once.

A run's inputs were checked by the tasks that read them, so a missing manifest was reported
after the ephemeral server had started (20 s, 71 lines, two tracebacks), and an `s3://` path
without credentials after 19.6 s, as botocore's `NoCredentialsError`, exit 1. Here, from the
validated config alone, in well under a second (no Prefect, torch or s3fs import):

- inputs (`manifest`, `prompt`, `regenerate_source`, acquire's `source`): a local file that
  exists (not a folder); `dataset`, `checkpoint` and `train_run`: a local folder;
- outputs (`out`, `root`, `download_dir`, `index`): not an existing file;
- every `s3://` value: credentials botocore would find (the environment, `AWS_PROFILE`, the
  shared files), and an explicit endpoint (`AWS_ENDPOINT_URL[_S3]`) that accepts a connection;
- `log_to`: the package of each tracker it names (tensorboard, wandb) is installed.

What a check cannot see (an object missing from a bucket, a server that refuses the
credentials) is still reported by the task that meets it, as before.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from pydantic import BaseModel

from codecflow.cli.config import CliError
from codecflow.schemas.sources import (
    LIBRILIGHT_ARCHIVES,
    LIBRILIGHT_SPLITS,
    is_archive,
    resolve_sources,
    source_layout,
)
from codecflow.tasks.core.errors import CodecflowError
from codecflow.tasks.core.tracking import check_log_to

__all__ = ["check_config", "check_s3"]

#: A Hugging Face audiofolder's own table, read when `metadata` is not set.
_FOLDER_TABLES = ("metadata.csv", "metadata.jsonl")
_INPUT_FILES = {"manifest", "prompt", "regenerate_source", "metadata", "supervisions"}
_INPUT_FOLDERS = {"dataset", "checkpoint", "train_run"}
_OUTPUTS = {"out", "root", "download_dir", "index"}
#: Seconds to wait for an S3 endpoint's TCP connection: a local or LAN server answers in ms.
_CONNECT_TIMEOUT = 2.0


def _fields(config: BaseModel, prefix: str = "") -> Iterator[tuple[BaseModel, str, str, Any]]:
    """(section, field name, dotted path, value) of every field, depth first."""
    for name in type(config).model_fields:
        value = getattr(config, name)
        if isinstance(value, BaseModel):
            yield from _fields(value, f"{prefix}{name}.")
        else:
            yield config, name, f"{prefix}{name}", value


def _local(value: str) -> str | None:
    """The local path a value names (`file://` stripped), or None for another URL."""
    if value.startswith("file://"):
        return value[len("file://") :]
    return None if "://" in value else value


def _check_input(where: str, value: str, folder: bool) -> None:
    path = _local(value)
    if path is None:
        return
    kind = "folder" if folder else "file"
    if not os.path.exists(path):
        raise CliError(f"{where}: {kind} not found: {path}")
    if folder != os.path.isdir(path):
        other = "a folder" if os.path.isdir(path) else "a file"
        raise CliError(f"{where}: {path} is {other}, expected a {kind}")


def _check_output(where: str, value: str) -> None:
    path = _local(value)
    if path is not None and os.path.exists(path) and not os.path.isdir(path):
        raise CliError(f"{where}: {path} is a file, expected a folder")


def _has_credentials() -> bool:
    """Whether botocore's default chain finds credentials: the environment, a profile, the
    shared files. Read from the environment and files only: no instance-metadata request."""
    if os.environ.get("AWS_ACCESS_KEY_ID") and os.environ.get("AWS_SECRET_ACCESS_KEY"):
        return True
    if os.environ.get("AWS_PROFILE") or os.environ.get("AWS_WEB_IDENTITY_TOKEN_FILE"):
        return True
    if os.environ.get("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI") or os.environ.get(
        "AWS_CONTAINER_CREDENTIALS_FULL_URI"
    ):
        return True
    files = (
        os.environ.get("AWS_SHARED_CREDENTIALS_FILE", "~/.aws/credentials"),
        os.environ.get("AWS_CONFIG_FILE", "~/.aws/config"),
    )
    # On EC2 the instance role answers from the metadata service: a user there opts in with
    # AWS_EC2_METADATA_DISABLED=false, which we take as "credentials will be found".
    metadata = os.environ.get("AWS_EC2_METADATA_DISABLED", "").lower() == "false"
    return metadata or any(Path(f).expanduser().is_file() for f in files)


def check_s3(where: str, url: str) -> None:
    """CliError when `url` (s3://) cannot be reached: no credentials, or an explicit endpoint
    that refuses a connection within `_CONNECT_TIMEOUT` seconds."""
    if not _has_credentials():
        raise CliError(
            f"{where}: {url} needs S3 credentials: set AWS_ACCESS_KEY_ID and "
            "AWS_SECRET_ACCESS_KEY (or AWS_PROFILE)"
        )
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    if not endpoint:
        return
    parts = urlsplit(endpoint)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        with socket.create_connection((parts.hostname or "", port), timeout=_CONNECT_TIMEOUT):
            pass
    except OSError as err:
        reason = err.strerror or type(err).__name__
        raise CliError(
            f"{where}: the S3 endpoint {endpoint} (AWS_ENDPOINT_URL) is unreachable: {reason}"
        ) from None


def _check_folder_source(where: str, section: BaseModel, source: str, md5: str | None) -> None:
    """`layout: audio` with a folder or prefix: it must be there (a folder), and no md5; a
    speaker table must be named or be the folder's own."""
    if md5:
        raise CliError(f"{where}: md5 checks an archive; {source} is a folder: leave md5 out")
    path = _local(source)
    table = getattr(section, "speaker_from", None) == "table" and not getattr(
        section, "metadata", None
    )
    if table and path is not None and os.path.isdir(path):
        if not any(os.path.isfile(os.path.join(path, n)) for n in _FOLDER_TABLES):
            raise CliError(
                f"{where}: speaker_from 'table' needs a metadata table: set metadata, or put "
                "metadata.csv or metadata.jsonl in the source folder"
            )
    if source.startswith("s3://"):
        check_s3(where, source)
    elif path is not None and not os.path.exists(path):
        _source_not_found(path)
    elif path is not None:
        _check_input(where, source, folder=True)


def _source_not_found(path: str) -> None:
    # The tasks' own words ("source not found"), and the names when it may be a typo.
    names = ", ".join([*LIBRILIGHT_ARCHIVES, *LIBRILIGHT_SPLITS])
    hint = f" (nor an archive or split name: {names})" if "/" not in path else ""
    raise CliError(f"source not found: {path}{hint}")


def _check_source(where: str, section: BaseModel) -> None:
    """acquire's source: each archive it names, when local, must be a file; a folder of audio
    (`layout: audio`) must be a folder."""
    source, md5, mirror = (getattr(section, n, None) for n in ("source", "md5", "mirror"))
    layout = getattr(section, "layout", "librilight")
    resolved = source_layout(source, layout) if isinstance(source, str) else layout
    if resolved == "lhotse":
        _check_input(where, str(source), folder=False)  # the CutSet or RecordingSet file
        return
    if resolved == "audio" and isinstance(source, str) and not is_archive(source):
        _check_folder_source(where, section, source, md5)
        return
    try:
        sources = resolve_sources(source, md5, mirror)  # type: ignore[arg-type]
    except ValueError as err:
        raise CliError(f"{where}: {err}") from None
    for source in sources:
        path = _local(source.url)
        if source.url.startswith("s3://"):
            check_s3(where, source.url)
        elif path is not None and not os.path.exists(path):
            _source_not_found(path)
        elif path is not None:
            _check_input(where, source.url, folder=False)


def check_config(config: BaseModel) -> None:
    """Raise CliError (one line) for the first input or output of `config` that cannot work."""
    for section, name, where, value in _fields(config):
        if name == "log_to" and value:
            try:
                check_log_to(value)
            except CodecflowError as err:  # "log_to: ..." named by its section
                raise CliError(f"{where.removesuffix('log_to')}{err}") from None
        if not isinstance(value, str) or not value:
            continue
        if name == "checkpoint" and getattr(section, "train_run", None):
            continue  # evaluate: the run folder's newest checkpoint is used instead
        if name == "source":
            _check_source(where, section)
        elif value.startswith("s3://"):
            check_s3(where, value)
        elif name in _INPUT_FILES:
            _check_input(where, value, folder=False)
        elif name in _INPUT_FOLDERS:
            _check_input(where, value, folder=True)
        elif name in _OUTPUTS:
            _check_output(where, value)
