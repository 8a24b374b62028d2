"""Planning Libri-Light's full 60 000 h: a synthetic manifest of its size (about 3.6 M segments
of up to 60 s) planned into shards, with the wall time, peak memory and Prefect task count.

    uv run python bench/plan_60k.py [--segments 3600000]

Goals (issue 5): under a minute, under 2 GB, task runs in the low thousands.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from codecflow.schemas.configs import TokenizeSettings
from codecflow.schemas.tables import MANIFEST_AUDIO_ROOT_KEY, SEGMENT_MANIFEST_SCHEMA
from codecflow.tasks.core.threads import apply_thread_policy
from codecflow.tasks.tokenize.plan import plan_dataset


def synthetic_manifest(path: Path, n: int, seed: int = 0) -> float:
    """Write `n` segments of 30-60 s from 7 000 speakers (Libri-Light's count); return hours."""
    rng = np.random.default_rng(seed)
    durations = rng.uniform(30.0, 60.0, n)
    speakers = rng.integers(0, 7000, n)
    ids = [f"{s}_book{i // 50}_file{i:07d}_0000" for i, s in enumerate(speakers)]
    columns = {
        "segment_id": ids,
        "subset": ["large"] * n,
        "speaker": [str(s) for s in speakers],
        "book_id": [str(i // 50) for i in range(n)],
        "source_path": [f"librilight/large/large/{s}/b/{i}.flac" for i, s in enumerate(speakers)],
        "start_s": np.zeros(n),
        "end_s": durations,
        "duration_s": durations,
        "sample_rate": np.full(n, 16000, dtype=np.int32),
        "channels": np.ones(n, dtype=np.int32),
        "snr": np.full(n, 20.0),
        "split": np.where(speakers % 100 == 0, "val", "train"),
        "chunks": [[{"start_s": 0.0, "end_s": float(d)}] for d in durations],
    }
    schema = SEGMENT_MANIFEST_SCHEMA.with_metadata({MANIFEST_AUDIO_ROOT_KEY: b".."})
    pq.write_table(pa.table(columns, schema=schema), path)
    return float(durations.sum() / 3600)


def main() -> None:
    apply_thread_policy()  # the one thread policy (tasks/core/threads.py)
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--segments", type=int, default=3_600_000)
    parser.add_argument("--plan-only", nargs=2, metavar=("MANIFEST", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.plan_only:
        plan = plan_dataset(args.plan_only[0], args.plan_only[1], TokenizeSettings())
        # VmHWM: this process's peak resident memory since exec (ru_maxrss would include the
        # parent's pages shared at fork).
        status = Path("/proc/self/status").read_text()
        peak_kib = next(
            int(line.split()[1]) for line in status.splitlines() if line.startswith("VmHWM")
        )
        print(len(plan.shards), len(plan.groups), peak_kib)
        return
    with tempfile.TemporaryDirectory() as tmp:
        manifest = Path(tmp) / "segments.parquet"
        started = time.perf_counter()
        hours = synthetic_manifest(manifest, args.segments)
        print(
            f"synthetic manifest: {args.segments:,} segments, {hours:,.0f} h "
            f"({time.perf_counter() - started:.1f} s to build, not counted)"
        )
        # Planned in a fresh process, so that its peak memory is the planner's alone.
        started = time.perf_counter()
        result = subprocess.run(
            [sys.executable, __file__, "--plan-only", str(manifest), str(Path(tmp) / "tokens")],
            check=True,
            capture_output=True,
            text=True,
        )
        elapsed = time.perf_counter() - started  # includes the child's start-up (~3 s)
    n_shards, n_groups, peak_kib = (int(x) for x in result.stdout.split())
    peak_gb = peak_kib / 1024**2
    tasks = n_groups + 2  # shard groups + plan + finalize
    print(f"plan: {n_shards:,} shards in {n_groups:,} groups -> {tasks:,} task runs")
    print(
        f"wall {elapsed:.1f} s (goal < 60: {'PASS' if elapsed < 60 else 'FAIL'}), "
        f"peak RSS {peak_gb:.2f} GB (goal < 2: {'PASS' if peak_gb < 2 else 'FAIL'}), "
        f"task runs goal < 5 000: {'PASS' if tasks < 5000 else 'FAIL'}"
    )


if __name__ == "__main__":
    main()
