"""`codecflow plan`: what a pipeline or train-lm config will cost, without running it.

Validated config in, `RunPlan` out, plain functions and no Prefect: the LM's parameters, FLOPs per
token and memory per GPU (`models.budget`, the model built on the meta device), tokens per step,
steps per epoch of the token dataset (its `dataset.json` when it exists, else the hours the config
plans to acquire at the tokenizer's rate, `tasks.tokenize.sizes`), the wall time at a stated MFU,
the disk of the tokens (`project_sizes`) and the Prefect task runs of the tokenize flow
(`tasks.tokenize.plan.planned_tasks`). It sits in `flows/` because it needs two stages' rules
(tokenize's sizes and shard plan, train's model shape), which no stage may import together.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from codecflow.cli.download_costs import DownloadPlan, download_rows, plan_download
from codecflow.models.budget import LMBudget, lm_budget
from codecflow.models.flops import PEAK_BF16_FLOPS
from codecflow.models.layouts import make_layout
from codecflow.schemas.configs import (
    PipelineConfig,
    TrainCodecSettings,
    TrainLMConfig,
    TrainLMSettings,
)
from codecflow.schemas.sources import LIBRILIGHT_ARCHIVES, LIBRILIGHT_SPLITS
from codecflow.schemas.tokenizers import dataset_folder_name, parse_tokenizer_name
from codecflow.tasks.core import storage
from codecflow.tasks.core.errors import CodecflowError
from codecflow.tasks.data.lm_windows import model_config
from codecflow.tasks.data.records import DatasetInfo
from codecflow.tasks.tokenize.plan import PlannedTasks, planned_tasks
from codecflow.tasks.tokenize.sizes import (
    TokenizerFacts,
    describe_tokenizer,
    facts_from_spec,
    project_sizes,
    smallest_token_bytes,
)

__all__ = [
    "DEFAULT_MFU",
    "DEFAULT_PEAK_TFLOPS",
    "DataPlan",
    "RunPlan",
    "format_plan",
    "plan_pipeline",
    "plan_train_lm",
]

#: The default throughput: 40 % MFU (PaLM's definition, `models.flops`) of an H100 SXM's dense
#: bf16 peak, 989 TFLOP/s (NVIDIA's data sheet; `models.flops.PEAK_BF16_FLOPS`).
DEFAULT_MFU = 0.4
DEFAULT_PEAK_TFLOPS = PEAK_BF16_FLOPS["H100"] / 1e12

#: Sample rate of the audio the pipeline's own codec trains on (Libri-Light's 16 kHz; the codec
#: presets' default, models/codec.py).
_CODEC_SAMPLE_RATE = 16_000

#: The tokenize flow's tasks besides the shard groups: plan-tokens and finalize-dataset
#: (flows/tokenize.py).
_TOKENIZE_FIXED_TASKS = 2


@dataclass(frozen=True)
class DataPlan:
    """The tokens the LM trains on: a committed dataset, or the hours a pipeline will acquire."""

    source: str  # where the figures come from, in words
    tokenizer: TokenizerFacts
    hours: float | None  # audio hours, both splits
    train_tokens: int | None
    disk_bytes: int | None
    reference_disk_bytes: int | None  # the post's .bin layout (int32, uint8 for mu-law)
    tokenize_tasks: PlannedTasks | None  # None: tokenized already, or nothing to plan

    @property
    def tokenize_task_runs(self) -> int | None:
        if self.tokenize_tasks is None:
            return None
        return self.tokenize_tasks.groups + _TOKENIZE_FIXED_TASKS


@dataclass(frozen=True)
class RunPlan:
    """Everything `codecflow plan` prints."""

    kind: str  # "pipeline" or "train-lm"
    config: str | None  # the file planned
    preset: str | None
    layout: str
    budget: LMBudget
    data: DataPlan
    steps: int
    nodes: int
    mfu: float
    peak_flops: float  # per GPU, FLOP/s
    download: DownloadPlan | None = None  # a pipeline's acquisition; None for train-lm

    @property
    def gpus(self) -> int:
        return self.budget.ranks

    @property
    def steps_per_epoch(self) -> float | None:
        tokens = self.data.train_tokens
        return tokens / self.budget.tokens_per_step if tokens else None

    @property
    def epochs(self) -> float | None:
        per_epoch = self.steps_per_epoch
        return self.steps / per_epoch if per_epoch else None

    @property
    def tokens_per_s(self) -> float:
        """All GPUs together, at `mfu` of `peak_flops` each."""
        return self.mfu * self.peak_flops * self.gpus / self.budget.flops_per_token

    @property
    def wall_seconds(self) -> float:
        return self.steps * self.budget.tokens_per_step / self.tokens_per_s

    def to_json(self) -> dict[str, Any]:
        """The plan as one JSON object: the records and the derived figures."""
        budget = asdict(self.budget)
        budget["memory"].update(
            total_flash=self.budget.memory.total_flash,
            total_no_flash=self.budget.memory.total_no_flash,
        )
        data = asdict(self.data)
        data["tokenize_task_runs"] = self.data.tokenize_task_runs
        data["tokenizer"]["tokens_per_second"] = self.data.tokenizer.tokens_per_second
        fields = ("kind", "config", "preset", "layout", "steps", "nodes", "mfu", "peak_flops")
        derived = ("gpus", "steps_per_epoch", "epochs", "tokens_per_s", "wall_seconds")
        download = None
        if self.download is not None:
            download = {
                **asdict(self.download),
                "archive_bytes": self.download.archive_bytes,
                "peak_bytes": self.download.peak_bytes,
            }
        return {
            **{name: getattr(self, name) for name in fields + derived},
            "budget": budget,
            "data": data,
            "download": download,
        }


def _source_hours(source: str) -> float | None:
    """Hours of a named Libri-Light archive or split (schemas/sources.py); None for a URL."""
    if source in LIBRILIGHT_ARCHIVES:
        return LIBRILIGHT_ARCHIVES[source].hours
    if source in LIBRILIGHT_SPLITS:
        return sum(LIBRILIGHT_ARCHIVES[name].hours for name in LIBRILIGHT_SPLITS[source])
    return None


def _trained_codec_facts(name: str, codec: TrainCodecSettings) -> TokenizerFacts:
    """The rates of `codec:trained[@N]` before its codec exists: from the train_codec section."""
    levels = parse_tokenizer_name(name).num_levels or codec.num_levels
    rate = _CODEC_SAMPLE_RATE
    token_bytes = smallest_token_bytes(codec.codebook_size)
    return TokenizerFacts(
        name, rate, rate / 2**codec.n_blocks, levels, codec.codebook_size, token_bytes
    )


def _dataset_info(path: str | Path) -> DatasetInfo | None:
    """The dataset.json of a dataset folder or URL (`s3://...`), or None when it has none."""
    info = storage.join(path, "dataset.json")
    return DatasetInfo.read(info) if storage.exists(info) else None


def _from_dataset(path: str | Path, info: DatasetInfo) -> DataPlan:
    facts = facts_from_spec(info.tokenizer)
    train = sum(s.tokens for s in info.shards if s.split == "train")
    reference = info.totals.tokens * facts.reference_token_bytes
    return DataPlan(
        f"dataset {path}", facts, float(info.totals.audio_hours), train, info.totals.bytes,
        reference, None,
    )  # fmt: skip


def _planned(facts: TokenizerFacts, hours: float | None, train_share: float, source: str,
             tasks: PlannedTasks | None) -> DataPlan:  # fmt: skip
    """Tokens, bytes of `hours` of audio of which `train_share` is the train split."""
    if hours is None:
        return DataPlan(source, facts, None, None, None, None, tasks)
    sizes = project_sizes(facts, hours)
    train = round(hours * train_share * 3600.0 * facts.frame_rate) * facts.num_levels
    return DataPlan(
        source, facts, hours, train, sizes["bytes"], sizes["bytes_int32_reference"], tasks
    )


def _pipeline_data(cfg: PipelineConfig, hours: float | None) -> DataPlan:
    """The pipeline's tokens: its committed dataset if any, else the hours acquire will keep."""
    name = cfg.tokenize.tokenizer
    codec_dir = Path(cfg.out) / "codec" / "checkpoint"
    if PipelineConfig.names_trained_codec(name):
        assert cfg.train_codec is not None  # PipelineConfig's validator
        if (codec_dir / "config.json").is_file():
            parsed = parse_tokenizer_name(name)
            levels = f"@{parsed.num_levels}" if parsed.num_levels else ""
            name = f"codec:{codec_dir}{levels}"
            facts = describe_tokenizer(name)
        else:
            facts = _trained_codec_facts(name, cfg.train_codec)
    else:
        facts = describe_tokenizer(name)
    if (Path(cfg.out) / "tokens").is_dir():
        path = Path(cfg.out) / "tokens" / dataset_folder_name(name)
        info = _dataset_info(path)
        if info is not None:
            return _from_dataset(path, info)
    acquire = cfg.acquire
    if hours is not None:
        source = f"{hours:,g} h (--hours)"
    elif acquire.target_hours is not None:
        hours, source = acquire.target_hours, f"{acquire.target_hours:,g} h (acquire.target_hours)"
    else:
        hours = _source_hours(acquire.source)
        if hours is None:
            source = f"the hours of {acquire.source} are not known before acquiring: --hours H"
            return _planned(facts, None, 1.0, source, None)
        source = f"{hours:,g} h (all of {acquire.source})"
    split = {"train": hours * (1 - acquire.val_fraction), "val": hours * acquire.val_fraction}
    tasks = planned_tasks(split, cfg.tokenize.shard_hours, cfg.tokenize.max_tasks)
    source += f", {1 - acquire.val_fraction:.0%} train"
    return _planned(facts, hours, 1 - acquire.val_fraction, source, tasks)


def _train_lm_data(cfg: TrainLMConfig, tokenizer: str | None, hours: float | None) -> DataPlan:
    info = _dataset_info(cfg.dataset)
    if info is not None:
        return _from_dataset(cfg.dataset, info)
    if tokenizer is None:
        raise CodecflowError(
            f"no token dataset at {cfg.dataset} (dataset.json is missing): name the tokenizer "
            "it will have with --tokenizer (and its train hours with --hours)"
        )
    source = f"{hours:,g} h of train audio (--hours)" if hours else "no hours (--hours)"
    return _planned(describe_tokenizer(tokenizer), hours, 1.0, source, None)


def _plan(kind: str, settings: TrainLMSettings, data: DataPlan, nodes: int, mfu: float,
          peak_tflops: float, source: str | None) -> RunPlan:  # fmt: skip
    """The LM's part of a plan: the checks `train_lm` would make, then the budget."""
    if not 0 < mfu <= 1:
        raise CodecflowError(f"--mfu must be in (0, 1], got {mfu}")
    if not peak_tflops > 0 or not nodes >= 1:
        raise CodecflowError(f"--peak-tflops must be > 0 and --nodes >= 1 ({peak_tflops}, {nodes})")
    facts = data.tokenizer
    weights = settings.level_weights
    if weights is not None and len(weights) != facts.num_levels:
        raise CodecflowError(
            f"level_weights has {len(weights)} values; {facts.name} has {facts.num_levels} levels"
        )
    if settings.preset is None and settings.n_embd % settings.n_head:
        raise CodecflowError(
            f"n_embd={settings.n_embd} is not a multiple of n_head={settings.n_head}"
        )
    vocab = make_layout(settings.layout).vocab_size(facts.codebook_size, facts.num_levels)
    config = model_config(settings, vocab)
    ranks = settings.nproc_per_node * nodes
    bf16 = settings.device != "cpu"  # 'auto' plans for CUDA, where training autocasts to bf16
    budget = lm_budget(config, settings.batch_size, settings.grad_accum_steps, ranks, bf16)
    return RunPlan(
        kind, source, settings.preset, settings.layout, budget, data, settings.steps, nodes, mfu,
        peak_tflops * 1e12,
    )  # fmt: skip


def plan_pipeline(
    cfg: PipelineConfig,
    *,
    hours: float | None = None,
    nodes: int = 1,
    mfu: float = DEFAULT_MFU,
    peak_tflops: float = DEFAULT_PEAK_TFLOPS,
    source: str | None = None,
) -> RunPlan:
    """The plan of a pipeline config (read from `source`); `hours` replaces the hours it would
    acquire."""
    data = _pipeline_data(cfg, hours)
    plan = _plan("pipeline", cfg.train_lm, data, nodes, mfu, peak_tflops, source)
    return replace(plan, download=plan_download(cfg.acquire))


def plan_train_lm(
    cfg: TrainLMConfig,
    *,
    tokenizer: str | None = None,
    hours: float | None = None,
    nodes: int = 1,
    mfu: float = DEFAULT_MFU,
    peak_tflops: float = DEFAULT_PEAK_TFLOPS,
    source: str | None = None,
) -> RunPlan:
    """The plan of a train-lm config (read from `source`): from its dataset, or from `tokenizer`
    and `hours` of train audio when it has not been tokenized yet."""
    data = _train_lm_data(cfg, tokenizer, hours)
    return _plan("train-lm", cfg, data, nodes, mfu, peak_tflops, source)


def _gib(n_bytes: float) -> str:
    return f"{n_bytes / 2**30:,.2f} GiB"


def _duration(seconds: float) -> str:
    if seconds >= 2 * 86_400:
        return f"{seconds / 86_400:,.1f} days"
    if seconds >= 3600:
        return f"{seconds / 3600:,.1f} h"
    return f"{seconds / 60:,.1f} min" if seconds >= 60 else f"{seconds:,.1f} s"


def _amount(value: float, unit: str, prefixes: str = "kMBT") -> str:
    """1.05e12 -> '1.05 T<unit>' (B for billions of tokens, G for FLOPs: `prefixes`)."""
    for power, prefix in reversed(list(enumerate(prefixes, start=1))):
        if value >= 1000**power:
            return f"{value / 1000**power:,.2f} {prefix}{unit}".rstrip()
    return f"{value:,.0f} {unit}".rstrip()


def _model_rows(plan: RunPlan) -> list[str]:
    b, c = plan.budget, plan.budget.config
    m = b.memory
    return [
        f"plan             {plan.config or '(defaults)'}: {plan.kind}",
        f"model            {'preset ' + plan.preset if plan.preset else 'explicit shape'}: "
        f"{c.n_layer} layers x {c.n_head} heads x {c.n_embd:,} wide, block {c.block_size:,}, "
        f"vocab {c.vocab_size:,} ({plan.layout})",
        f"parameters       {b.parameters_nanogpt:,} (nanoGPT's count, without the position "
        f"embedding); {b.parameters_total:,} in all",
        f"FLOPs per token  {_amount(b.flops_per_token, 'FLOP', 'kMGT')} "
        "(training: 6 N + 12 L H Q T)",
        f"memory per GPU   {'bf16 autocast (CUDA)' if b.bf16 else 'fp32'}, micro-batch "
        f"{b.micro_batch} x {c.block_size:,} tokens",
        f"  weights        {_gib(m.weights)} (fp32)",
        f"  gradients      {_gib(m.gradients)} (fp32)",
        f"  AdamW state    {_gib(m.adamw)} (2 fp32 moments)",
        *([f"  bf16 copies    {_gib(m.weight_copies)} (autocast)"] if m.weight_copies else []),
        *([f"  DDP buckets    {_gib(m.ddp_buckets)}"] if m.ddp_buckets else []),
        f"  activations    {_gib(m.activations_flash)} with flash attention, "
        f"{_gib(m.activations_no_flash)} without",
        f"  total          {_gib(m.total_flash)} with flash attention, "
        f"{_gib(m.total_no_flash)} without",
        f"tokens per step  {b.tokens_per_step:,} = {b.micro_batch} x {c.block_size:,} x "
        f"{b.grad_accum_steps} accumulation x {b.ranks} GPU{'s' if b.ranks > 1 else ''}",
    ]


def _data_rows(plan: RunPlan) -> list[str]:
    d, t = plan.data, plan.data.tokenizer
    rows = [f"tokens           {t.name}, {t.tokens_per_second:,g}/s; {d.source}"]
    if d.train_tokens is not None and plan.steps_per_epoch is not None:
        rows.append(f"  train tokens   {d.train_tokens:,} ({_amount(d.train_tokens, '')})")
        rows.append(f"steps per epoch  {plan.steps_per_epoch:,.0f}")
    total = plan.steps * plan.budget.tokens_per_step
    epochs = f" = {plan.epochs:,.2f} epochs" if plan.epochs is not None else ""
    rows.append(f"steps            {plan.steps:,}{epochs}, {_amount(total, '')} tokens")
    rows.append(
        f"wall time        {_duration(plan.wall_seconds)} at {plan.mfu:.0%} MFU of "
        f"{plan.peak_flops / 1e12:,.0f} TFLOP/s x {plan.gpus} GPU{'s' if plan.gpus > 1 else ''} "
        f"({plan.tokens_per_s:,.0f} tokens/s)"
    )
    if d.disk_bytes is not None and d.reference_disk_bytes is not None:
        rows.append(
            f"disk for tokens  {_gib(d.disk_bytes)} ({t.token_bytes} B per token; the post's "
            f".bin: {_gib(d.reference_disk_bytes)})"
        )
    tasks = d.tokenize_tasks
    if tasks is not None and d.tokenize_task_runs is not None:
        rows.append(
            f"tokenize tasks   {d.tokenize_task_runs:,} Prefect task runs: plan + {tasks.groups:,} "
            f"write-shards (about {tasks.shards:,} shards, {tasks.shards_per_group} per task) + "
            "finalize"
        )
    return rows


def format_plan(plan: RunPlan) -> str:
    """The table `codecflow plan` prints."""
    download = download_rows(plan.download) if plan.download is not None else []
    return "\n".join(_model_rows(plan) + download + _data_rows(plan))
