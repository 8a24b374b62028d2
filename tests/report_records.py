"""A hand-made evaluation summary (summary.json as a dictionary), shared by the report tests."""

from __future__ import annotations

from typing import Any

__all__ = ["summary_dict"]


def summary_dict(**overrides: Any) -> dict[str, Any]:
    """A summary.json as a dictionary (what a file holds; tests change it before parsing)."""
    summary: dict[str, Any] = {
        "kind": "codecflow-evaluation",
        "tokenizer": "mu-law-256",
        "num_levels": 2,
        "codebook_size": 256,
        "frame_rate": 16000.0,
        "layout": "flat",
        "level_weights": [1.0, 0.5],
        "checkpoint": "/runs/lm/checkpoint",
        "checkpoint_step": 40,
        "dataset": "/runs/tokens",
        "audio_hours": 0.25,
        "n_segments": 180,
        "n_tokens": 1_234_567,
        "dataset_bytes": 2_469_134,
        "train_loss_first": 5.5,
        "train_loss_last": 3.25,
        "n_parameters": 33_664,
        "context_tokens": 64,
        "context_seconds": 0.004,
        "generated_seconds": 0.04,
        "generated_tokens": 640,
        "generation_seconds": 0.5,
        "generation_tokens_per_s": 1280.0,
        "compute_seconds_per_audio_second": 8.0,
        "n_prefills": 3,
        "val_loss_per_level": [2.0, 3.0],
        "val_perplexity_per_level": [7.389, 20.09],
        "val_loss": 2.5,
        "val_bits_per_audio_second": 46_166.0,
        "prompt": "/data/prompt.flac",
        "prompt_seconds": 4.0,
        "prompt_roundtrip": {"si_sdr_db": 35.5, "mel_l1": 0.01, "pesq_wb": 4.25, "stoi": 0.987},
        "num_samples": 2,
        "samples": [
            {
                "rms_dbfs": -20.123,
                "clipping_fraction": 0.00012345,
                "silence_fraction": 0.1234,
                "voiced_flatness": 0.4567,
                "band_flatness": 0.0456,
                "crest_factor": 2.71,
                "flags": [],
            },
            {
                "rms_dbfs": -3.0,
                "clipping_fraction": 0.25,
                "silence_fraction": 0.0,
                "voiced_flatness": 0.9,
                "band_flatness": 0.9,
                "crest_factor": 1.2,
                "flags": ["screeching", "crackling"],
            },
        ],
        "speech": {
            "skipped": None,
            "voice": {
                "skipped": None,
                "prompt_vs_sample": [0.8, None],
                "sample_first_vs_second_half": [0.7, 0.6],
            },
            "words": {
                "skipped": None,
                "transcripts": ["hello world", ""],
                "prompt_transcript": "when grass is",
                "prompt_wer": 0.25,
            },
        },
        "regeneration": {
            "source": "/data/regen.flac",
            "seconds": 2.0,
            "runs": [
                {
                    "keep_levels": 1,
                    "files": ["regen/keep1_0.wav", "regen/keep1_1.wav"],
                    "voice_similarity_to_original": [0.5, 0.7],
                    "word_error_rate_to_original": [0.1, None],
                    "transcripts": ["hi", ""],
                    "metrics_skipped": None,
                },
                {"keep_levels": 2, "skipped": "keeping 2 of 2 levels leaves nothing to generate"},
            ],
        },
        "settings": {"seed": 0, "prompt": "/data/prompt.flac"},
        "identity": {"weights": "ab12"},
    }
    summary.update(overrides)
    return summary
