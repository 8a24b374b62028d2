"""The background processes of `codecflow server`: each in its own process group, recorded in
`<home>/pids.json` with its start time (a pid reused after a reboot is not ours), and ended by
group, its flow runs' groups included.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = [
    "CHILDREN",
    "PIDS",
    "ServerError",
    "alive",
    "descendant_groups",
    "group_alive",
    "kill_group",
    "read_pids",
    "record",
    "recorded",
    "spawn",
    "start_ticks",
]

PIDS = "pids.json"

#: Popen objects of the processes this interpreter started, so `stop` can reap them (tests).
CHILDREN: dict[int, subprocess.Popen[bytes]] = {}


class ServerError(Exception):
    """A step of the set-up failed; the message is one line naming the thing."""


def read_pids(home: Path) -> dict[str, Any]:
    """What `<home>/pids.json` records ({} when there is none)."""
    path = Path(home) / PIDS
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except ValueError as exc:
        raise ServerError(f"{path} is not valid JSON: {exc}") from exc
    return data if isinstance(data, dict) else {}


def write_pids(home: Path, pids: Mapping[str, Any]) -> None:
    """Write pids.json atomically (a temporary file renamed over it)."""
    path = Path(home) / PIDS
    tmp = path.with_name(f".{PIDS}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(dict(pids), indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)


def record(home: Path, **entries: Any) -> dict[str, Any]:
    pids = {**read_pids(home), **entries}
    write_pids(home, pids)
    return pids


def reap(pid: int) -> None:
    """Collect the exit status of a child of this interpreter, so it leaves no zombie."""
    child = CHILDREN.get(pid)
    if child is not None:
        child.poll()
        return
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


def group_alive(pgid: int) -> bool:
    """Whether any process of the group is still running (zombies do not count)."""
    reap(pgid)
    if not Path("/proc").is_dir():
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True
    return any(group == pgid and state != "Z" for _, group, state in process_table().values())


def alive(pid: int) -> bool:
    """Whether the recorded process (the leader of its group) still runs."""
    reap(pid)
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[-1].split()[0]
    except FileNotFoundError:
        return False
    except OSError:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        return True
    return state != "Z"


def start_ticks(pid: int) -> int | None:
    """When the process started (clock ticks since boot), to tell it from a later one that got
    the same pid; None where /proc cannot say."""
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[-1].split()[19])
    except (OSError, IndexError, ValueError):
        return None


def recorded(pids: Mapping[str, Any], name: str, group: bool = False) -> int | None:
    """The pid recorded as `name` if that very process still runs (not a reused pid); with
    `group`, also when only other processes of its group are left (Linux reuses no pid that
    is still a process group's id)."""
    pid = pids.get(name)
    if not isinstance(pid, int):
        return None
    if not alive(pid):
        return pid if group and group_alive(pid) else None
    started = pids.get(f"{name}_started")
    if isinstance(started, int) and start_ticks(pid) not in (started, None):
        return None
    return pid


def process_table() -> dict[int, tuple[int, int, str]]:
    """pid -> (parent pid, process group, state) of every process, from /proc ({} without it)."""
    table: dict[int, tuple[int, int, str]] = {}
    proc = Path("/proc")
    if not proc.is_dir():
        return table
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[-1].split()
        except OSError:
            continue
        if len(fields) > 2:
            table[int(entry.name)] = (int(fields[1]), int(fields[2]), fields[0])
    return table


def descendant_groups(pids: Sequence[int]) -> list[int]:
    """Process groups of the descendants of `pids` outside their groups: the flow runs a worker
    starts in sessions of their own, which outlive a worker that is killed."""
    table = process_table()
    children: dict[int, list[int]] = {}
    for pid, (ppid, _, _) in table.items():
        children.setdefault(ppid, []).append(pid)
    seen, todo = set(), list(pids)
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in seen:
                seen.add(child)
                todo.append(child)
    return sorted({table[pid][1] for pid in seen} - set(pids))


def kill_group(pgid: int, timeout: float = 10.0) -> bool:
    """SIGTERM the process group, wait up to `timeout` s, then SIGKILL; True if it was running."""
    if not group_alive(pgid):
        return False
    try:
        os.killpg(pgid, signal.SIGTERM)
    except ProcessLookupError:
        return False
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not group_alive(pgid):
            break
        time.sleep(0.2)
    else:
        try:
            os.killpg(pgid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        deadline = time.monotonic() + 5.0
        while group_alive(pgid) and time.monotonic() < deadline:
            time.sleep(0.1)
    child = CHILDREN.pop(pgid, None)
    if child is not None:
        try:
            child.wait(timeout=5.0)
        except subprocess.TimeoutExpired:
            pass
    return True


def spawn(command: Sequence[str], log: Path, env: Mapping[str, str], cwd: Path) -> int:
    """Start `command` in a new process group (session), output to `log`; its pid."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as out:
        child = subprocess.Popen(
            list(command),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=dict(env),
            cwd=cwd,
            start_new_session=True,
        )
    CHILDREN[child.pid] = child
    return child.pid
