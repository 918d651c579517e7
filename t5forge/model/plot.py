"""Loss, throughput and learning-rate curves of a training run, drawn from its metrics.jsonl.

matplotlib is imported inside `plot_run` only: the training machine may not have it, and the
trainer must import without it.
"""

from __future__ import annotations

import math
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from t5forge.model.metrics import METRICS_FILENAME, read_metrics

SPLITS = ("train", "eval")


@dataclass(frozen=True)
class Panel:
    """One subplot: `metric` of every split in `splits` against step."""

    metric: str
    title: str
    splits: Sequence[str] = SPLITS
    y_from_zero: bool = False  # so that noise in a steady rate does not look like swings


# Per-token cross-entropy and the optimised loss get panels of their own: with t5x's default
# "sum" normalisation the loss is summed over the batch's tokens, orders of magnitude larger.
PANELS = (
    Panel("cross_entropy", "cross-entropy per target token"),
    Panel("loss", "loss"),
    Panel("tokens_per_second", "throughput (tokens / second)", splits=("train",), y_from_zero=True),
    Panel("learning_rate", "learning rate", splits=("train",)),
)


def _curve(records: list[dict[str, Any]], split: str, metric: str) -> tuple[list[int], list[float]]:
    """(steps, values) of `metric` in `split`, by step; a step logged twice keeps its last value.

    Non-finite values become NaN, which matplotlib leaves as a gap (inf would wreck the axes).
    """
    by_step: dict[int, float] = {}
    for record in records:
        value = record.get(metric)
        if record["split"] == split and isinstance(value, int | float):
            by_step[record["step"]] = float(value) if math.isfinite(value) else math.nan
    steps = sorted(by_step)
    return steps, [by_step[step] for step in steps]


def _panel_curves(
    records: list[dict[str, Any]], panel: Panel
) -> list[tuple[str, list[int], list[float]]]:
    """(split, steps, values) for each split of the panel that logged its metric."""
    curves = []
    for split in panel.splits:
        steps, values = _curve(records, split, panel.metric)
        if steps:
            curves.append((split, steps, values))
    return curves


def plot_run(directory: str, output: str | None = None, skipped: list[str] | None = None) -> str:
    """Draws DIRECTORY/metrics.jsonl as a PNG (default DIRECTORY/curves.png); returns its path.

    One panel per metric of `PANELS` that the run logged (train and eval where both exist);
    metrics the run did not log are left out. Raises ValueError naming the metrics file when it
    holds none of them. The PNG is written under a temporary name and renamed into place.
    `skipped`: as in `read_metrics` (a list collects the corrupt lines left out; None raises).
    """
    records = read_metrics(directory, skipped)
    panels = [(panel, curves) for panel in PANELS if (curves := _panel_curves(records, panel))]
    if not panels:
        names = ", ".join(panel.metric for panel in PANELS)
        raise ValueError(
            f"nothing to plot in {os.path.join(directory, METRICS_FILENAME)}: "
            f"no {names} in {len(records)} records"
        )
    output = output or os.path.join(directory, "curves.png")
    figure = _draw(panels, title=os.path.basename(os.path.abspath(directory)))
    _save_atomically(figure, output)
    return output


def _draw(panels: list[tuple[Panel, list[tuple[str, list[int], list[float]]]]], title: str) -> Any:
    """A matplotlib Figure (Agg canvas) with the panels stacked, sharing the step axis."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as error:
        raise ImportError(f"plotting needs matplotlib (pip install matplotlib): {error}") from None

    # A bare Figure on an Agg canvas: no pyplot global state, no display needed.
    figure = Figure(figsize=(8, 2.6 * len(panels)), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots(len(panels), 1, sharex=True, squeeze=False)[:, 0]
    for ax, (panel, curves) in zip(axes, panels, strict=True):
        for split, steps, values in curves:
            style = "-" if split == "train" else "o-"
            ax.plot(steps, values, style, label=split, markersize=3, linewidth=1)
        ax.set_title(panel.title, fontsize=10)
        ax.grid(alpha=0.3)
        if panel.y_from_zero:
            ax.set_ylim(bottom=0)
        if len(curves) > 1:
            ax.legend(fontsize=8)
    axes[-1].set_xlabel("step")
    figure.suptitle(title, fontsize=11)
    return figure


def _save_atomically(figure: Any, output: str) -> None:
    """Saves the PNG to a temporary file beside `output`, then renames it over `output`."""
    directory = os.path.dirname(os.path.abspath(output))
    os.makedirs(directory, exist_ok=True)
    fd, temp_path = tempfile.mkstemp(dir=directory, prefix=".curves.", suffix=".png.tmp")
    try:
        with os.fdopen(fd, "wb") as file:
            os.fchmod(file.fileno(), 0o644)  # mkstemp makes the file private; a plot is not
            figure.savefig(file, format="png", dpi=100)
        os.replace(temp_path, output)
    except BaseException:
        os.unlink(temp_path)
        raise
