"""codecflow's Python API: token datasets and tokenizers in a researcher's own code.

    import codecflow
    ds = codecflow.open_dataset("runs/demo/tokens/mu-law-256")  # or "s3://bucket/tokens/x"
    segments = ds.segments("train")  # item: {"codes": int64 [K, F], "segment_id", ...}
    windows = ds.windows("train", block_size=256)  # item: (inputs, targets), int64 [L] each
    tokenizer = codecflow.load_tokenizer(ds.tokenizer_name)  # encode_audio / decode

A facade, nothing else: every name is defined in `tasks` or `models` and re-exported here, so
that user code imports one stable module while the stages keep their own layout. It imports
no Prefect (the import contract in pyproject.toml forbids it), so a training script that
imports it starts no server and reads no Prefect settings.
"""

from __future__ import annotations

from models.layouts import LAYOUT_NAMES, TokenLayout, make_layout
from models.tokenizer import AudioTokenizer
from tasks.core.errors import CodecflowError
from tasks.data.token_dataset import Segment, TokenReader
from tasks.data.torch_datasets import (
    PAD_CODE,
    SegmentDataset,
    TokenDataset,
    WindowDataset,
    collate_segments,
    open_dataset,
)
from tasks.loaders import load_tokenizer

__all__ = [
    "LAYOUT_NAMES",
    "PAD_CODE",
    "AudioTokenizer",
    "CodecflowError",
    "Segment",
    "SegmentDataset",
    "TokenDataset",
    "TokenLayout",
    "TokenReader",
    "WindowDataset",
    "collate_segments",
    "load_tokenizer",
    "make_layout",
    "open_dataset",
]
