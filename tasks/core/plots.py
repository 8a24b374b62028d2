"""Figures for reports and Prefect artifacts, drawn off-screen (matplotlib's Agg backend)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

__all__ = [
    "figure",
]


@contextlib.contextmanager
def figure(path: Path, size: tuple[float, float] = (6, 3.5)) -> Iterator[Any]:
    """Yield the axes of a new figure; save it to `path` (PNG, 100 dpi) and free it at the end.

    matplotlib is imported here, not at module import: most runs never draw.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=size)
    try:
        yield ax
        fig.tight_layout()
        fig.savefig(path, dpi=100, format="png")  # PNG whatever the name (a temporary)
    finally:
        plt.close(fig)
