"""Train the post's RVQ codec on a segment manifest, with resumable checkpoints (loading it back:
`tasks.loaders.load_codec`), on one process or on the ranks of torchrun (DDP).

Shape symbols: B crops per rank and step, T samples per crop, W ranks.

Plain functions, no Prefect: `tasks.prefect.wrappers` makes them tasks. Layout of `out`:

    out/checkpoints/step-000100/   resumable: model.safetensors, training_state.pt (optimizer,
                                   step, RNG state, crops consumed; loaded with
                                   weights_only=True), COMPLETE
    out/train_log.jsonl            one line per step; on resume, lines past the checkpoint are cut
    out/ranks/rank-<r>.json        under torchrun: each rank's sha256 of its weights and codebooks
    out/checkpoint/                the final codec: model.safetensors, config.json, metrics.json,
                                   train_log.jsonl, loss.png (metrics.json written last)

Every checkpoint folder is written under a temporary name and renamed when complete, and its
`COMPLETE` marker is written last inside it: after a kill at any moment, `train_codec` resumes
from the newest complete checkpoint and the loss curve continues where it stopped.

The crops are read lazily from the manifest's audio by `torch.utils.data` workers
(`tasks.data.crops`): no split is held in memory. Crop `i` is a pure function of `(seed, i)`;
rank `r` of `W` reads crops `consumed + (s * W + r) * B ...` at step `s`, and the checkpoint
records `crops_consumed`: a resumed run, on any number of ranks, continues the global sequence of
crops where it stopped (none repeated, none skipped; with other W, a step then takes W * B of
them). The number of levels a step trains with (quantizer dropout) is drawn from `(seed, step)`,
the same on every rank. Under torchrun, DDP all-reduces the gradients and the quantizer's
`CodebookSync` all-reduces the codebooks' statistics and broadcasts rank 0's restarts, so every
rank holds the same codec, bit for bit; rank 0 writes the log and the checkpoints.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from codecflow.models.codec import RVQCodec, build_rvq_codec, codec_config_dict
from codecflow.models.losses import codec_loss
from codecflow.models.mulaw import mulaw_decode_post, mulaw_encode_post
from codecflow.schemas.configs import TrainCodecSettings
from codecflow.tasks.core import storage
from codecflow.tasks.core.errors import CodecflowError
from codecflow.tasks.core.progress import StepProgress
from codecflow.tasks.core.runtime import resolve_device
from codecflow.tasks.core.tracking import Tracker, check_log_to
from codecflow.tasks.data.checkpoints import is_checkpoint_committed
from codecflow.tasks.data.crops import CropIndex, batches, crop_loader, read_crop_index
from codecflow.tasks.data.manifest import CODEC_RATE
from codecflow.tasks.train.distributed import (
    DistributedCodebookSync,
    Ranks,
    barrier,
    holding,
    init_distributed,
    write_rank_fingerprint,
)
from codecflow.tasks.train.scaffold import (
    Resumed,
    RunIdentity,
    RunLog,
    checkpoint_due,
    plot_log,
    read_identity,
    read_record,
    resume,
    save_checkpoint,
    schedule,
    write_final,
)

__all__ = [
    "CODEC_RUN_COMMITTED",
    "CODEC_RUN_HELD_ENV",
    "CODEC_RUN_KIND",
    "CodecCheckpointRecord",
    "codec_from_settings",
    "is_codec_committed",
    "train_codec",
]

#: The kind of folder a train-codec run owns, and what shows one written before ownership markers.
CODEC_RUN_KIND = "codec run"

CODEC_RUN_COMMITTED = ("checkpoint/metrics.json", "checkpoints/step-*/COMPLETE")

#: Set by the task that launches torchrun (to `out`): it holds the run's lock, not its ranks.
CODEC_RUN_HELD_ENV = "CODECFLOW_CODEC_RUN_HELD"

#: Settings added after runs were recorded that do not change what is learnt (how many ranks
#: and loader workers, the trackers): left out of the run's identity, so that a run resumes
#: with other values (on another number of ranks) and runs recorded before them still resume.
_RUNTIME_ONLY = {"nproc_per_node", "loader_workers", "prefetch_batches", "log_to"}

#: Settings added since runs were recorded, with the value those runs trained with (issue 24
#: made the post's recipe the default): a run recorded before them resumes as it was.
_ADDED = {
    "spectral_loss": "l1-log",
    "commitment": "mean",
    "codebooks": "data",
    "input_audio": "pcm",
}

#: Progress lines: inside a Prefect run they reach the run's log (`codecflow.*` loggers).
_LOG = logging.getLogger("codecflow.train-codec")


#: The metrics.json names 0.1 wrote (`levels`, `loss_first`, `loss_last`): its checkpoints are
#: read as they are, under the names the LM trainer uses.
_METRICS_0_1 = {
    "levels": "num_levels",
    "loss_first": "train_loss_first",
    "loss_last": "train_loss_last",
}


@dataclass(frozen=True)
class CodecCheckpointRecord:
    """What a codec training run produced: small, picklable, cacheable."""

    path: Path
    fingerprint: str
    steps: int
    num_levels: int
    n_parameters: int
    train_loss_first: float
    train_loss_last: float
    resumed_from: int


def codec_from_settings(settings: TrainCodecSettings) -> RVQCodec:
    """The untrained codec train-codec starts from (bench/gpu_check.py times the same)."""
    return build_rvq_codec(
        arch=settings.arch,
        num_levels=settings.num_levels,
        channels=settings.channels,
        latent_dim=settings.latent_dim,
        res_depth=settings.res_depth,
        n_blocks=settings.n_blocks,
        codebook_size=settings.codebook_size,
        update_speed=settings.update_speed,
        quantizer_dropout=settings.quantizer_dropout,
        codebooks=settings.codebooks,
        commitment=settings.commitment,
    )


def _weights(codec: RVQCodec) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().contiguous() for k, v in codec.state_dict().items()}


def is_codec_committed(out: Path) -> bool:
    """True when `out/checkpoint` holds a complete final codec."""
    return is_checkpoint_committed(out)


def train_codec(manifest: str, out: Path, settings: TrainCodecSettings) -> CodecCheckpointRecord:
    """Train the codec on the manifest's train split; resume from the newest checkpoint.

    Loss = MSE + multi-scale spectral loss + 0.02 x commitment (the post), on the audio after
    the post's 8-bit mu-law round trip unless `input_audio` is "pcm". Under torchrun
    (WORLD_SIZE > 1) every rank calls this: DDP with NCCL on GPUs, gloo on the CPU; rank 0
    writes. A complete final checkpoint for the same manifest and settings is returned as is.
    """
    out = Path(out)
    if not storage.exists(manifest):
        raise CodecflowError(f"segment manifest not found: {manifest}")
    check_log_to(settings.log_to)
    with holding(out, CODEC_RUN_KIND, "train-codec", CODEC_RUN_COMMITTED, CODEC_RUN_HELD_ENV):
        return _train_codec_owned(manifest, out, settings)


def _train_codec_owned(
    manifest: str, out: Path, settings: TrainCodecSettings
) -> CodecCheckpointRecord:
    """train_codec once `out` is ours and locked: the committed codec, or resume, or start."""
    identity = RunIdentity(
        CODEC_RUN_KIND,
        "codec",
        "manifest",
        storage.sha256(manifest),
        settings.model_dump(mode="json", exclude=_RUNTIME_ONLY),
        # `num_levels` was `levels` until the one name for K: a run recorded before still resumes.
        renamed={"levels": "num_levels"},
        added=_ADDED,
    )
    metrics = identity.committed(out)
    if metrics is not None:
        return read_record(CodecCheckpointRecord, out / "checkpoint", metrics, _METRICS_0_1)
    # The run's identity is recorded once, before its first step (not per checkpoint).
    run_identity = out / "identity.json"
    identity.check_resumable(out, read_identity(run_identity))
    if int(os.environ.get("RANK", "0")) == 0:
        out.mkdir(parents=True, exist_ok=True)
        storage.write_json(run_identity, identity.to_json())
    return _train(manifest, out, settings, identity)


@dataclass(frozen=True)
class _Run:
    """One rank's share of a run: where it runs, the codec (as trained: in DDP over ranks)."""

    device: torch.device
    ranks: Ranks
    codec: RVQCodec
    trained: Any  # the codec, or its DistributedDataParallel wrapper
    optimizer: torch.optim.AdamW
    autocast: torch.autocast


def _build(settings: TrainCodecSettings) -> _Run:
    """The device and ranks, then the codec (seeded: the same initial weights on every rank)."""
    device = resolve_device(settings.device)
    ranks = init_distributed(device)
    if device.type == "cuda" and ranks.world > 1:
        device = torch.device("cuda", ranks.local_rank)
        torch.cuda.set_device(device)
    torch.manual_seed(settings.seed)
    codec = codec_from_settings(settings).to(device)
    optimizer = torch.optim.AdamW(
        codec.parameters(), lr=settings.learning_rate, weight_decay=settings.weight_decay
    )
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda")
    trained: Any = codec
    if ranks.world > 1:
        from torch.nn.parallel import DistributedDataParallel

        codec.quantizer.sync = DistributedCodebookSync()
        # broadcast_buffers=False: the codebooks stay equal through their own sync (every rank's
        # statistics); DDP's default would overwrite them with rank 0's at each forward, losing
        # the others' statistics, and hide a sync that failed (the 2-rank test checks them).
        device_ids = [device.index] if device.type == "cuda" else None
        trained = DistributedDataParallel(codec, device_ids=device_ids, broadcast_buffers=False)
    return _Run(device, ranks, codec, trained, optimizer, autocast)


def _train(
    manifest: str, out: Path, settings: TrainCodecSettings, identity: RunIdentity
) -> CodecCheckpointRecord:
    """The training loop from the newest checkpoint on, then the final codec (rank 0)."""
    index = read_crop_index(manifest, "train")
    run = _build(settings)
    resumed = resume(out, run.codec, run.optimizer, write_log=run.ranks.main)
    # Rank 0 logs for all ranks, as it writes.
    log_to = settings.log_to if run.ranks.main else []
    tracked = {**settings.model_dump(mode="json"), "manifest": manifest, "out": str(out)}
    name = f"train-codec {out.name}"
    with Tracker(out, name, tracked, log_to, resumed_step=resumed.step) as tracker:
        started = time.perf_counter()
        _loop(out, settings, run, index, resumed, tracker)
        elapsed = time.perf_counter() - started
        if run.ranks.world > 1:
            write_rank_fingerprint(out / "ranks", run.ranks, run.codec)
        if not run.ranks.main:
            barrier(run.ranks)
            return CodecCheckpointRecord(out / "checkpoint", "", settings.steps, 0, 0, 0.0, 0.0, 0)
        crops = (settings.steps - resumed.step) * run.ranks.world * settings.batch_size
        crops_per_s = crops / max(elapsed, 1e-9)  # all ranks together
        tracker.scalars(settings.steps, {"run/crops_per_s": crops_per_s})
    log = resumed.log
    metrics = {
        "identity": identity.to_json(),
        "steps": settings.steps,
        "num_levels": settings.num_levels,
        "n_parameters": sum(p.numel() for p in run.codec.parameters()),
        "train_loss_first": log.rows[0]["loss"],
        "train_loss_last": float(np.mean([r["loss"] for r in log.rows[-10:]])),
        "resumed_from": resumed.step,
        "ranks": run.ranks.world,
        "crops_per_s": crops_per_s,
    }
    config = {"codec": codec_config_dict(run.codec), "sample_rate": CODEC_RATE}
    final = write_final(out, _weights(run.codec), config, metrics, log, lambda p: _plot(log, p))
    barrier(run.ranks)
    return read_record(CodecCheckpointRecord, final, metrics, _METRICS_0_1)


def _crop_samples(settings: TrainCodecSettings) -> int:
    hop = 2**settings.n_blocks
    return max(hop, int(settings.crop_seconds * CODEC_RATE) // hop * hop)  # whole frames


def _levels_generator(seed: int, step: int) -> torch.Generator:
    """The generator of step `step`'s quantizer-dropout draw: a function of (seed, step), so
    every rank trains the same levels and a resumed run draws what the uninterrupted one did."""
    state = np.random.SeedSequence([seed, step]).generate_state(1, np.uint64)[0]
    return torch.Generator().manual_seed(int(state))


def _loop(
    out: Path,
    settings: TrainCodecSettings,
    run: _Run,
    index: CropIndex,
    resumed: Resumed,
    tracker: Tracker,
) -> None:
    """The steps from the resumed one to the last; rank 0 logs and checkpoints."""
    world, batch_size = run.ranks.world, settings.batch_size
    # A checkpoint of before the streaming loader kept a generator, not a count: one rank of
    # `batch_size` crops per step had run, and the new sequence of crops continues from there.
    consumed = int(resumed.state.get("crops_consumed", resumed.step * batch_size))
    loader = crop_loader(
        index,
        crop=_crop_samples(settings),
        seed=settings.seed,
        first=consumed,
        steps=settings.steps - resumed.step,
        batch_size=batch_size,
        ranks=(run.ranks.rank, world),
        workers=settings.loader_workers,
        prefetch=settings.prefetch_batches,
        pin_memory=run.device.type == "cuda",  # so that the copy below does not block
    )
    crops = batches(loader)
    meter = StepProgress(
        _LOG, "train-codec", settings.steps, "samples", world * batch_size, start=resumed.step
    )
    run.codec.train()
    for step, lr in schedule(run.optimizer, resumed.step, settings):
        waited = time.perf_counter()
        batch = next(crops).to(run.device, non_blocking=True)  # [B, 1, T]
        waited = time.perf_counter() - waited
        if settings.input_audio == "mu-law":
            # train_codec.py get_batch: the stored 8-bit mu-law tokens, expanded (34.5 dB SNR).
            batch = mulaw_decode_post(mulaw_encode_post(batch))  # [B, 1, T]
        levels = _levels_generator(settings.seed, step)
        record = _step(run, batch, settings, lr, levels)
        step_crops = [consumed, consumed + world * batch_size]
        consumed += world * batch_size
        if not run.ranks.main:
            continue
        extra = {"data_seconds": waited, "crops": step_crops, "ranks": world}
        resumed.log.append({"step": step + 1, **record, **extra})  # "step" first, as before
        meter.update(step + 1, loss=record["loss"])
        crops_per_s = world * batch_size / max(record["seconds"] + waited, 1e-9)
        tracker.scalars(step + 1, {**record, "data_seconds": waited, "crops_per_s": crops_per_s})
        if checkpoint_due(step + 1, settings):
            state = {"crops_consumed": consumed}
            save_checkpoint(out, step + 1, _weights(run.codec), run.optimizer, state)
    crops.close()


def _step(
    run: _Run,
    batch: torch.Tensor,
    settings: TrainCodecSettings,
    lr: float,
    levels: torch.Generator,
) -> dict[str, Any]:
    """One optimizer step on `batch` [B, 1, T]; its log record but the step number."""
    started = time.perf_counter()
    with run.autocast:
        result = run.trained(batch, generator=levels)
    loss = codec_loss(
        result.reconstruction.float(),
        batch,
        result.commitment_loss.float(),
        spectral=settings.spectral_loss,
    )
    run.optimizer.zero_grad(set_to_none=True)
    loss.total.backward()  # DDP averages the gradients over the ranks
    grad_norm = torch.nn.utils.clip_grad_norm_(run.codec.parameters(), settings.grad_clip)
    run.optimizer.step()
    return {
        "loss": loss.total.item(),
        "mse": loss.mse.item(),
        "spectral": loss.spectral.item(),
        "commitment": loss.commitment.item(),
        "levels_used": int(result.codes.shape[1]),
        "dead_code_fraction": float(np.mean(result.metrics.dead_code_fraction)),
        "restarted_codes": int(sum(result.metrics.restarted_codes)),
        "lr": lr,
        "grad_norm": float(grad_norm),
        "seconds": time.perf_counter() - started,
    }


def _plot(log: RunLog, path: Path) -> None:
    curves = {key: key for key in ("loss", "spectral", "mse")}
    plot_log(log.rows, path, curves, log_scale=True)
