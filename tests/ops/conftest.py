"""The live server of the operations tests: `make server`'s set-up in a temporary folder."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from live_server import LiveServer
from live_server import live_server as start_live_server


@pytest.fixture(scope="session")
def live_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """A Prefect server with the work pool, the `gpu` limit, a worker and every deployment of
    prefect.yaml, for the whole session; its process groups are killed at the end."""
    with start_live_server(tmp_path_factory.mktemp("live-server")) as server:
        yield server
