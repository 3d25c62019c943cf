"""Timing local and remote calls, and the figures the notebooks show: the
digit grid and the local-vs-remote timing chart (matplotlib)."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd


def time_calls(calls: Mapping[str, Callable[[], Any]], repeat: int = 3) -> dict[str, list[float]]:
    """Seconds each call took, ``repeat`` times, interleaved so that a busy
    moment of the machine does not fall on one call only."""
    timings: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(repeat):
        for name, call in calls.items():
            started = time.perf_counter()
            call()
            timings[name].append(time.perf_counter() - started)
    return timings


def timing_frame(timings: Mapping[str, Sequence[float]]) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "retrieval": list(timings),
            "best (s)": [min(v) for v in timings.values()],
            "median (s)": [float(np.median(v)) for v in timings.values()],
            "runs": [len(v) for v in timings.values()],
        }
    )


def digit_grid(
    images: np.ndarray,
    labels: Sequence[Any] | None = None,
    ncols: int = 10,
    title: str | None = None,
    cell_inches: float = 0.9,
) -> Any:
    """A matplotlib figure of digits (``images``: (n, 28, 28), 0..1 or 0..255)."""
    import matplotlib.pyplot as plt

    images = np.asarray(images)
    n = len(images)
    if n == 0:
        raise ValueError("no images to show")
    ncols = min(ncols, n)
    nrows = -(-n // ncols)
    vmax = 255 if images.max() > 1 else 1
    fig, axes = plt.subplots(
        nrows,
        ncols,
        figsize=(ncols * cell_inches, nrows * (cell_inches + (0.25 if labels is not None else 0))),
        squeeze=False,
    )
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        if i < n:
            ax.imshow(images[i], cmap="gray_r", vmin=0, vmax=vmax, interpolation="nearest")
            if labels is not None:
                ax.set_title(str(labels[i]), fontsize=9, pad=2)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def timing_chart(
    timings: Mapping[str, Sequence[float] | float], title: str = "Historical retrieval time"
) -> Any:
    """A bar chart of the best time of each retrieval (error bar to the worst)."""
    import matplotlib.pyplot as plt

    names = list(timings)
    runs = [np.atleast_1d(np.asarray(timings[n], dtype=float)) for n in names]
    best = np.array([r.min() for r in runs])
    worst = np.array([r.max() for r in runs])
    fig, ax = plt.subplots(figsize=(6, 3.2))
    colors = ["#607d8b", "#1e88e5", "#43a047", "#fb8c00"][: len(names)]
    bars = ax.bar(names, best, color=colors, yerr=[np.zeros_like(best), worst - best], capsize=6)
    for bar, value in zip(bars, best, strict=True):
        ax.text(
            bar.get_x() + bar.get_width() / 2,
            value / 2,
            f"{value:.2f} s",
            ha="center",
            va="center",
            color="white",
            fontweight="bold",
        )
    ax.set_ylabel("seconds (best run; whisker: slowest)")
    ax.set_title(title)
    ax.set_ylim(0, max(worst.max(), best.max()) * 1.25)
    ax.spines[["top", "right"]].set_visible(False)
    fig.tight_layout()
    return fig
