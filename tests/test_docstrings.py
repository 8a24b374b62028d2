"""The Python API reference is generated from docstrings (docs/reference/api.md): every public
name of `codecflow`, and every public method and property of its classes, has one, and those
that take or return tensors give their shapes in the package's symbols (B, K, T, F, N)."""

from __future__ import annotations

import inspect
import re

import pytest

import codecflow

NAMES = [n for n in codecflow.__all__ if callable(getattr(codecflow, n))]
#: Names whose values are arrays or tensors: their docs (class or members) give shapes.
SHAPED = {
    "AudioTokenizer",
    "Segment",
    "SegmentDataset",
    "TokenLayout",
    "TokenReader",
    "WindowDataset",
    "collate_segments",
    "open_dataset",
    "load_tokenizer",
}
SHAPE = re.compile(r"\[(?:[BKTFNLQ][^\]]*)\]")


def _docs(name: str) -> list[tuple[str, str]]:
    value = getattr(codecflow, name)
    docs = [(name, inspect.getdoc(value) or "")]
    if inspect.isclass(value):
        for member, raw in vars(value).items():
            if member.startswith("_"):
                continue
            target = raw.fget if isinstance(raw, property) else raw
            if callable(target) or isinstance(raw, property):
                docs.append((f"{name}.{member}", inspect.getdoc(target) or ""))
    return docs


@pytest.mark.parametrize("name", NAMES)
def test_each_public_name_and_member_has_a_docstring(name: str) -> None:
    missing = [where for where, doc in _docs(name) if not doc.strip()]
    assert not missing, f"no docstring: {missing}"


@pytest.mark.parametrize("name", sorted(SHAPED))
def test_the_tensor_names_give_their_shapes(name: str) -> None:
    assert any(SHAPE.search(doc) for _, doc in _docs(name)), name


def test_every_exported_callable_is_checked() -> None:
    assert set(SHAPED) <= set(NAMES) and len(NAMES) >= 12
