"""The names `import codecflow` offers, defined in `codecflow.tasks` and `codecflow.models`.

A facade, nothing else: user code imports one stable module while the stages keep their own
layout. Each class and function is shown as `codecflow.X` in reprs and tracebacks (its
`__module__`, as httpx does), and pickles by that name: `codecflow.__getattr__` finds it.
"""

from __future__ import annotations

from codecflow.models.layouts import LAYOUT_NAMES, TokenLayout, make_layout
from codecflow.models.tokenizer import AudioTokenizer
from codecflow.tasks.core.errors import CodecflowError
from codecflow.tasks.data.token_dataset import Segment, TokenReader
from codecflow.tasks.data.torch_datasets import (
    PAD_CODE,
    SegmentDataset,
    TokenDataset,
    WindowDataset,
    collate_segments,
    open_dataset,
)
from codecflow.tasks.loaders import load_tokenizer

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

for _name in __all__:
    _value = globals()[_name]
    if isinstance(_value, type) or callable(_value):
        _value.__module__ = "codecflow"
