"""codecflow: audio into language models. The Python API, for a researcher's own code:

    import codecflow
    ds = codecflow.open_dataset("runs/demo/tokens/mu-law-256")  # or "s3://bucket/tokens/x"
    segments = ds.segments("train")  # item: {"codes": int64 [K, F], "segment_id", ...}
    windows = ds.windows("train", block_size=256)  # item: (inputs, targets), int64 [L] each
    tokenizer = codecflow.load_tokenizer(ds.tokenizer_name)  # encode_audio / decode

The names are defined in `codecflow.api` and loaded on first use (PEP 562), so `import
codecflow` imports neither torch nor Prefect: the CLI (`codecflow.cli`), which every
`codecflow --help` imports through this package, answers at once. `codecflow.api` imports no
Prefect, moshi, torchaudio or huggingface_hub (the import contract in pyproject.toml), so a
training script that uses it needs only the core install.

`codecflow.ingest` and `codecflow.tokenize` (`codecflow.stages`) run the first two stages as
plain calls, without a Prefect server; they need the `pipeline` extra.

The stages live in `codecflow.flows`, `codecflow.tasks`, `codecflow.models` and
`codecflow.schemas` (the repository's flows/, tasks/, models/ and schemas/).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

#: The release (`pyproject.toml`'s version; tests/test_packaging.py checks they agree).
__version__ = "0.2.0"

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
    "__version__",
    "collate_segments",
    "ingest",
    "load_tokenizer",
    "make_layout",
    "open_dataset",
    "tokenize",
]

#: Names defined in `codecflow.stages` (they need the pipeline extra); the others in `api`.
_STAGES = {"ingest", "tokenize"}

if TYPE_CHECKING:
    from codecflow.api import (
        LAYOUT_NAMES,
        PAD_CODE,
        AudioTokenizer,
        CodecflowError,
        Segment,
        SegmentDataset,
        TokenDataset,
        TokenLayout,
        TokenReader,
        WindowDataset,
        collate_segments,
        load_tokenizer,
        make_layout,
        open_dataset,
    )
    from codecflow.stages import ingest, tokenize


def __getattr__(name: str) -> Any:
    if name not in __all__:
        raise AttributeError(f"module 'codecflow' has no attribute {name!r}")
    module = "codecflow.stages" if name in _STAGES else "codecflow.api"
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
