"""codecflow/cli/server.py without a server: a taken port, nothing to stop, and a stop that ends only
the processes it started."""

from __future__ import annotations

import json
import socket
import subprocess
from pathlib import Path

import pytest
from live_server import server_module

from codecflow.cli import processes, server_command


def test_start_refuses_a_taken_port_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        status = server_command.main(["start", "--home", str(tmp_path), "--port", str(port)])
    captured = capsys.readouterr()
    assert status == 2
    assert captured.err == (
        f"error: port {port} on 127.0.0.1 is taken by another process; stop it or pass --port\n"
    )
    assert not (tmp_path / "pids.json").exists()


def test_stop_with_nothing_recorded(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert server_command.main(["stop", "--home", str(tmp_path)]) == 0
    assert "nothing to stop" in capsys.readouterr().out


def test_stop_ends_the_recorded_group_and_nothing_else(tmp_path: Path) -> None:
    server = server_module()
    ours = subprocess.Popen(["sleep", "60"], start_new_session=True)
    other = subprocess.Popen(["sleep", "60"], start_new_session=True)
    try:
        pids = {
            "server": ours.pid,
            "server_started": processes.start_ticks(ours.pid),
            # A pid that was reused by another process since (it started at another time).
            "worker": other.pid,
            "worker_started": 1,
        }
        (tmp_path / "pids.json").write_text(json.dumps(pids))
        assert server.stop(tmp_path) == [f"server (pid {ours.pid})"]
        assert ours.wait(timeout=5) is not None
        assert other.poll() is None
        assert not (tmp_path / "pids.json").exists()
    finally:
        for child in (ours, other):
            child.kill()
            child.wait()


def test_the_command_line_reaches_the_server_commands(tmp_path: Path) -> None:
    """`codecflow server --help` and `codecflow server stop`, as a user types them."""
    import sys

    help_text = subprocess.run(
        [sys.executable, "-m", "codecflow", "server", "--help"],
        capture_output=True, text=True, check=True, timeout=60,
    ).stdout  # fmt: skip
    assert help_text.startswith("usage: codecflow server") and "{start,stop}" in help_text
    stop = subprocess.run(
        [sys.executable, "-m", "codecflow", "server", "stop", "--home", str(tmp_path)],
        capture_output=True, text=True, check=True, timeout=60,
    )  # fmt: skip
    assert stop.stdout.startswith("nothing to stop")
