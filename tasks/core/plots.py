"""Figures for reports and Prefect artifacts, drawn off-screen (matplotlib's Agg backend)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

__all__ = [
    "figure",
    "plot_smoothed",
    "smoothed",
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


def smoothed(values: Sequence[float], weight: float | None = None) -> list[float]:
    """TensorBoard's smoothing: an exponential moving average whose start is debiased (divided
    by 1 - weight**n), so the first points are not pulled towards 0. `weight` None: 0.6 for
    up to 20 points, growing to 0.95 by 1 000 (a 400-step demo curve gets about 0.9)."""
    if weight is None:
        weight = min(0.95, max(0.6, 1.0 - 40.0 / max(len(values), 1)))
    out, last, debias = [], 0.0, 1.0
    for value in values:
        last = last * weight + (1.0 - weight) * float(value)
        debias *= weight
        out.append(last / (1.0 - debias))
    return out


def plot_smoothed(ax: Any, steps: Sequence[int], values: Sequence[float], **style: Any) -> Any:
    """`values` drawn raw and faint, and `smoothed` over them in the same colour: the line."""
    (raw,) = ax.plot(steps, values, linewidth=0.6, alpha=0.3, **style)
    style.setdefault("color", raw.get_color())
    (line,) = ax.plot(steps, smoothed(values), linewidth=1.2, **style)
    raw.set_label("_raw")  # the legend names the smoothed line only
    return line
