"""Evaluations on a shared machine: one alone, two at once, one beside a busy process, measured
side by side in one run with codecflow's thread policy and with torch's default threads.

    uv run python bench/contention.py                 # 1 s of mu-law audio per evaluation
    uv run python bench/contention.py --seconds 0.5   # quicker
    uv run python bench/contention.py --json out.json

Why: a Prefect worker runs several flow runs at once, and torch's default intra-op pool (every
core, spinning waits) made two evaluations started together each take 7.4x their time alone on
a 2-core machine, where a fair share is 2x (issue 17).

Each evaluation is `tasks.evaluate.lm.evaluate` in a process of its own, as a flow run on a
process worker gets one, on a tiny checkpoint (the demo's LM shape, 4 layers x 4 heads x 128,
trained for a few steps on the embedded corpus's mu-law tokens: speed does not depend on the
weights), with the speech metrics off (their models are not part of the generation path). The
generation time comes from the run's summary.json; the wall time of the whole process is
printed beside it. The busy process is one Python thread spinning on arithmetic (one core).

The two policies:

- **policy**: codecflow's (`tasks/core/threads.py`), no override set;
- **default**: `CODECFLOW_THREADS` set to torch's own default thread count, which is what every
  process used before the policy (small-model decoding then keeps that count too).

Prints, per policy, each scenario's generation seconds (the slowest of concurrent runs) and its
slow-down against the same policy alone. Goals (issue 17): two at once each at most 2.5x alone,
beside one busy process at most 2.5x.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from codecflow.tasks.core.storage import CACHE_ENV

REPO = Path(__file__).resolve().parents[1]
TINY_TAR = REPO / "data" / "librilight-tiny" / "librilight-tiny.tar"
SCENARIOS = ("alone", "two at once", "beside a busy process")
BUSY = "import time\nwhile True:\n    sum(i * i for i in range(10_000))\n"


def _prepare(root: Path) -> tuple[Path, Path]:
    """A demo-shaped checkpoint trained for a few steps on a mu-law token dataset of the
    embedded corpus, and that dataset (kept under `root`: a second run reuses them)."""
    from codecflow.schemas.configs import TokenizeSettings, TrainLMSettings
    from codecflow.tasks.acquire.extract import extract_tar_safely
    from codecflow.tasks.acquire.manifest import build_segment_manifest
    from codecflow.tasks.tokenize.finalize import tokenize_manifest
    from codecflow.tasks.train.lm import train_lm

    audio = root / "acquire"
    if not (audio / "manifest").exists():
        extract_tar_safely(TINY_TAR, audio / "librilight" / "tiny")
    manifest = build_segment_manifest(str(audio), ["tiny"], target_len_sec=5.0).path
    dataset = Path(tokenize_manifest(manifest, root / "tokens", TokenizeSettings()).path)
    settings = TrainLMSettings(preset="demo", steps=4, batch_size=2, device="cpu")
    return train_lm(dataset, root / "lm", settings).path, dataset


def _worker(checkpoint: str, dataset: str, out: str, seconds: float) -> None:
    """One evaluation in this process; prints its generation and process seconds as JSON."""
    started = time.perf_counter()
    from codecflow.schemas.configs import EvaluateSettings
    from codecflow.tasks.core.threads import apply_thread_policy
    from codecflow.tasks.data.records import EvaluationSummary
    from codecflow.tasks.evaluate.lm import evaluate

    apply_thread_policy()  # as every flow run does
    settings = EvaluateSettings(
        seconds=seconds, num_samples=2, speech_metrics=False, regenerate_levels=[], device="cpu"
    )
    record = evaluate(Path(checkpoint), Path(dataset), Path(out), settings)
    summary = EvaluationSummary.read(Path(record.path) / "summary.json")
    print(
        json.dumps(
            {
                "generation_seconds": summary.generation_seconds,
                "process_seconds": time.perf_counter() - started,
                "decode_threads": summary.decode_threads,
                "reused": summary.reused_from is not None,
            }
        ),
        flush=True,
    )


def _start(env: dict[str, str], checkpoint: Path, dataset: Path, out: Path, seconds: float) -> Any:
    command = [sys.executable, __file__, "--worker", str(checkpoint), str(dataset), str(out)]
    command += ["--seconds", str(seconds)]
    # A cache of its own per evaluation: with the shared one, every evaluation of this
    # checkpoint after the first would wait for the identity's lock and then reuse its
    # committed report (tasks/evaluate/reuse.py), and nothing would be measured.
    env = {**env, CACHE_ENV: str(out.parent / "cache")}
    return subprocess.Popen(command, env=env, cwd=REPO, stdout=subprocess.PIPE, text=True)


def _finish(process: Any) -> dict[str, Any]:
    stdout, _ = process.communicate(timeout=3600)
    if process.returncode != 0:
        raise SystemExit(f"an evaluation failed with status {process.returncode}")
    result: dict[str, Any] = json.loads(stdout.strip().splitlines()[-1])
    if result["reused"]:
        raise SystemExit("an evaluation reused a committed report: nothing was measured")
    return result


def _scenario(
    name: str, env: dict[str, str], paths: tuple[Path, Path], scratch: Path, seconds: float
) -> dict[str, Any]:
    """Run one scenario; the slowest evaluation's numbers."""
    checkpoint, dataset = paths
    runs = 2 if name == "two at once" else 1
    busy = None
    if name == "beside a busy process":
        busy = subprocess.Popen([sys.executable, "-c", BUSY])
        time.sleep(1.0)  # let it take its core
    try:
        outs = [Path(tempfile.mkdtemp(dir=scratch)) / "report" for _ in range(runs)]
        started = [_start(env, checkpoint, dataset, out, seconds) for out in outs]
        results = [_finish(p) for p in started]
    finally:
        if busy is not None:
            busy.kill()
            busy.wait()
    return max(results, key=lambda r: r["generation_seconds"])


def _torch_default_threads() -> int:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    out = subprocess.run(
        [sys.executable, "-c", "import torch; print(torch.get_num_threads())"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    return int(out.stdout.strip())


def _environments() -> dict[str, dict[str, str]]:
    base = {
        k: v
        for k, v in os.environ.items()
        if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "CODECFLOW_THREADS")
    }
    base["PYTHONPATH"] = str(REPO)
    return {
        "policy": base,
        "default": {**base, "CODECFLOW_THREADS": str(_torch_default_threads())},
    }


def _table(results: dict[str, dict[str, dict[str, Any]]], seconds: float, load: float) -> str:
    lines = [
        f"{seconds:g} s of mu-law audio x 2 samples per evaluation; {os.cpu_count()} CPUs; "
        f"1-minute load average before the runs: {load:.2f}",
        f"{'policy':<9} {'scenario':<24} {'generation s':>13} {'x alone':>8} "
        f"{'process s':>10} {'decode threads':>15}",
    ]
    for policy, scenarios in results.items():
        alone = scenarios["alone"]["generation_seconds"]
        for name, r in scenarios.items():
            lines.append(
                f"{policy:<9} {name:<24} {r['generation_seconds']:>13.2f} "
                f"{r['generation_seconds'] / alone:>8.2f} {r['process_seconds']:>10.1f} "
                f"{r['decode_threads']:>15}"
            )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=1.0, help="audio per evaluation")
    parser.add_argument("--work", type=Path, default=REPO / "runs" / "bench" / "contention")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument(
        "--worker", nargs=3, metavar=("CHECKPOINT", "DATASET", "OUT"), help=argparse.SUPPRESS
    )
    args = parser.parse_args()
    if args.worker:
        _worker(*args.worker, seconds=args.seconds)
        return
    args.work.mkdir(parents=True, exist_ok=True)
    paths = _prepare(args.work)
    load = os.getloadavg()[0]
    results: dict[str, dict[str, dict[str, Any]]] = {}
    with tempfile.TemporaryDirectory(dir=args.work) as scratch:
        environments = _environments()
        # Scenario by scenario, the two policies back to back: a burst of other load then
        # falls on both alike.
        for name in SCENARIOS:
            for policy, env in environments.items():
                result = _scenario(name, env, paths, Path(scratch), args.seconds)
                results.setdefault(policy, {})[name] = result
    print(_table(results, args.seconds, load), flush=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
