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

import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import save_file

from models.codec import RVQCodec, build_rvq_codec, codec_config_dict
from models.losses import codec_loss
from schemas.configs import TrainCodecSettings
from tasks.core import outputs, storage
from tasks.core.errors import CodecflowError
from tasks.core.plots import figure
from tasks.core.runtime import learning_rate_at, resolve_device
from tasks.core.storage import atomic_dir, fingerprint
from tasks.data.checkpoints import (
    latest_checkpoint,
    load_training_state,
    load_weights,
    read_log,
    save_resumable,
)
from tasks.data.manifest import CODEC_RATE, load_split_audio

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
    return (Path(out) / "checkpoint" / "metrics.json").is_file()


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
    identity = {"manifest": storage.sha256(manifest), "settings": settings.model_dump(mode="json")}
    final = out / "checkpoint"
    if is_codec_committed(out):
        metrics = json.loads((final / "metrics.json").read_text())
        if _stored_identity(metrics.get("identity")) == identity:
            return _record(final, metrics)
        raise CodecflowError(f"{final} holds a codec of another manifest or settings")
    run_identity = out / "identity.json"
    stored = json.loads(run_identity.read_text()) if run_identity.is_file() else identity
    if _stored_identity(stored) != identity:
        raise CodecflowError(
            f"{out} holds an unfinished codec run of another manifest or settings; "
            "choose another out"
        )
    out.mkdir(parents=True, exist_ok=True)
    storage.write_json(run_identity, identity)

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
    start = 0
    resumed = latest_checkpoint(out)
    if resumed is not None:
        codec.load_state_dict(load_weights(resumed / "model.safetensors"))
        state = load_training_state(resumed / "training_state.pt")
        optimizer.load_state_dict(state["optimizer"])
        torch.set_rng_state(state["torch_rng"])
        gen.set_state(state["crop_rng"])
        start = int(state["step"])
    log_path = out / "train_log.jsonl"
    log = read_log(log_path, upto=start)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda")

    codec.train()
    with open(log_path, "w") as log_file:
        log_file.writelines(json.dumps(r) + "\n" for r in log)
        for step in range(start, settings.steps):
            lr = learning_rate_at(step, settings)
            for group in optimizer.param_groups:
                group["lr"] = lr
            batch = _crops(audio, settings.batch_size, crop, gen).to(device)  # [B, 1, T]
            started = time.perf_counter()
            with autocast:
                result = codec(batch)
            loss = codec_loss(result.reconstruction.float(), batch, result.commitment_loss.float())
            optimizer.zero_grad(set_to_none=True)
            loss.total.backward()
            grad_norm = torch.nn.utils.clip_grad_norm_(codec.parameters(), settings.grad_clip)
            optimizer.step()
            record = {
                "step": step + 1,
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
            log.append(record)
            log_file.write(json.dumps(record) + "\n")
            log_file.flush()
            if (step + 1) % settings.checkpoint_every == 0 and step + 1 < settings.steps:
                save_resumable(
                    out,
                    step + 1,
                    _weights(codec),
                    {
                        "optimizer": optimizer.state_dict(),
                        "torch_rng": torch.get_rng_state(),
                        "crop_rng": gen.get_state(),
                    },
                )

    metrics = {
        "identity": identity,
        "steps": settings.steps,
        "levels": settings.num_levels,
        "n_parameters": sum(p.numel() for p in codec.parameters()),
        "loss_first": log[0]["loss"],
        "loss_last": float(np.mean([r["loss"] for r in log[-10:]])),
        "resumed_from": start,
    }
    with atomic_dir(final) as tmp:
        save_file(_weights(codec), str(tmp / "model.safetensors"))
        (tmp / "config.json").write_text(
            json.dumps({"codec": codec_config_dict(codec), "sample_rate": CODEC_RATE}, indent=2)
            + "\n"
        )
        (tmp / "train_log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in log))
        _plot_losses(log, tmp / "loss.png")
        (tmp / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")  # last
    return _record(final, metrics)


def _stored_identity(identity: Any) -> Any:
    """A run identity as written, its settings' `levels` (the field's name until `num_levels`)
    renamed, so that a run written before the rename still resumes."""
    if not isinstance(identity, dict) or not isinstance(identity.get("settings"), dict):
        return identity
    settings = dict(identity["settings"])
    if "levels" in settings and "num_levels" not in settings:
        settings["num_levels"] = settings.pop("levels")
    return {**identity, "settings": settings}


def _plot_losses(log: Sequence[Mapping[str, Any]], path: Path) -> None:
    with figure(path) as ax:
        steps = [r["step"] for r in log]
        for key in ("loss", "spectral", "mse"):
            ax.plot(steps, [r[key] for r in log], label=key)
        ax.set_yscale("log")
        ax.set_xlabel("step")
        ax.legend()


def _record(final: Path, metrics: Mapping[str, Any]) -> CodecCheckpointRecord:
    return CodecCheckpointRecord(
        path=final,
        fingerprint=fingerprint(final / "model.safetensors"),
        steps=int(metrics["steps"]),
        levels=int(metrics["levels"]),
        n_parameters=int(metrics["n_parameters"]),
        loss_first=float(metrics["loss_first"]),
        loss_last=float(metrics["loss_last"]),
        resumed_from=int(metrics["resumed_from"]),
    )
