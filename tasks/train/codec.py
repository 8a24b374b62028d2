"""Train the post's RVQ codec on a segment manifest, with resumable checkpoints (loading it back:
`tasks.loaders.load_codec`).

Plain functions, no Prefect: `tasks.prefect.wrappers` makes them tasks. Layout of `out`:

    out/checkpoints/step-000100/   resumable: model.safetensors, training_state.pt (optimizer,
                                   step, RNG states; loaded with weights_only=True), COMPLETE
    out/train_log.jsonl            one line per step; on resume, lines past the checkpoint are cut
    out/checkpoint/                the final codec: model.safetensors, config.json, metrics.json,
                                   train_log.jsonl, loss.png (metrics.json written last)

Every checkpoint folder is written under a temporary name and renamed when complete, and its
`COMPLETE` marker is written last inside it: after a kill at any moment, `train_codec` resumes
from the newest complete checkpoint and the loss curve continues where it stopped.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from models.codec import RVQCodec, build_rvq_codec, codec_config_dict
from models.losses import codec_loss
from schemas.configs import TrainCodecSettings
from tasks.core import outputs, storage
from tasks.core.errors import CodecflowError
from tasks.core.progress import StepProgress
from tasks.core.runtime import resolve_device
from tasks.data.checkpoints import is_checkpoint_committed
from tasks.data.manifest import CODEC_RATE, load_split_audio
from tasks.train.scaffold import (
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
    "CODEC_RUN_KIND",
    "CodecCheckpointRecord",
    "is_codec_committed",
    "train_codec",
]

#: The kind of folder a train-codec run owns, and what shows one written before ownership markers.
CODEC_RUN_KIND = "codec run"

CODEC_RUN_COMMITTED = ("checkpoint/metrics.json", "checkpoints/step-*/COMPLETE")

#: Progress lines: inside a Prefect run they reach the run's log (`codecflow.*` loggers).
_LOG = logging.getLogger("codecflow.train-codec")


@dataclass(frozen=True)
class CodecCheckpointRecord:
    """What a codec training run produced: small, picklable, cacheable."""

    path: Path
    fingerprint: str
    steps: int
    levels: int
    n_parameters: int
    loss_first: float
    loss_last: float
    resumed_from: int


def _codec_from_settings(settings: TrainCodecSettings) -> RVQCodec:
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
    )


def _crops(
    audio: Sequence[np.ndarray], batch_size: int, crop: int, gen: torch.Generator
) -> torch.Tensor:
    """Random crops of `crop` samples (segments shorter than a crop are zero-padded)."""
    batch = torch.zeros(batch_size, 1, crop)  # [B, 1, T]
    picks = torch.randint(0, len(audio), (batch_size,), generator=gen)
    for i, pick in enumerate(picks.tolist()):
        clip = audio[pick]
        start = int(torch.randint(0, max(1, len(clip) - crop + 1), (1,), generator=gen))
        piece = torch.from_numpy(clip[start : start + crop])  # [<= T]
        batch[i, 0, : len(piece)] = piece
    return batch


def _weights(codec: RVQCodec) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().contiguous() for k, v in codec.state_dict().items()}


def is_codec_committed(out: Path) -> bool:
    """True when `out/checkpoint` holds a complete final codec."""
    return is_checkpoint_committed(out)


def train_codec(manifest: str, out: Path, settings: TrainCodecSettings) -> CodecCheckpointRecord:
    """Train the codec on the manifest's train split; resume from the newest checkpoint.

    Loss = MSE + multi-scale spectral loss + 0.02 x commitment (the post). A complete final
    checkpoint for the same manifest and settings is returned as is.
    """
    out = Path(out)
    if not storage.exists(manifest):
        raise CodecflowError(f"segment manifest not found: {manifest}")
    with outputs.owned_output(out, CODEC_RUN_KIND, "train-codec", CODEC_RUN_COMMITTED):
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
        settings.model_dump(mode="json"),
        # `num_levels` was `levels` until the one name for K: a run recorded before still resumes.
        renamed={"levels": "num_levels"},
    )
    metrics = identity.committed(out)
    if metrics is not None:
        return read_record(CodecCheckpointRecord, out / "checkpoint", metrics)
    # The run's identity is recorded once, before its first step (not per checkpoint).
    run_identity = out / "identity.json"
    identity.check_resumable(out, read_identity(run_identity))
    out.mkdir(parents=True, exist_ok=True)
    storage.write_json(run_identity, identity.to_json())
    return _train(manifest, out, settings, identity)


def _train(
    manifest: str, out: Path, settings: TrainCodecSettings, identity: RunIdentity
) -> CodecCheckpointRecord:
    """The training loop from the newest checkpoint on, then the final codec."""
    audio = [clip for _, clip in load_split_audio(manifest, "train")]
    hop = 2**settings.n_blocks
    crop = max(hop, int(settings.crop_seconds * CODEC_RATE) // hop * hop)  # whole frames
    device = resolve_device(settings.device)
    torch.manual_seed(settings.seed)
    codec = _codec_from_settings(settings).to(device)
    optimizer = torch.optim.AdamW(
        codec.parameters(), lr=settings.learning_rate, weight_decay=settings.weight_decay
    )
    gen = torch.Generator().manual_seed(settings.seed)
    resumed = resume(out, codec, optimizer)
    if resumed.checkpoint is not None:
        gen.set_state(resumed.state["crop_rng"])
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda")

    meter = StepProgress(
        _LOG, "train-codec", settings.steps, "samples", settings.batch_size, start=resumed.step
    )
    codec.train()
    for step, lr in schedule(optimizer, resumed.step, settings):
        batch = _crops(audio, settings.batch_size, crop, gen).to(device)  # [B, 1, T]
        record = _step(codec, optimizer, batch, autocast, settings.grad_clip, lr)
        resumed.log.append({"step": step + 1, **record})  # "step" first, as before
        meter.update(step + 1, loss=record["loss"])
        if checkpoint_due(step + 1, settings):
            state = {"crop_rng": gen.get_state()}
            save_checkpoint(out, step + 1, _weights(codec), optimizer, state)

    log = resumed.log
    metrics = {
        "identity": identity.to_json(),
        "steps": settings.steps,
        "levels": settings.num_levels,
        "n_parameters": sum(p.numel() for p in codec.parameters()),
        "loss_first": log.rows[0]["loss"],
        "loss_last": float(np.mean([r["loss"] for r in log.rows[-10:]])),
        "resumed_from": resumed.step,
    }
    config = {"codec": codec_config_dict(codec), "sample_rate": CODEC_RATE}
    final = write_final(out, _weights(codec), config, metrics, log, lambda p: _plot(log, p))
    return read_record(CodecCheckpointRecord, final, metrics)


def _step(
    codec: RVQCodec,
    optimizer: torch.optim.Optimizer,
    batch: torch.Tensor,
    autocast: torch.autocast,
    grad_clip: float,
    lr: float,
) -> dict[str, Any]:
    """One optimizer step on `batch` [B, 1, T]; its log record but the step number."""
    started = time.perf_counter()
    with autocast:
        result = codec(batch)
    loss = codec_loss(result.reconstruction.float(), batch, result.commitment_loss.float())
    optimizer.zero_grad(set_to_none=True)
    loss.total.backward()
    grad_norm = torch.nn.utils.clip_grad_norm_(codec.parameters(), grad_clip)
    optimizer.step()
    return {
        "loss": loss.total.item(),
        "mse": loss.mse.item(),
        "spectral": loss.spectral.item(),
        "commitment": loss.commitment.item(),
        "levels_used": int(result.codes.shape[1]),
        "dead_code_fraction": float(np.mean(result.metrics.dead_code_fraction)),
        "lr": lr,
        "grad_norm": float(grad_norm),
        "seconds": time.perf_counter() - started,
    }


def _plot(log: RunLog, path: Path) -> None:
    curves = {key: key for key in ("loss", "spectral", "mse")}
    plot_log(log.rows, path, curves, log_scale=True)
