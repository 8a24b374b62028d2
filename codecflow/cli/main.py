"""`codecflow`: one subcommand per flow, configured by YAML plus `--set key.path=value`.

    codecflow pipeline --config configs/demo.yaml --set train_lm.steps=50

Each run ends with one `name: path` line per output (`manifest:`, `dataset:`, `checkpoint:`,
`report:`) so that scripts can chain the steps. Bad input ends with one `error: ...` line and
exit status 2; nothing half-written is left behind.

`codecflow sizes --tokenizer NAME --hours H [--json]` is not a flow: it projects a token dataset's
bytes from the tokenizer's name (`tasks.tokenize.sizes`), beside the post's int32 layout, without
Prefect.

`codecflow plan --config FILE [--set ...] [--json]` is not a flow either: it validates a pipeline
or train-lm config, builds its LM on the meta device and prints what the run will cost (memory
per GPU, steps, wall time at an MFU, disk, tokenize task runs; `flows.plan`), without Prefect.
"""

from __future__ import annotations

import argparse
import atexit
import sys
import types
import typing
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from codecflow.cli.help import format_fields, format_tokenizers
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
from codecflow.tasks.core.threads import apply_thread_policy

__all__ = ["apply_override", "load_config", "main"]


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

    return {"report": evaluate_flow(cfg).path}


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
    "acquire": _Command(AcquireConfig, _acquire, "fetch, extract and segment Libri-Light"),
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


class CliError(Exception):
    """A bad command line or config file: printed as one line."""


def _unwrap_optional(annotation: Any) -> Any:
    """`X | None` -> `X`; anything else unchanged (a nested section may be optional)."""
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if typing.get_origin(annotation) in (typing.Union, types.UnionType) and len(args) == 1:
        return args[0]
    return annotation


def _annotation_at(model: type[BaseModel] | None, keys: Sequence[str]) -> Any:
    """The type annotation of the field at `keys` in `model`, or None when unknown."""
    annotation: Any = None
    for key in keys:
        if model is None or key not in model.model_fields:
            return None
        annotation = model.model_fields[key].annotation
        section = _unwrap_optional(annotation)
        model = section if isinstance(section, type) and issubclass(section, BaseModel) else None
    return annotation


def _is_text(annotation: Any) -> bool:
    """True for `str`, `str | None` and string `Literal`s: fields whose value stays as typed."""
    if annotation is str:
        return True
    args = typing.get_args(annotation)
    if typing.get_origin(annotation) is typing.Literal:
        return all(isinstance(a, str) for a in args)
    # `str | None` only: `list[str]` has the args (str,) too, but its value is YAML (a list).
    union = typing.get_origin(annotation) in (typing.Union, types.UnionType)
    return union and all(a is str or a is type(None) for a in args)


def _yaml_problem(err: yaml.YAMLError) -> str:
    """A YAML error in one line: what and where, without PyYAML's multi-line excerpt."""
    mark = getattr(err, "problem_mark", None)
    problem = getattr(err, "problem", None) or str(err).splitlines()[0]
    where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
    return f"{where}{problem}".replace("\n", " ")


def apply_override(
    config: dict[str, Any], assignment: str, model: type[BaseModel] | None = None
) -> None:
    """Apply `key.path=value` to a nested dict.

    The value is parsed as YAML (`1e-3`, `true`, `null`), except for text fields of `model`,
    which keep the characters as typed (`Note: this` stays a sentence, an md5 of all digits a
    string); `null` still clears them.
    """
    key, sep, raw = assignment.partition("=")
    if not sep or not key:
        raise CliError(f"--set {assignment!r}: expected key.path=value")
    *parents, leaf = key.split(".")
    node = config
    for part in parents:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise CliError(f"--set {assignment!r}: {part!r} is not a section")
        node = child
    if _is_text(_annotation_at(model, key.split("."))):
        node[leaf] = None if raw in ("null", "~") else raw
        return
    try:
        node[leaf] = yaml.safe_load(raw) if raw else ""
    except yaml.YAMLError as err:
        raise CliError(
            f"--set {key}: value {raw!r} is not valid YAML ({_yaml_problem(err)})"
        ) from None


def _read_config_file(path: str) -> dict[str, Any]:
    """The mapping in a YAML config file; one-line errors for a missing, binary, non-UTF-8 or
    invalid file, and for tags that would build Python objects (`!!python/...`: refused by
    the safe loader, never run)."""
    file = Path(path)
    if not file.is_file():
        raise CliError(f"config file not found: {file}")
    try:
        text = file.read_bytes().decode("utf-8")
    except OSError as err:
        raise CliError(f"config file {file} cannot be read: {err.strerror}") from None
    except UnicodeDecodeError:
        raise CliError(f"config file {file} is not UTF-8 text (a binary file?)") from None
    if "\x00" in text:
        raise CliError(f"config file {file} is not text: it holds NUL bytes")
    try:
        loaded = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise CliError(f"config file {file} is not valid YAML: {_yaml_problem(err)}") from None
    if loaded is not None and not isinstance(loaded, dict):
        raise CliError(f"config file {file} must hold a mapping, not {type(loaded).__name__}")
    return loaded or {}


def load_config(model: type[BaseModel], path: str | None, overrides: Sequence[str]) -> BaseModel:
    """Read the YAML file (if any), apply the overrides, validate against `model`."""
    data: dict[str, Any] = _read_config_file(path) if path is not None else {}
    for assignment in overrides:
        apply_override(data, assignment, model)
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or '<root>'}: {e['msg']}"
            + (f" (got {e['input']!r})" if not isinstance(e.get("input"), dict) else "")
            for e in exc.errors()
        )
        where = f" in {path}" if path else ""
        raise CliError(f"invalid {model.__name__}{where}: {problems}") from None


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="codecflow", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    for name, command in COMMANDS.items():
        sub = commands.add_parser(
            name,
            help=command.help,
            description=command.help,
            epilog=format_fields(command.config),
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        sub.add_argument("--config", help="YAML file holding the flow's config")
        sub.add_argument(
            "--set",
            dest="overrides",
            action="append",
            default=[],
            metavar="KEY.PATH=VALUE",
            help="override one config value (repeatable)",
        )
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
        data = _read_config_file(args.config) if args.config is not None else {}
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


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        # Before any torch work (tasks.core.threads); `threads` shows what it set.
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
    if args.command == "plan":
        return _plan(args)
    command = COMMANDS[args.command]
    # The output lines are printed at exit, after Prefect has logged its shutdown (atexit runs
    # handlers in reverse order of registration, and Prefect registers its own during the run):
    # so the last line of a run is ours, a result or a one-line error.
    final_lines: list[tuple[str, Any]] = []
    atexit.register(_print_lines, final_lines)
    try:
        config = load_config(command.config, args.config, args.overrides)
    except CliError as exc:
        final_lines.append((f"error: {exc}", sys.stderr))
        return 2
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
    final_lines.extend((f"{name}: {path}", sys.stdout) for name, path in outputs.items())
    return 0


def _one_line(error: BaseException) -> str:
    """The message on one line: a newline in a path or a worker's reason must not split it."""
    return " ".join(str(error).split("\n")).strip()


def _print_lines(lines: list[tuple[str, Any]]) -> None:
    for line, stream in lines:
        print(line, file=stream, flush=True)


if __name__ == "__main__":
    sys.exit(main())
