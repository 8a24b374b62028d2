"""The storage seam (`tasks.core.storage`, `tasks.core.outputs`): URL helpers, atomic writes and JSON, hashes, locks held
across processes (flock locally, a lock object on S3 with dead-holder takeover), and the
ownership marker's refusals. Local cases on tiny files; S3 cases against the moto server."""

from __future__ import annotations

import hashlib
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import REPO

from codecflow.tasks.core import outputs, storage
from codecflow.tasks.core.errors import CodecflowError


def _names(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def _s3fs():  # type: ignore[no-untyped-def]
    import s3fs

    return s3fs.S3FileSystem(skip_instance_cache=True)


def _dead_pid() -> int:
    """The pid of a process of this machine that has exited (and been reaped)."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


# --------------------------------------------------------------------------------------------
# URL helpers
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "remote"),
    [
        ("s3://bucket/key", True),
        ("memory://x/y", True),
        ("file:///tmp/x", False),
        ("/tmp/x", False),
        ("relative/x", False),
        (Path("/tmp/x"), False),
    ],
)
def test_is_remote(url: str | Path, remote: bool) -> None:
    assert storage.is_remote(url) is remote


def test_join_keeps_urls_urls_and_paths_paths(tmp_path: Path) -> None:
    assert storage.join("s3://bucket/root/", "a", "b.json") == "s3://bucket/root/a/b.json"
    assert storage.join("s3://bucket", "a") == "s3://bucket/a"
    assert storage.join("file:///srv/out", "a", "b") == "/srv/out/a/b"
    assert storage.join(tmp_path, "x") == str(tmp_path / "x")


def test_url_to_fs_makes_local_paths_absolute(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from fsspec.implementations.local import LocalFileSystem

    monkeypatch.chdir(tmp_path)
    fs, path = storage.url_to_fs("sub/file.bin")
    assert isinstance(fs, LocalFileSystem) and path == str(tmp_path / "sub" / "file.bin")
    fs, path = storage.url_to_fs(f"file://{tmp_path}/a")
    assert isinstance(fs, LocalFileSystem) and path == f"{tmp_path}/a"


def test_exists_for_paths_and_file_urls(tmp_path: Path) -> None:
    (tmp_path / "here").write_text("x")
    assert storage.exists(tmp_path / "here") and storage.exists(f"file://{tmp_path}/here")
    assert not storage.exists(tmp_path / "missing")
    assert not storage.exists(f"file://{tmp_path}/missing")


# --------------------------------------------------------------------------------------------
# Atomic writes, JSON, hashes
# --------------------------------------------------------------------------------------------


def test_open_atomic_write_appears_whole_or_not_at_all(tmp_path: Path) -> None:
    target = tmp_path / "deep" / "er" / "data.bin"
    with storage.open_atomic_write(target) as f:
        f.write(b"first")
        assert not target.exists()  # nothing at the final name until the block ends
    assert target.read_bytes() == b"first"
    with pytest.raises(RuntimeError, match="killed"), storage.open_atomic_write(target) as f:
        f.write(b"half of the second")
        raise RuntimeError("killed")
    assert target.read_bytes() == b"first"  # the old file untouched
    assert _names(target.parent) == ["data.bin"]  # and the temporary gone
    fresh = tmp_path / "fresh.bin"
    with pytest.raises(RuntimeError), storage.open_atomic_write(fresh) as f:
        f.write(b"half")
        raise RuntimeError
    assert not fresh.exists()
    assert _names(tmp_path) == ["deep"]


def test_write_json_is_sorted_indented_and_idempotent(tmp_path: Path) -> None:
    target = tmp_path / "info.json"
    obj = {"b": [1, 2], "a": {"z": None, "y": "é"}}
    storage.write_json(target, obj)
    first = target.read_bytes()
    assert first == (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode()
    assert first.index(b'"a"') < first.index(b'"b"')
    storage.write_json(target, dict(reversed(list(obj.items()))))  # same content, other order
    assert target.read_bytes() == first
    assert storage.read_json(target) == obj
    assert storage.read_json(f"file://{target}") == obj
    assert _names(tmp_path) == ["info.json"]


def test_read_json_of_a_bad_file_raises(tmp_path: Path) -> None:
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ValueError):
        storage.read_json(tmp_path / "bad.json")
    with pytest.raises(FileNotFoundError):
        storage.read_json(tmp_path / "missing.json")


def test_sha256_matches_hashlib_across_chunks(tmp_path: Path) -> None:
    data = os.urandom((1 << 20) * 2 + 17)  # three 1 MiB reads, the last one short
    (tmp_path / "big").write_bytes(data)
    (tmp_path / "empty").write_bytes(b"")
    assert storage.sha256(tmp_path / "big") == hashlib.sha256(data).hexdigest()
    assert storage.sha256(tmp_path / "empty") == hashlib.sha256(b"").hexdigest()


def test_s3_writes_appear_whole_or_not_at_all(s3_bucket: str) -> None:
    fs = _s3fs()
    url = f"{s3_bucket}/x/info.json"
    assert not storage.exists(url)
    storage.write_json(url, {"b": 2, "a": 1})
    assert storage.exists(url) and storage.read_json(url) == {"a": 1, "b": 2}
    assert fs.cat(url[5:]) == b'{\n  "a": 1,\n  "b": 2\n}\n'
    assert storage.sha256(url) == hashlib.sha256(fs.cat(url[5:])).hexdigest()
    with pytest.raises(RuntimeError, match="killed"), storage.open_atomic_write(url) as f:
        f.write(b"half")
        raise RuntimeError("killed")
    assert storage.read_json(url) == {"a": 1, "b": 2}  # the old object, not a half one
    fresh = f"{s3_bucket}/x/fresh.bin"
    with pytest.raises(RuntimeError), storage.open_atomic_write(fresh) as f:
        f.write(b"half")
        raise RuntimeError
    assert not storage.exists(fresh)


def test_s3_a_failed_multipart_write_leaves_no_object_and_no_upload(s3_bucket: str) -> None:
    fs = _s3fs()
    big = f"{s3_bucket}/big.bin"
    with pytest.raises(RuntimeError), storage.open_atomic_write(big) as f:
        f.write(os.urandom(6 << 20))  # past s3fs's 5 MiB block: a multipart upload started
        f.flush()
        raise RuntimeError
    assert not storage.exists(big)
    bucket = s3_bucket[len("s3://") :]
    assert fs.call_s3("list_multipart_uploads", Bucket=bucket).get("Uploads", []) == []
    with storage.open_atomic_write(big) as f:
        f.write(b"x" * (6 << 20))
    assert fs.size(big[5:]) == 6 << 20


# --------------------------------------------------------------------------------------------
# Locks
# --------------------------------------------------------------------------------------------

_TRY_LOCK = (
    "import sys; from codecflow.tasks.core import outputs; from codecflow.tasks.core.errors import CodecflowError\n"
    "try:\n"
    "    with outputs.exclusive_lock(sys.argv[1], 'child'):\n"
    "        print('got it')\n"
    "except CodecflowError as err:\n"
    "    print(err); sys.exit(3)\n"
)


def _try_lock_in_another_process(out: Path | str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", _TRY_LOCK, str(out)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_another_process_is_refused_while_we_hold_the_lock(tmp_path: Path) -> None:
    out = tmp_path / "run"
    with outputs.exclusive_lock(out, "train-lm") as fd:
        assert isinstance(fd, int)
        refused = _try_lock_in_another_process(out)
        assert refused.returncode == 3, refused.stderr
        line = refused.stdout.strip()
        assert "\n" not in line
        host = socket.gethostname()
        assert line.startswith(
            f"{out} is being written by another run (train-lm, pid {os.getpid()} on {host} since "
        )
        assert line.endswith(" UTC); wait for it to finish")
    taken = _try_lock_in_another_process(out)
    assert taken.returncode == 0 and taken.stdout.strip() == "got it"
    assert not (tmp_path / "run.lock").exists()


def test_a_lock_file_of_garbage_still_refuses_naming_it(tmp_path: Path) -> None:
    out = tmp_path / "run"
    with outputs.exclusive_lock(out, "first"):
        (tmp_path / "run.lock").write_text("not json at all\n")  # same inode: still locked
        refused = _try_lock_in_another_process(out)
    assert refused.returncode == 3
    assert refused.stdout.strip() == (
        f"{out} is being written by another run (not json at all); wait for it to finish"
    )


@pytest.mark.parametrize(
    ("holder", "described"),
    [
        ("", "unknown holder"),
        ("[1, 2]", "unknown holder"),
        ("half a json {", "half a json {"),
        (
            {"what": "tokenize", "pid": 7, "host": "h1", "since": 0},
            "tokenize, pid 7 on h1 since 1970-01-01 00:00:00 UTC",
        ),
        ('{"what": "x", "pid": 1, "host": "h", "since": "later"}', "x, pid 1 on h"),
    ],
)
def test_describe_holder(holder: str | dict[str, object], described: str) -> None:
    assert outputs._describe_holder(holder) == described  # type: ignore[arg-type]


def test_holder_is_dead_only_for_a_gone_process_of_this_machine() -> None:
    host = socket.gethostname()
    assert outputs._holder_is_dead({"host": host, "pid": _dead_pid()})
    assert not outputs._holder_is_dead({"host": host, "pid": os.getpid()})
    assert not outputs._holder_is_dead({"host": f"not-{host}", "pid": _dead_pid()})
    assert not outputs._holder_is_dead({"host": host})  # no pid: not provably dead
    assert not outputs._holder_is_dead({"host": host, "pid": "abc"})


def test_s3_lock_object_refuses_a_second_run_and_is_deleted_at_the_end(s3_bucket: str) -> None:
    out = f"{s3_bucket}/runs/lm"
    lock = f"{out}.lock"
    with outputs.exclusive_lock(out, "train-lm") as fd:
        assert fd is None
        holder = storage.read_json(lock)
        assert holder["pid"] == os.getpid() and holder["what"] == "train-lm"
        assert holder["host"] == socket.gethostname()
        with pytest.raises(CodecflowError) as refused:
            with outputs.exclusive_lock(out + "/", "second"):  # a trailing slash: the same lock
                pytest.fail("the lock was taken twice")
        message = str(refused.value)
        assert message.startswith(
            f"{out}/ is locked by another run (train-lm, pid {os.getpid()} on "
            f"{socket.gethostname()} since "
        )
        assert message.endswith(f" UTC); delete {lock} if no run is active")
        assert storage.read_json(lock)["what"] == "train-lm"  # the refused run left it alone
    assert not storage.exists(lock)
    with pytest.raises(ValueError, match="boom"), outputs.exclusive_lock(out, "failing"):
        assert storage.exists(lock)
        raise ValueError("boom")
    assert not storage.exists(lock)


def test_s3_lock_of_a_dead_local_process_is_taken_over(s3_bucket: str) -> None:
    out = f"{s3_bucket}/runs/ds"
    lock = f"{out}.lock"
    host = socket.gethostname()
    dead = {"pid": _dead_pid(), "host": host, "since": 0, "what": "killed run"}
    storage.write_json(lock, dead)
    with outputs.exclusive_lock(out, "next"):
        assert storage.read_json(lock)["pid"] == os.getpid()
    assert not storage.exists(lock)
    # Another machine's lock is never judged from here, even with a pid that is gone here.
    storage.write_json(lock, {**dead, "host": f"other-{host}"})
    with pytest.raises(CodecflowError, match=rf"killed run, pid \d+ on other-{host} since 1970"):
        with outputs.exclusive_lock(out, "next"):
            pass
    assert storage.read_json(lock)["host"] == f"other-{host}"


def test_s3_lock_held_by_a_live_subprocess_refuses(s3_bucket: str, tmp_path: Path) -> None:
    out = f"{s3_bucket}/runs/live"
    code = (
        "import sys, time; from codecflow.tasks.core import outputs\n"
        "with outputs.exclusive_lock(sys.argv[1], 'holder'):\n"
        "    print('held', flush=True); time.sleep(600)\n"
    )
    holder = subprocess.Popen(
        [sys.executable, "-c", code, out], cwd=REPO, stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        with pytest.raises(
            CodecflowError, match=rf"locked by another run \(holder, pid {holder.pid} "
        ):
            with outputs.exclusive_lock(out, "second"):
                pass
    finally:
        holder.kill()
        holder.wait()
    # Killed: its lock object stayed, but its holder is dead on this machine.
    assert storage.read_json(f"{out}.lock")["pid"] == holder.pid
    with outputs.exclusive_lock(out, "after"):
        pass
    assert not storage.exists(f"{out}.lock")


# --------------------------------------------------------------------------------------------
# Ownership
# --------------------------------------------------------------------------------------------


def test_a_damaged_marker_is_refused_in_one_line(tmp_path: Path) -> None:
    for text in ("{not json", '{"format": 1}', "[]"):
        out = tmp_path / f"out{len(text)}"
        out.mkdir()
        (out / outputs.OWNER_MARKER).write_text(text)
        with pytest.raises(CodecflowError) as refused:
            outputs.claim_output(out, "LM run")
        assert str(refused.value) == f"{out} is not empty and is not a codecflow LM run"
        assert (out / outputs.OWNER_MARKER).read_text() == text  # not repaired behind our back


def test_claim_is_idempotent_byte_for_byte(tmp_path: Path) -> None:
    out = tmp_path / "ds"
    outputs.claim_output(out, "token dataset")
    marker = (out / outputs.OWNER_MARKER).read_bytes()
    assert marker == b'{\n  "format": 1,\n  "kind": "token dataset"\n}\n'
    (out / "shard.arrow").write_bytes(b"ours")
    outputs.claim_output(out, "token dataset")
    outputs.write_owner_marker(out, "token dataset")
    assert (out / outputs.OWNER_MARKER).read_bytes() == marker
    assert _names(out) == sorted([outputs.OWNER_MARKER, "shard.arrow"])
    nested = tmp_path / "a" / "b" / "c"
    outputs.write_owner_marker(nested, "LM run")  # creates the folder
    assert json.loads((nested / outputs.OWNER_MARKER).read_text())["kind"] == "LM run"


def test_s3_refusal_names_the_other_kind_and_legacy_outputs_are_adopted(s3_bucket: str) -> None:
    fs = _s3fs()
    out = f"{s3_bucket}/runs/ds"
    outputs.claim_output(out, "token dataset")
    with pytest.raises(CodecflowError) as refused:
        outputs.claim_output(out, "LM run")
    assert str(refused.value) == (
        f"{out} is not empty and is not a codecflow LM run (it is a codecflow token dataset)"
    )
    legacy = f"{s3_bucket}/runs/legacy"
    fs.pipe(f"{legacy[5:]}/dataset.json", b"{}")
    fs.pipe(f"{legacy[5:]}/train-00000.parquet", b"shard")
    outputs.claim_output(legacy, "token dataset", committed=("dataset.json",))
    assert storage.read_json(f"{legacy}/{outputs.OWNER_MARKER}") == {
        "format": 1,
        "kind": "token dataset",
    }
    fs.pipe(f"{s3_bucket[5:]}/a-file", b"x")
    with pytest.raises(CodecflowError, match=f"^{s3_bucket}/a-file is a file, not a folder$"):
        outputs.claim_output(f"{s3_bucket}/a-file", "token dataset")


def test_owned_output_claims_sweeps_and_releases_even_on_failure(tmp_path: Path) -> None:
    out = tmp_path / "run"
    outputs.claim_output(out, "LM run")  # a run claimed it, then was killed mid-write
    # tasks.core.storage's temporary pattern: a killed run's temporary
    stale = out / ".metrics.json.ab12cd34.tmp"
    stale.write_text("half")
    kept = out / ".metrics.json.tmp"  # not the pattern: not ours
    kept.write_text("a user's")
    with pytest.raises(RuntimeError, match="crash"):
        with outputs.owned_output(out, "LM run", "train-lm") as fd:
            assert isinstance(fd, int)
            assert (tmp_path / "run.lock").is_file()
            assert not stale.exists() and kept.exists()
            raise RuntimeError("crash")
    assert not (tmp_path / "run.lock").exists()
    assert json.loads((out / outputs.OWNER_MARKER).read_text())["kind"] == "LM run"
    # Refused (someone else's kind): nothing swept, lock released.
    (out / ".x.zz99yy88.tmp").write_text("")
    with pytest.raises(CodecflowError, match=r"\(it is a codecflow LM run\)$"):
        with outputs.owned_output(out, "token dataset", "tokenize"):
            pytest.fail("claimed someone else's folder")
    assert (out / ".x.zz99yy88.tmp").exists() and not (tmp_path / "run.lock").exists()


def test_owned_output_on_s3_yields_no_descriptor(s3_bucket: str) -> None:
    out = f"{s3_bucket}/runs/report"
    with outputs.owned_output(out, "evaluation report", "evaluate") as fd:
        assert fd is None and storage.exists(f"{out}.lock")
        assert storage.exists(f"{out}/{outputs.OWNER_MARKER}")
    assert not storage.exists(f"{out}.lock")


def test_remove_stale_temporaries_of_a_missing_or_remote_folder_is_a_no_op(
    tmp_path: Path, s3_bucket: str
) -> None:
    outputs.remove_stale_temporaries(tmp_path / "missing" / "out")
    fs = _s3fs()
    key = f"{s3_bucket[5:]}/out/.shard.ab12cd34.tmp"
    fs.pipe(key, b"a name like ours, on S3")
    outputs.remove_stale_temporaries(f"{s3_bucket}/out")
    assert fs.cat(key) == b"a name like ours, on S3"


def test_a_lock_wait_is_never_a_block(tmp_path: Path) -> None:
    """Refusal is immediate (LOCK_NB): a second run does not queue behind the first."""
    out = tmp_path / "run"
    with outputs.exclusive_lock(out, "first"):
        start = time.monotonic()
        with pytest.raises(CodecflowError):
            with outputs.exclusive_lock(out, "second"):
                pass
        assert time.monotonic() - start < 1.0


def test_read_parquet_reads_only_the_row_groups_that_may_hold_the_values(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    names = [f"shard-{i // 3:02d}" for i in range(12)]  # sorted, 3 rows each
    table = pa.table({"shard": names, "n": list(range(12)), "chunks": [[1.0, 2.0]] * 12})
    url = str(tmp_path / "plan.parquet")
    pq.write_table(table, url, row_group_size=3)  # one row group per shard
    got = storage.read_parquet(url, prune=("shard", ["shard-01", "shard-03"]))
    assert got["n"].to_pylist() == [3, 4, 5, 9, 10, 11]  # the two row groups that hold them
    parquet = pq.ParquetFile(url)
    assert storage._row_groups_with(parquet, "shard", ["shard-01", "shard-03"]) == [1, 3]
    assert storage.read_parquet(url, ["n"])["n"].to_pylist() == list(range(12))
    assert storage.read_parquet(url, prune=("shard", ["none"])).num_rows == 0


def test_reading_a_manifest_does_not_import_pandas(tmp_path: Path) -> None:
    """pq.read_table and pyarrow.dataset import pandas: 0.15-0.24 s of every fresh process."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"shard": ["a"]}), tmp_path / "x.parquet")
    code = (
        "import sys\n"
        "from codecflow.tasks.core import storage\n"
        f"storage.read_parquet({str(tmp_path / 'x.parquet')!r}, prune=('shard', ['a']))\n"
        "assert 'pandas' not in sys.modules, 'pandas was imported'\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
