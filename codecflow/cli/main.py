"""`codecflow`: one subcommand per flow, configured by YAML plus `--set key.path=value`.

    codecflow pipeline --config configs/demo.yaml --set train_lm.steps=50
    codecflow demo                      # the same, from any folder: the shipped demo config

Each run ends with one `name: path` line per output (`manifest:`, `dataset:`, `checkpoint:`,
`report:`) so that scripts can chain the steps. Bad input ends with one `error: ...` line and
exit status 2; nothing half-written is left behind.

`codecflow sizes --tokenizer NAME --hours H [--json]` is not a flow: it projects a token dataset's
bytes from the tokenizer's name (`tasks.tokenize.sizes`), beside the post's int32 layout, without
Prefect.

`codecflow plan --config FILE [--set ...] [--json]` is not a flow either: it validates a pipeline
or train-lm config, builds its LM on the meta device and prints what the run will cost (memory
per GPU, steps, wall time at an MFU, disk, tokenize task runs; `codecflow.cli.costs`), without
Prefect.

A run's config and its paths, URLs and credentials are checked before Prefect is imported
(`codecflow.cli.preflight`), and Prefect's settings are codecflow's own unless the user set them
(`codecflow.cli.prefect_env`): the CLI works the same from any folder.
"""

from __future__ import annotations

import argparse
import atexit
import importlib.util
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from codecflow import __version__
from codecflow.cli.config import CliError, load_config, read_config_file
from codecflow.cli.help import format_fields, format_tokenizers
from codecflow.cli.prefect_env import apply_prefect_defaults
from codecflow.cli.preflight import check_config
from codecflow.cli.slurm_command import TRAINERS, plan_slurm, slurm_arguments, submit_slurm
from codecflow.schemas.configs import (
    AcquireConfig,
    CompareCodecsConfig,
    EvalCodecConfig,
    EvaluateConfig,
    PipelineConfig,
    TokenizeConfig,
    TrainCodecConfig,
    TrainLMConfig,
)
from codecflow.tasks.core.errors import CodecflowError, user_error
from codecflow.tasks.core.threads import apply_thread_policy, thread_policy, usable_cpus

__all__ = ["COMMANDS", "CliError", "main"]


_PIPELINE_EXTRA = "the flows need the pipeline extra: pip install 'codecflow[pipeline]'"


@dataclass(frozen=True)
class _Command:
    config: type[BaseModel]
    run: Callable[[Any], dict[str, Any]]
    help: str


def _acquire(cfg: AcquireConfig) -> dict[str, Any]:
    from codecflow.flows.acquire import run_acquire

    record = run_acquire(cfg)
    return {"manifest": record.path, "rejects": record.rejects_path}


def _tokenize(cfg: TokenizeConfig) -> dict[str, Any]:
    from codecflow.flows.tokenize import run_tokenize

    return {"dataset": run_tokenize(cfg).path}


def _train_lm(cfg: TrainLMConfig) -> dict[str, Path]:
    from codecflow.flows.train_lm import train_lm_flow

    return {"checkpoint": train_lm_flow(cfg).path}


def _train_codec(cfg: TrainCodecConfig) -> dict[str, Path]:
    from codecflow.flows.train_codec import train_codec_flow

    return {"checkpoint": train_codec_flow(cfg).path}


def _eval_codec(cfg: EvalCodecConfig) -> dict[str, Path]:
    from codecflow.flows.eval_codec import eval_codec_flow

    record = eval_codec_flow(cfg)
    return {"report": record.path / "index.html", "table": record.table}


def _compare_codecs(cfg: CompareCodecsConfig) -> dict[str, Path]:
    from codecflow.flows.compare_codecs import compare_codecs_flow

    record = compare_codecs_flow(cfg)
    return {"report": record.path / "index.html", "table": record.table}


def _evaluate(cfg: EvaluateConfig) -> dict[str, Path]:
    from codecflow.flows.evaluate import evaluate_flow

    record = evaluate_flow(cfg)  # None: train_run still trains (the flow's log says so)
    return {} if record is None else {"report": record.path}


def _pipeline(cfg: PipelineConfig) -> dict[str, Path]:
    from codecflow.flows.pipeline import pipeline_flow

    record = pipeline_flow(cfg)
    outputs = {"manifest": record.manifest}
    if record.codec is not None:
        outputs["codec"] = record.codec
    return {
        **outputs,
        "dataset": record.dataset,
        "checkpoint": record.checkpoint,
        "report": record.report,
        "index": record.report.resolve().parent.parent / "index.html",
    }


COMMANDS: dict[str, _Command] = {
    "acquire": _Command(
        AcquireConfig, _acquire, "Libri-Light, or any folder or archive of speech, into segments"
    ),
    "train-codec": _Command(TrainCodecConfig, _train_codec, "train the post's RVQ codec"),
    "eval-codec": _Command(EvalCodecConfig, _eval_codec, "codec losses by number of levels"),
    "compare-codecs": _Command(
        CompareCodecsConfig, _compare_codecs, "tokenizers side by side on held-out segments"
    ),
    "tokenize": _Command(TokenizeConfig, _tokenize, "segments -> Arrow token shards"),
    "train-lm": _Command(TrainLMConfig, _train_lm, "train the GPT on a token dataset"),
    "evaluate": _Command(EvaluateConfig, _evaluate, "sample continuations of a prompt"),
    "pipeline": _Command(PipelineConfig, _pipeline, "the whole DAG under one run folder"),
}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="codecflow", description=__doc__.split("\n")[0])
    parser.add_argument("--version", action="version", version=f"codecflow {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    for name, command in COMMANDS.items():
        sub = commands.add_parser(
            name,
            help=command.help,
            description=command.help,
            epilog=format_fields(command.config),
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        sub.add_argument(
            "--config", help="YAML file holding the flow's config, or a shipped one's name (demo)"
        )
        sub.add_argument(
            "--set",
            dest="overrides",
            action="append",
            default=[],
            metavar="KEY.PATH=VALUE",
            help="override one config value (repeatable)",
        )
        if name in TRAINERS:
            slurm_arguments(sub, nodes=True)
    commands.add_parser(
        "demo",
        help="the whole pipeline on the shipped corpus, from any folder (= pipeline --config demo)",
        description="The pipeline of the shipped demo config on the embedded corpus (three "
        "LibriSpeech clips), into ./runs/demo: about 5 minutes on 2 CPU cores.",
    ).add_argument("--set", dest="overrides", action="append", default=[],
                   metavar="KEY.PATH=VALUE", help="override one config value")  # fmt: skip
    server = commands.add_parser(
        "server",
        help="start|stop a local Prefect server, worker and every deployment (make server)",
        add_help=False,
    )
    server.add_argument("server_args", nargs=argparse.REMAINDER, help="start|stop [options]")
    # Not a flow: a projection from the tokenizer's name, no Prefect, no config file.
    sizes = commands.add_parser(
        "sizes", help="project a token dataset's bytes for N hours, beside the post's layout"
    )
    sizes.add_argument(
        "--tokenizer", required=True, help="mu-law-256, codec:<ckpt|preset>[@N], ..."
    )
    sizes.add_argument("--hours", required=True, type=float, help="hours of audio")
    sizes.add_argument("--json", action="store_true", help="print one JSON object")
    _plan_parser(commands)
    audit = commands.add_parser(
        "audit-tokenizer",
        help="how many codes change when a segment is encoded inside a batch of other lengths",
    )
    audit.add_argument("tokenizer", help="mu-law-256, mimi_8_rvq, codec:CHECKPOINT@N, ...")
    audit.add_argument(
        "--audio", nargs="*", default=[], help="audio files (default: the shipped prompt, cut)"
    )
    audit.add_argument("--json", action="store_true", help="print one JSON object")
    commands.add_parser(
        "tokenizers", help="the valid tokenizer names and patterns, with their token rates"
    )
    threads = commands.add_parser(
        "threads",
        help="the torch threads codecflow gives this process, and why (CODECFLOW_THREADS)",
    )
    threads.add_argument(
        "--workers", type=int, default=1, help="processes sharing this machine's CPUs"
    )
    return parser


#: The sections of a pipeline config: a file with one of them is planned as a pipeline.
_PIPELINE_SECTIONS = {"acquire", "train_codec", "tokenize", "train_lm", "evaluate"}


def _plan_parser(commands: Any) -> None:
    # The defaults are flows.plan's (DEFAULT_MFU, DEFAULT_PEAK_TFLOPS), not imported here: it
    # imports PyTorch, which the other subcommands need not wait for.
    plan = commands.add_parser(
        "plan", help="what a pipeline or train-lm config will cost, without running it"
    )
    plan.add_argument("--config", help="YAML file of a pipeline or train-lm config")
    plan.add_argument("--set", dest="overrides", action="append", default=[],
                      metavar="KEY.PATH=VALUE", help="override one config value")  # fmt: skip
    plan.add_argument("--kind", choices=["auto", "pipeline", "train-lm"], default="auto",
                      help="auto: pipeline when the file has a stage section")  # fmt: skip
    plan.add_argument("--mfu", type=float, help="model FLOPs utilization (default 0.4)")
    plan.add_argument("--peak-tflops", type=float,
                      help="dense bf16 peak per GPU (default an H100 SXM's 989)")  # fmt: skip
    plan.add_argument("--nodes", type=int, default=1, help="machines of nproc_per_node GPUs")
    slurm_arguments(plan, nodes=False)
    plan.add_argument("--hours", type=float, help="audio hours instead of the config's")
    plan.add_argument("--tokenizer", help="train-lm without a dataset yet: its tokenizer")
    plan.add_argument("--json", action="store_true", help="print one JSON object")


def _plan(args: argparse.Namespace) -> int:
    """`codecflow plan`: the table (or JSON) of `flows.plan`; `error: ...` and 2 on bad input."""
    import json

    from codecflow.cli.costs import (
        DEFAULT_MFU,
        DEFAULT_PEAK_TFLOPS,
        format_plan,
        plan_pipeline,
        plan_train_lm,
    )

    try:
        data = read_config_file(args.config) if args.config is not None else {}
        keys = set(data) | {o.partition("=")[0].split(".")[0] for o in args.overrides}
        kind = args.kind if args.kind != "auto" else (
            "pipeline" if keys & _PIPELINE_SECTIONS else "train-lm"
        )  # fmt: skip
        model = PipelineConfig if kind == "pipeline" else TrainLMConfig
        config = load_config(model, args.config, args.overrides)
        mfu = DEFAULT_MFU if args.mfu is None else args.mfu
        peak = DEFAULT_PEAK_TFLOPS if args.peak_tflops is None else args.peak_tflops
        common = dict(hours=args.hours, nodes=args.nodes, mfu=mfu, peak_tflops=peak,
                      source=args.config)  # fmt: skip
        if isinstance(config, PipelineConfig):
            plan = plan_pipeline(config, **common)
        else:
            assert isinstance(config, TrainLMConfig)
            plan = plan_train_lm(config, tokenizer=args.tokenizer, **common)
    except Exception as exc:
        error = CodecflowError(str(exc)) if isinstance(exc, CliError) else user_error(exc)
        if error is None:
            raise
        print(f"error: {_one_line(error)}", file=sys.stderr, flush=True)
        return 2
    if args.launcher == "slurm":
        return plan_slurm(config, args)
    print(json.dumps(plan.to_json()) if args.json else format_plan(plan), flush=True)
    return 0


def _sizes(args: argparse.Namespace) -> int:
    """`codecflow sizes`: print the projection (table or JSON); `error: ...` and 2 on bad input."""
    import json

    from codecflow.tasks.tokenize.sizes import describe_tokenizer, format_sizes, project_sizes

    try:
        projection = project_sizes(describe_tokenizer(args.tokenizer), args.hours)
    except Exception as exc:
        error = user_error(exc)  # a bad name (schemas' TokenizerNameError) too
        if error is None:
            raise
        print(f"error: {_one_line(error)}", file=sys.stderr, flush=True)
        return 2
    print(json.dumps(projection) if args.json else format_sizes(projection), flush=True)
    return 0


def _audit(args: argparse.Namespace) -> int:
    """`codecflow audit-tokenizer`: the batch-invariance shares (`tasks.tokenize.audit`)."""
    import json
    from dataclasses import asdict

    from codecflow.cli.audit import audit_tokenizer, format_audit

    try:
        result = audit_tokenizer(args.tokenizer, args.audio)
    except Exception as exc:
        error = user_error(exc)
        if error is None:
            raise
        print(f"error: {_one_line(error)}", file=sys.stderr, flush=True)
        return 2
    print(json.dumps(asdict(result)) if args.json else format_audit(result), flush=True)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    arguments = list(sys.argv[1:] if argv is None else argv)
    if arguments[:1] == ["server"]:  # its own parser (argparse's REMAINDER drops a first --help)
        from codecflow.cli.server_command import main as server_main

        return server_main(arguments[1:])
    args = _parser().parse_args(arguments)
    try:
        # The policy is read first, without torch (a bad CODECFLOW_THREADS is one line at once);
        # torch's threads are set before any torch work (tasks.core.threads).
        thread_policy(usable_cpus(), getattr(args, "workers", None) or 1)
        if args.command in (
            "threads",
            "sizes",
            "plan",
            "audit-tokenizer",
        ):  # the flows apply it after the checks
            policy = apply_thread_policy(getattr(args, "workers", None))
    except CodecflowError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.command == "tokenizers":
        print(format_tokenizers(), flush=True)
        return 0
    if args.command == "threads":
        import torch

        print(f"threads: {torch.get_num_threads()} ({policy.reason()})", flush=True)
        return 0
    if args.command == "sizes":
        return _sizes(args)
    if args.command == "audit-tokenizer":
        return _audit(args)
    if args.command == "plan":
        return _plan(args)
    if args.command == "demo":
        args.command, args.config = "pipeline", "demo"
    command = COMMANDS[args.command]
    # The output lines are printed at exit, after Prefect has logged its shutdown (atexit runs
    # handlers in reverse order of registration, and Prefect registers its own during the run):
    # so the last line of a run is ours, a result or a one-line error.
    final_lines: list[tuple[str, Any]] = []
    atexit.register(_print_lines, final_lines)
    if importlib.util.find_spec("prefect") is None:  # found, not imported: that takes seconds
        final_lines.append((f"error: {_PIPELINE_EXTRA}", sys.stderr))
        return 2
    try:
        config = load_config(command.config, args.config, args.overrides)
        check_config(config)  # paths, URLs and credentials, before any server starts
    except CliError as exc:
        final_lines.append((f"error: {_one_line(exc)}", sys.stderr))
        return 2
    if getattr(args, "launcher", "local") == "slurm":
        try:  # no Prefect: the job runs on the cluster, when Slurm starts it
            final_lines.extend(
                (line, sys.stdout) for line in submit_slurm(args.command, config, args)
            )
        except CodecflowError as exc:
            final_lines.append((f"error: {_one_line(exc)}", sys.stderr))
            return 2
        return 0
    apply_thread_policy()
    apply_prefect_defaults()  # before Prefect is imported: it reads them when it loads
    from codecflow.cli.session import ephemeral_server, interrupts

    with interrupts() as interrupt:
        try:
            with ephemeral_server():
                outputs = command.run(config)
        except KeyboardInterrupt:
            final_lines.append(("error: interrupted; re-run to resume", sys.stderr))
            return interrupt.exit_status
        except Exception as exc:
            error = user_error(exc)
            if error is None:
                raise
            final_lines.append((f"error: {_one_line(error)}", sys.stderr))
            return 2
    final_lines.extend(
        (f"{name}: {shown_path(path)}", sys.stdout) for name, path in outputs.items()
    )
    return 0


def shown_path(path: Path | str) -> str:
    """One kind of path on every output line: relative to the current folder when it lies below
    it (as a user types `out`), else absolute; a URL (`s3://...`) as it is."""
    import os

    text = str(path)
    if "://" in text:
        return text
    absolute = Path(os.path.abspath(text))
    try:
        return str(absolute.relative_to(Path.cwd()))
    except ValueError:
        return str(absolute)


def _one_line(error: BaseException) -> str:
    """The message on one line: a newline in a path or a worker's reason must not split it."""
    return " ".join(str(error).split("\n")).strip()


def _print_lines(lines: list[tuple[str, Any]]) -> None:
    for line, stream in lines:
        print(line, file=stream, flush=True)


if __name__ == "__main__":
    sys.exit(main())
