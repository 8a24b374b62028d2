"""How `tokenize` batches segments for a neural tokenizer: by similar length, within the
batch's size and padded-size limits, and the padding that saves (`bench/tokenizers_rtf.py
--batching` measures its speed on Mimi)."""

from __future__ import annotations

from pathlib import Path

import pytest

from codecflow.tasks.tokenize.shards import batch_plan, padded_frames

FRAMES = [10, 3, 7, 3, 12, 1]


def test_shortest_first_by_default() -> None:
    batches = batch_plan(FRAMES, max_batch=2, max_frames=1_000)
    assert batches == [[5, 1], [3, 2], [0, 4]]
    # Padding per batch: the shorter one up to the longer, 3 - 1, 7 - 3 and 12 - 10.
    assert padded_frames(FRAMES, batches) == (3 - 1) + (7 - 3) + (12 - 10)


def test_given_order_is_kept_and_pads_more() -> None:
    manifest = list(range(len(FRAMES)))
    batches = batch_plan(FRAMES, max_batch=2, max_frames=1_000, order=manifest)
    assert batches == [[0, 1], [2, 3], [4, 5]]
    assert padded_frames(FRAMES, batches) == (10 - 3) + (7 - 3) + (12 - 1)
    assert padded_frames(FRAMES, batches) > padded_frames(FRAMES, batch_plan(FRAMES, 2, 1_000))


def test_padded_size_limit_counts_the_longest_times_the_rows() -> None:
    # 3 x 7 = 21 fits in 21; a fourth row (4 x 10 = 40) does not.
    batches = batch_plan([7, 7, 7, 10], max_batch=8, max_frames=21)
    assert batches == [[0, 1, 2], [3]]
    # In manifest order a long segment arriving late widens the batch: [7, 10] = 20 fits, a
    # third (3 x 10 = 30) does not.
    assert batch_plan([7, 10, 7], max_batch=8, max_frames=21, order=[0, 1, 2]) == [[0, 1], [2]]


def test_a_segment_longer_than_the_limit_goes_alone() -> None:
    assert batch_plan([50, 2, 2], max_batch=8, max_frames=10) == [[1, 2], [0]]
    # max_frames 0 (a non-causal tokenizer): every segment alone, no padding at all.
    alone = batch_plan(FRAMES, max_batch=8, max_frames=0)
    assert sorted(len(b) for b in alone) == [1] * len(FRAMES)
    assert padded_frames(FRAMES, alone) == 0


@pytest.mark.parametrize("max_batch", [1, 2, 3, 64])
def test_every_segment_once(max_batch: int) -> None:
    batches = batch_plan(FRAMES, max_batch=max_batch, max_frames=40)
    assert sorted(i for b in batches for i in b) == list(range(len(FRAMES)))
    assert all(1 <= len(b) <= max_batch for b in batches)


def test_tokenize_encodes_shortest_first_and_keeps_the_plans_order(
    tiny_manifest: Path, tmp_path: Path
) -> None:
    """Mimi (random codebooks) through the shard writer: the encoder gets each shard's segments
    shortest first, and each shard still lists them in the plan's order with the codes the
    segment gets alone."""
    from unittest import mock

    import numpy as np
    import pyarrow as pa
    import pyarrow.ipc as ipc
    import pyarrow.parquet as pq
    import torch
    import torchaudio
    from random_mimi import random_codebook_mimi

    from codecflow.schemas.configs import TokenizeSettings
    from codecflow.tasks.data.manifest import read_manifest_table, read_segment_audio
    from codecflow.tasks.data.token_dataset import read_dataset_info
    from codecflow.tasks.loaders import load_tokenizer
    from codecflow.tasks.tokenize import shards
    from codecflow.tasks.tokenize.finalize import tokenize_manifest

    mimi = random_codebook_mimi(2)
    seen: list[list[int]] = []
    real = shards.encode_segments

    def spy(audios: list[np.ndarray], tokenizer: object) -> list[np.ndarray]:
        seen.append([len(a) for a in audios])
        return real(audios, tokenizer)

    with (
        mock.patch("codecflow.tasks.loaders.load_mimi", lambda k, **_: mimi),
        mock.patch.object(shards, "encode_segments", spy),
    ):
        record = tokenize_manifest(
            tiny_manifest, tmp_path / "mimi", TokenizeSettings(tokenizer="mimi_2_rvq_nosemantic")
        )
        tokenizer = load_tokenizer("mimi_2_rvq_nosemantic", device="cpu")
    assert seen and all(lengths == sorted(lengths) for lengths in seen)
    assert any(len(set(lengths)) > 1 for lengths in seen)  # lengths differ: the order bites
    _, audio_root = read_manifest_table(tiny_manifest)
    rows = {r["segment_id"]: r for r in pq.read_table(record.path / "plan.parquet").to_pylist()}
    for shard in read_dataset_info(record.path).shards:
        with pa.memory_map(str(record.path / shard.file)) as source:
            table = ipc.open_stream(source).read_all()
        ids = table.column("segment_id").to_pylist()
        assert ids == sorted(ids)  # the plan's order, not the encoder's
        for segment_id, codes in zip(ids, table.column("codes").to_pylist(), strict=True):
            audio = torch.from_numpy(read_segment_audio(audio_root, rows[segment_id]))  # [T]
            wav = torchaudio.functional.resample(audio, 16_000, 24_000).view(1, 1, -1)
            with torch.inference_mode():
                alone = tokenizer.encode(wav)[0].numpy()  # [K, F]
            np.testing.assert_array_equal(np.array(codes), alone, err_msg=segment_id)
